"""Weight sharing fine-tuned in training: the codebook moves by the summed gradients and the output is exact."""

from __future__ import annotations

import numpy as np
from engine_fixtures import blobs, trained_classifier
from onnx import numpy_helper

import onnx_dns
from onnx_dns.insert_masks import mask_name
from onnx_dns.repack import unpack_model
from onnx_dns.weight_sharing import WeightSharing


def test_centroids_move_by_the_summed_gradients_and_the_weights_follow():
    rng = np.random.default_rng(0)
    w = rng.standard_normal(40).astype(np.float32)
    mask = (np.abs(w) > 0.5).astype(np.float32)
    sharing = WeightSharing(2)
    params = {"w": w.copy()}
    sharing.begin(params, {"w": mask})
    kept = mask != 0
    assert len(np.unique(params["w"][kept])) <= 4
    np.testing.assert_array_equal(params["w"][~kept], w[~kept])  # pruned entries are left to the optimizer
    kept_index, book = sharing.books["w"]
    before = book.centroids.copy()
    grad = rng.standard_normal(40).astype(np.float32)
    sharing.update({"w": grad}, lr=0.1)
    _, moved = sharing.books["w"]
    expected = before - 0.1 * np.bincount(book.codes, weights=grad[kept_index], minlength=len(before))
    np.testing.assert_allclose(moved.centroids, expected, rtol=1e-6)
    params["w"][:] = 123.0  # as an optimizer step would, then the shared values are written back
    sharing.write(params)
    np.testing.assert_allclose(params["w"][kept], expected[book.codes], rtol=1e-6)


def test_compress_with_bits_fine_tunes_the_codebook_and_writes_exactly_what_it_trained(tmp_path):
    x, y = blobs(600, 8, 4, seed=3)
    model = trained_classifier(x, y, 4, hidden=32)
    events = []
    result = onnx_dns.compress(model, {"x": x, "labels": y}, target="3x", bits=2, iterations=120, batch_size=32,
                               surgery_stop=60, eval_every=60, format="packed", progress=events.append)
    assert [e["iteration"] for e in events if e["event"] == "sharing"] == [60]
    trained = next(e["values"] for e in events if e["event"] == "folding")  # what training left, before any repack
    for name in ("fc1.w", "fc2.w"):
        assert len(np.unique(trained[name][trained[mask_name(name)] != 0])) <= 4
    weights = {t.name: numpy_helper.to_array(t) for t in unpack_model(result.model).model.graph.initializer}
    for name in ("fc1.w", "fc2.w"):
        values = weights[name][weights[name] != 0]
        assert 2 < len(np.unique(values)) <= 4  # 2 bits: at most 4 shared values, the zeros apart
    assert result.metrics["after"].top1 >= result.metrics["before"].top1 - 5
    # the steps after the masks were fixed moved the shared values: the loss kept falling
    losses = [e["loss"] for e in events if e["event"] == "step"]
    assert np.mean(losses[-10:]) < np.mean(losses[60:70])
