"""Optimizers that update parameters in place on onnxruntime's zero-copy views, in numpy.

SGD (Caffe's, as in the paper):  v <- momentum * v + lr * (g + decay * w);  w <- w - v
AdamW (Loshchilov and Hutter):  m, v moments with bias correction;  w <- w - lr * (m_hat / (sqrt(v_hat) + eps) + decay * w)
Both act on every entry, pruned or not, as DNS requires. Buffers are allocated once.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

OPTIMIZERS = ("sgd", "adamw")


class SGD:
    def __init__(self, params: Mapping[str, np.ndarray], momentum: float = 0.9, weight_decay: float = 5e-4) -> None:
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.velocity = {k: np.zeros_like(v) for k, v in params.items()}
        self._scratch = {k: np.empty_like(v) for k, v in params.items()}

    def step(self, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray], lr: float) -> None:
        for name, w in params.items():
            v, tmp = self.velocity[name], self._scratch[name]
            np.multiply(w, self.weight_decay, out=tmp)
            tmp += grads[name]
            tmp *= lr
            v *= self.momentum
            v += tmp
            w -= v

    def state_dict(self) -> dict[str, np.ndarray]:
        return {f"velocity/{k}": v for k, v in self.velocity.items()}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        for k in self.velocity:
            self.velocity[k][...] = state[f"velocity/{k}"]


class AdamW:
    def __init__(self, params: Mapping[str, np.ndarray], betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-4) -> None:
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.t = 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self._scratch = {k: np.empty_like(v) for k, v in params.items()}

    def step(self, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray], lr: float) -> None:
        self.t += 1
        c1 = 1 - self.beta1 ** self.t
        c2 = 1 - self.beta2 ** self.t
        for name, w in params.items():
            g, m, v, tmp = grads[name], self.m[name], self.v[name], self._scratch[name]
            m *= self.beta1
            m += (1 - self.beta1) * g
            v *= self.beta2
            np.multiply(g, g, out=tmp)
            tmp *= 1 - self.beta2
            v += tmp
            np.divide(v, c2, out=tmp)
            np.sqrt(tmp, out=tmp)
            tmp += self.eps
            np.divide(m, tmp, out=tmp)
            tmp *= 1 / c1
            tmp += self.weight_decay * w
            tmp *= lr
            w -= tmp

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {f"m/{k}": v for k, v in self.m.items()} | {f"v/{k}": v for k, v in self.v.items()}
        state["t"] = np.array(self.t)
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.t = int(state["t"])
        for k in self.m:
            self.m[k][...] = state[f"m/{k}"]
            self.v[k][...] = state[f"v/{k}"]


def make_optimizer(name: str, params: Mapping[str, np.ndarray], weight_decay: float | None = None):
    """`sgd` (momentum 0.9, decay 5e-4, the paper's) or `adamw` (decay 1e-4)."""
    if name == "sgd":
        return SGD(params, weight_decay=5e-4 if weight_decay is None else weight_decay)
    if name == "adamw":
        return AdamW(params, weight_decay=1e-4 if weight_decay is None else weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose sgd or adamw")
