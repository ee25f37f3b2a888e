"""compress on models written by real exporters (tests/fixtures/, made by tests/fixtures/export_fixtures.py with
torch.onnx's TorchScript and dynamo exporters, skl2onnx and tf2onnx; versions in tests/fixtures/versions.json).

For each fixture, on small synthetic data made here: the prunable layers found are those of the architecture
(op and weight shape, listed by hand from the torch, scikit-learn or Keras model), training moves the weights and
reaches the requested compression, the written model keeps the original graph (inputs, outputs, shapes, operators,
no onnx-dns names) and computes what onnxruntime-training's own eval graph of the masked model computes with the
trained weights and masks.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import numpy_helper

from onnx_dns.options import CompressOptions

from onnx_dns.pipeline import compress_file
from onnx_dns.errors import ModelError
from onnx_dns.insert_masks import mask_name
from onnx_dns.normalize import densify_sparse
from onnx_dns.ort_training import api, captured_stderr
from onnx_dns.checkpoint import CHECKPOINT
from onnx_dns.options import TrainConfig

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TARGET = 2.0
ITERATIONS = 24

CNN = (("Conv", (8, 1, 3, 3)), ("Conv", (16, 8, 3, 3)), ("Gemm", (32, 144)), ("Gemm", (3, 32)))
RESNET = (("Conv", (8, 1, 3, 3)), ("Conv", (8, 8, 3, 3)), ("Conv", (8, 8, 3, 3)), ("Conv", (16, 8, 3, 3)),
          ("Conv", (16, 16, 3, 3)), ("Conv", (16, 8, 1, 1)), ("Gemm", (3, 16)))
DEPTHWISE = (("Conv", (8, 1, 3, 3)), ("Conv", (8, 1, 3, 3)), ("Conv", (16, 8, 1, 1)), ("Conv", (16, 1, 3, 3)),
             ("Conv", (24, 16, 1, 1)), ("Gemm", (3, 24)))
# attention in-projection (q, k, v in one MatMul), out-projection, MLP, classifier
TRANSFORMER = (("MatMul", (16, 48)), ("Gemm", (16, 16)), ("MatMul", (16, 32)), ("MatMul", (32, 16)),
               ("Gemm", (3, 16)))
# Keras CNN through tf2onnx: NHWC input (3 channels) transposed to NCHW, Dense as MatMul + Add, BatchNormalization
# as Mul + Add with constants (no layer), Dropout dropped
KERAS_CNN = (("Conv", (8, 3, 3, 3)), ("Conv", (16, 8, 3, 3)), ("MatMul", (144, 32)), ("MatMul", (32, 3)))
SKLEARN_MLP = (("MatMul", (4, 16)), ("MatMul", (16, 8)), ("MatMul", (8, 3)))


@dataclass(frozen=True)
class Fixture:
    file: str
    layers: tuple[tuple[str, tuple[int, ...]], ...]  # (op, weight shape) of every prunable layer
    output: str | None = None  # the output the loss reads (None: compress chooses)
    task: str | None = None
    labels: bool = True  # False: no labels in the data, so distillation from the original model


CASES = [
    Fixture("cnn_bn_dropout_torchscript", CNN),
    Fixture("cnn_bn_dropout_dynamo", CNN, labels=False),  # fixed batch of 4, BatchNormalization kept
    Fixture("resnet_torchscript", RESNET),  # two outputs: logits and features
    Fixture("resnet_dynamo", RESNET, output="logits", labels=False),  # external data, dynamic batch
    Fixture("depthwise_torchscript", DEPTHWISE),
    Fixture("depthwise_dynamo", DEPTHWISE, labels=False),
    Fixture("transformer_torchscript", TRANSFORMER),  # Gelu as Erf, LayerNormalization, Softmax attention
    Fixture("transformer_dynamo", TRANSFORMER),  # Gelu op (opset 20), fixed batch of 4
    Fixture("cnn_bn_dropout_tf2onnx", KERAS_CNN),  # channels last, Transposes, dynamic batch, ai.onnx.ml import
    Fixture("mlp_sklearn", SKLEARN_MLP),  # label (int64) first, probabilities through Identity
]


def graph_input(model: onnx.ModelProto) -> tuple[str, int, list[int | None]]:
    value = model.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
    return value.name, value.type.tensor_type.elem_type, dims


def synthetic(model: onnx.ModelProto, n: int, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Inputs of the model's type and shape and learnable labels of 3 classes."""
    name, elem, dims = graph_input(model)
    rng = np.random.default_rng(seed)
    if elem == onnx.TensorProto.INT64:  # token ids: the class is the third of the vocabulary that dominates
        x = rng.integers(0, 20, (n, *dims[1:])).astype(np.int64)
        labels = np.digitize(x.mean(axis=1), [20 / 3, 40 / 3]).astype(np.int64)
    elif len(dims) == 2:  # feature vectors: 3 Gaussian blobs
        labels = rng.integers(0, 3, n).astype(np.int64)
        x = (2.0 * np.eye(3, dims[1])[labels] + 0.7 * rng.standard_normal((n, dims[1]))).astype(np.float32)
    else:  # images: the bright third of the rows
        labels = rng.integers(0, 3, n).astype(np.int64)
        x = 0.5 * rng.standard_normal((n, *dims[1:])).astype(np.float32)
        for k in range(3):
            x[labels == k, :, 4 * k:4 * k + 4] += 1.0
    return {name: x}, labels


