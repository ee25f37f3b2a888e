"""Host-side optimizers against hand-written references, step by step, on every entry (pruned ones too)."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_dns.optimizers import SGD, AdamW, make_optimizer

LRS = (0.1, 0.05, 0.02)


def problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    params = {"w": rng.standard_normal((4, 3)).astype(np.float32), "b": rng.standard_normal(3).astype(np.float32)}
    params["w"][0, 0] = 0.0  # an entry a fold would have zeroed: it still gets updated
    grads = [{k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()} for _ in LRS]
    return params, grads


def reference_sgd(params, grads, momentum, decay):
    """Caffe's SGD written out: v = momentum v + lr (g + decay w); w = w - v (float64)."""
    w = {k: v.astype(np.float64) for k, v in params.items()}
    vel = {k: np.zeros_like(v) for k, v in w.items()}
    for lr, g in zip(LRS, grads):
        for k in w:
            vel[k] = momentum * vel[k] + lr * (g[k] + decay * w[k])
            w[k] = w[k] - vel[k]
    return w


def reference_adamw(params, grads, b1, b2, eps, decay):
    """AdamW as in Loshchilov and Hutter (and torch.optim.AdamW): decoupled decay, bias-corrected moments."""
    w = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in w.items()}
    s = {k: np.zeros_like(v) for k, v in w.items()}
    for t, (lr, g) in enumerate(zip(LRS, grads), start=1):
        for k in w:
            w[k] = w[k] * (1 - lr * decay)
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            s[k] = b2 * s[k] + (1 - b2) * g[k] ** 2
            m_hat = m[k] / (1 - b1 ** t)
            s_hat = s[k] / (1 - b2 ** t)
            w[k] = w[k] - lr * m_hat / (np.sqrt(s_hat) + eps)
    return w


def run(optimizer_factory, params, grads):
    arrays = {k: v.copy() for k, v in params.items()}
    views = dict(arrays)  # the trainer hands onnxruntime's zero-copy views: updates must land in them
    opt = optimizer_factory(views)
    for lr, g in zip(LRS, grads):
        opt.step(views, g, lr)
    for k in arrays:
        assert views[k] is arrays[k]
    return arrays, opt


def test_sgd_with_momentum_and_decay_matches_the_reference():
    params, grads = problem()
    got, _ = run(lambda p: SGD(p, momentum=0.9, weight_decay=0.01), params, grads)
    want = reference_sgd(params, grads, 0.9, 0.01)
    for k in params:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
        assert np.all(got[k] != params[k])  # every entry moved, the zero one included


def test_adamw_matches_the_reference():
    params, grads = problem(1)
    got, _ = run(lambda p: AdamW(p, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05), params, grads)
    want = reference_adamw(params, grads, 0.9, 0.999, 1e-8, 0.05)
    for k in params:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
        assert np.all(got[k] != params[k])


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_pruned_entries_are_updated_like_the_others(name):
    """The optimizer knows nothing of masks: an entry whose mask is 0 moves with its gradient."""
    params = {"w": np.array([0.0, 0.5, -0.5], dtype=np.float32)}
    grads = {"w": np.array([1.0, 1.0, -1.0], dtype=np.float32)}
    opt = make_optimizer(name, params, weight_decay=0.0)
    opt.step(params, grads, 0.1)
    assert params["w"][0] < 0.0
    assert params["w"][0] - 0.0 == pytest.approx(params["w"][1] - 0.5)


@pytest.mark.parametrize("factory", [lambda p: SGD(p, 0.9, 1e-3), lambda p: AdamW(p, weight_decay=1e-3)])
def test_state_dict_roundtrip_continues_identically(factory):
    params, grads = problem(2)
    straight = {k: v.copy() for k, v in params.items()}
    opt = factory(straight)
    for lr, g in zip(LRS, grads):
        opt.step(straight, g, lr)

    first = {k: v.copy() for k, v in params.items()}
    opt1 = factory(first)
    opt1.step(first, grads[0], LRS[0])
    state = {k: np.array(v, copy=True) for k, v in opt1.state_dict().items()}
    opt2 = factory(first)
    opt2.load_state_dict(state)
    for lr, g in zip(LRS[1:], grads[1:]):
        opt2.step(first, g, lr)
    for k in params:
        np.testing.assert_array_equal(first[k], straight[k])


def test_make_optimizer_defaults_and_errors():
    p = {"w": np.zeros(2, dtype=np.float32)}
    sgd = make_optimizer("sgd", p)
    assert isinstance(sgd, SGD) and sgd.momentum == 0.9 and sgd.weight_decay == 5e-4
    adamw = make_optimizer("adamw", p)
    assert isinstance(adamw, AdamW) and adamw.weight_decay == 1e-4
    assert make_optimizer("sgd", p, weight_decay=0.0).weight_decay == 0.0
    with pytest.raises(ValueError, match="adam"):
        make_optimizer("adam", p)


@pytest.mark.parametrize("labelled,given,expected", [
    (True, None, "sgd"), (False, None, "adamw"), (False, "sgd", "sgd"), (True, "adamw", "adamw")])
def test_compress_trains_with_sgd_on_labels_and_adamw_label_free_unless_told(labelled, given, expected,
                                                                             monkeypatch):
    from engine_fixtures import blobs
    from engine_fixtures import mlp as classifier

    import onnx_dns
    from onnx_dns import trainer

    made = []
    monkeypatch.setattr(trainer, "make_optimizer", lambda name, *a, **k: made.append(name) or make_optimizer(
        name, *a, **k))
    x, y = blobs(200, 6, 3, seed=1)
    data = {"x": x, "labels": y} if labelled else {"x": x}
    events = []
    options = {} if given is None else {"optimizer": given}
    result = onnx_dns.compress(classifier(6, 16, 3), data, target=2, iterations=4, batch_size=32, lr=0.01,
                               progress=events.append, **options)
    assert set(made) == {expected} and result.optimizer == expected
    chosen = [e for e in events if e["event"] == "optimizer"]
    assert chosen == ([] if given else [{"event": "optimizer", "optimizer": expected, "labelled": labelled}])


def test_make_optimizer_needs_a_name():
    with pytest.raises(ValueError, match="choose sgd or adamw"):
        make_optimizer(None, {"w": np.zeros(2, dtype=np.float32)})


@pytest.mark.parametrize("given,lr,warned", [(None, 0.01, True), (None, 1e-3, False), ("adamw", 0.01, False),
                                              ("sgd", 0.01, False)])
def test_a_large_learning_rate_given_for_the_label_free_default_warns(given, lr, warned, caplog):
    from engine_fixtures import blobs
    from engine_fixtures import mlp as classifier

    import onnx_dns

    x, _ = blobs(200, 6, 3, seed=1)
    options = {} if given is None else {"optimizer": given}
    with caplog.at_level("WARNING"):
        onnx_dns.compress(classifier(6, 16, 3), {"x": x}, target=2, iterations=2, batch_size=32, lr=lr, **options)
    assert any(f"--lr {lr:g} trains with AdamW" in r.getMessage() for r in caplog.records) == warned