def shapes(values) -> dict[str, tuple]:
    return {v.name: (v.type.tensor_type.elem_type, tuple(d.dim_param or d.dim_value for d in
                                                         v.type.tensor_type.shape.dim)) for v in values}


def eval_graph_outputs(work: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of onnxruntime-training's eval graph (the masked, rewritten training model) with the trained
    weights and masks of the run's last checkpoint."""
    with np.load(work / CHECKPOINT) as saved:
        values = {k[len("param/"):]: saved[k] for k in saved.files if k.startswith("param/")}
        values |= {mask_name(k[len("mask/"):]): saved[k] for k in saved.files if k.startswith("mask/")}
    art = work / "artifacts"
    with captured_stderr():
        state = api.CheckpointState.load_checkpoint(str(art / "checkpoint"))
        module = api.Module(str(art / "training_model.onnx"), state, str(art / "eval_model.onnx"))
    for name, value in values.items():
        state.parameters[name].data[...] = value
    module.eval()
    eval_model = onnx.load(str(art / "eval_model.onnx"))
    declared = {v.name: v for v in eval_model.graph.input}
    batch = len(next(iter(feed.values())))
    feeds = []
    for name in module.input_names():
        if name in feed:
            feeds.append(feed[name])
        else:  # a loss target: any value gives the model's own outputs
            dims = declared[name].type.tensor_type.shape.dim
            feeds.append(np.zeros([d.dim_value or batch for d in dims], np.float32))
    return dict(zip(module.output_names(), module(*feeds)))


@pytest.mark.parametrize("case", CASES, ids=[c.file for c in CASES])
def test_exported_model_compresses_and_keeps_its_graph(case: Fixture, tmp_path):
    source = FIXTURES / f"{case.file}.onnx"
    original = onnx.load(str(source))
    _, _, dims = graph_input(original)
    batch = dims[0] or 16
    inputs, labels = synthetic(original, 12 * batch)
    np.savez(tmp_path / "train.npz", **inputs, **({"labels": labels} if case.labels else {}))
    work = tmp_path / "work"
    options = CompressOptions(
        data=str(tmp_path / "train.npz"), target=TARGET, format="sparse", output_name=case.output, task=case.task,
        work_dir=str(work), keep_work=True,
        train=TrainConfig(iterations=ITERATIONS, batch_size=batch, lr=0.01, eval_every=ITERATIONS,
                          checkpoint_every=ITERATIONS, max_accuracy_drop=None))
    result = compress_file(source, tmp_path / "out.onnx", options)
    folded = onnx.load(str(tmp_path / "out.onnx"))

    # the layers of the architecture, no more, no fewer
    assert Counter((s.op, tuple(s.shape)) for s in result.layers_before) == Counter(case.layers)
    before = {t.name: numpy_helper.to_array(t) for t in original.graph.initializer}
    lifted = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in original.graph.node
              if n.op_type == "Constant" and n.attribute[0].name == "value"}  # become initializers (README)
    before |= lifted
    after = {t.name: numpy_helper.to_array(t) for t in densify_sparse(folded).model.graph.initializer}

    # training ran: the requested compression, counted here on the written file, and weights that moved
    with np.load(work / CHECKPOINT) as saved:
        masks = {k[len("mask/"):]: saved[k] for k in saved.files if k.startswith("mask/")}
    masked_shapes = Counter(tuple(before[n].shape) for n in masks)
    assert masked_shapes & Counter(shape for _, shape in case.layers) == Counter(shape for _, shape in case.layers)
    assert len(masks) <= 2 * len(case.layers)  # a weight and at most one bias per layer
    size = sum(after[n].size for n in masks)
    kept = sum(int(np.count_nonzero(after[n])) for n in masks)
    assert size / kept == pytest.approx(TARGET, rel=0.03)
    assert result.compression == pytest.approx(TARGET, rel=0.03)
    for name in masks:
        moved = after[name][after[name] != 0] - before[name][after[name] != 0]
        # a bias may be pruned whole: Keras starts biases at zero, and one before a BatchNormalization stays near it
        assert moved.size or before[name].ndim == 1, name
        assert not moved.size or np.abs(moved).max() > 1e-6, name  # every kept weight tensor was trained
        np.testing.assert_array_equal(after[name] == 0, masks[name] == 0)  # zeros exactly where pruned

    # the original graph: inputs, outputs, shapes, operators (tensor Constants become initializers), no dns names
    assert shapes(folded.graph.input) == shapes(original.graph.input)
    assert shapes(folded.graph.output) == shapes(original.graph.output)
    kept_nodes = [n for n in original.graph.node if n.output[0] not in lifted]
    assert Counter(n.op_type for n in folded.graph.node) == Counter(n.op_type for n in kept_nodes)
    assert [n.name for n in folded.graph.node] == [n.name for n in kept_nodes]
    assert set(after) | {s.values.name for s in folded.graph.sparse_initializer} >= set(before) - set(masks)
    scale_shift = {n for node in original.graph.node if node.op_type.endswith("Normalization")
                   for n in node.input[1:3]}
    for name, value in before.items():
        if name not in masks and name not in scale_shift:  # these two train; BN statistics, constants do not
            np.testing.assert_array_equal(after[name], value, err_msg=name)
    names = [n for node in folded.graph.node for n in [node.name, *node.input, *node.output]] + list(after)
    assert not [n for n in names if "__dns" in n or n.startswith("dns_")]
    assert {o.domain for o in folded.opset_import} == {o.domain for o in original.opset_import}

    # the written model runs in onnxruntime and computes what the training stack's masked model computes
    session = onnxruntime.InferenceSession(str(tmp_path / "out.onnx"), providers=["CPUExecutionProvider"])
    feed = {k: v[:batch] for k, v in synthetic(original, batch, seed=7)[0].items()}
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
    expected = eval_graph_outputs(work, feed)
    float_outputs = [o.name for o in original.graph.output if o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]
    assert float_outputs
    for name in got:
        if name in float_outputs:
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-5, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    reference = onnxruntime.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, feed)
    assert not np.allclose(got[float_outputs[0]], reference[[o.name for o in session.get_outputs()].index(
        float_outputs[0])])  # pruning changed what it computes: the comparison above is not trivial


def test_a_fixed_batch_export_trains_at_its_own_batch_size_and_says_so(tmp_path, caplog):
    source = FIXTURES / "cnn_bn_dropout_dynamo.onnx"
    inputs, _ = synthetic(onnx.load(str(source)), 32)
    np.savez(tmp_path / "train.npz", **inputs)
    options = CompressOptions(data=str(tmp_path / "train.npz"), train=TrainConfig(iterations=2, batch_size=8))
    with caplog.at_level("WARNING"):
        result = compress_file(source, tmp_path / "out.onnx", options)
    assert "fixed batch size of 4: training at batch size 4 instead of 8" in caplog.text
    assert result.images_per_second > 0 and (tmp_path / "out.onnx").exists()


def test_external_data_is_read_from_beside_the_model(tmp_path):
    for name in ("resnet_dynamo.onnx", "resnet_dynamo.onnx.data"):
        shutil.copy(FIXTURES / name, tmp_path / name)
    inputs, labels = synthetic(onnx.load(str(FIXTURES / "resnet_dynamo.onnx")), 64)
    np.savez(tmp_path / "train.npz", **inputs, labels=labels)
    options = CompressOptions(data=str(tmp_path / "train.npz"),
                              train=TrainConfig(iterations=2, batch_size=8, max_accuracy_drop=None))
    result = compress_file(tmp_path / "resnet_dynamo.onnx", tmp_path / "out.onnx", options)
    assert len(result.layers_before) == len(RESNET)
    assert not onnx.load(str(tmp_path / "out.onnx"), load_external_data=False).graph.initializer[0].external_data
    (tmp_path / "resnet_dynamo.onnx.data").unlink()
    with pytest.raises(ModelError, match="external data could not be read"):
        compress_file(tmp_path / "resnet_dynamo.onnx", tmp_path / "out2.onnx", options)


def test_skl2onnx_zipmap_model_trains_on_the_probabilities_behind_its_outputs(tmp_path, caplog):
    source = FIXTURES / "mlp_sklearn_zipmap.onnx"
    inputs, labels = synthetic(onnx.load(str(source)), 64)
    np.savez(tmp_path / "train.npz", **inputs, labels=labels)
    options = CompressOptions(data=str(tmp_path / "train.npz"), format="sparse",
                              train=TrainConfig(iterations=2, batch_size=8, max_accuracy_drop=None))
    with caplog.at_level("INFO"):
        result = compress_file(source, tmp_path / "out.onnx", options)
    assert "no output is a float tensor" in caplog.text and "output_probability (sequence of maps)" in caplog.text
    written = onnx.load(str(tmp_path / "out.onnx"))
    assert [o.name for o in written.graph.output] == ["output_label", "output_probability"]
    assert "ZipMap" in {n.op_type for n in written.graph.node} and result.compression > 1
    options = replace(options, output_name="output_label")
    with pytest.raises(ModelError, match=r"'output_label' is of type int64 tensor"):
        compress_file(source, tmp_path / "out.onnx", options)


def test_versions_record_every_fixture_and_its_limits():
    versions = json.loads((FIXTURES / "versions.json").read_text())
    assert "export_fixtures.py" in versions["command"]
    files = {p.stem for p in FIXTURES.glob("*.onnx")}
    assert set(versions["fixtures"]) == files == {c.file for c in CASES} | {"mlp_sklearn_zipmap"}
    for name in files:
        model = onnx.load(str(FIXTURES / f"{name}.onnx"), load_external_data=False)
        assert model.ir_version <= 10
        assert all(o.version <= 21 for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert sum(p.stat().st_size for p in FIXTURES.iterdir()) < 5_000_000


def test_layers_that_do_not_feed_the_trained_output_are_left_alone(tmp_path):
    source = FIXTURES / "resnet_dynamo.onnx"  # outputs logits and features; the classifier feeds only logits
    original = onnx.load(str(source))
    inputs, _ = synthetic(original, 64)
    np.savez(tmp_path / "train.npz", **inputs)
    options = CompressOptions(data=str(tmp_path / "train.npz"), target=TARGET, output_name="features",
                              train=TrainConfig(iterations=8, batch_size=16, lr=0.01, eval_every=8,
                                                max_accuracy_drop=None))
    result = compress_file(source, tmp_path / "out.onnx", options)
    assert Counter((s.op, tuple(s.shape)) for s in result.layers_before) == Counter(RESNET[:-1])
    before = {t.name: numpy_helper.to_array(t) for t in original.graph.initializer}
    after = {t.name: numpy_helper.to_array(t)
             for t in densify_sparse(onnx.load(str(tmp_path / "out.onnx"))).model.graph.initializer}
    classifier = [n for n, v in before.items() if v.shape in ((3, 16), (3,))]
    assert len(classifier) == 2
    for name in classifier:
        np.testing.assert_array_equal(after[name], before[name])
