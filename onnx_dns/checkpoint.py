"""The checkpoint of a training run: one `.npz` in the work folder, written atomically, enough to resume exactly.

It holds every trained value and mask, the optimizer's and the surgeon's state, and the run's `TrainState`
(iteration, baseline, learning-rate scale after rollbacks, history, best state within the bound).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnx_dns.errors import OutputError
from onnx_dns.evaluate import Metrics
from onnx_dns.selection import Snapshot

CHECKPOINT = "checkpoint.npz"


@dataclass
class TrainState:
    """Where a run stands between iterations."""

    iteration: int
    baseline: Metrics
    lr_scale: float = 1.0
    rollbacks: int = 0
    history: list[dict] = field(default_factory=list)
    best: Snapshot | None = None


@dataclass
class Tensors:
    """The arrays a checkpoint restores in place: trained values, masks, optimizer state."""

    params: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray]


def save_checkpoint(work_dir: Path, tensors: Tensors, state: TrainState, extra: dict[str, Any]) -> None:
    """Write the checkpoint atomically; `extra` holds JSON state of other parts (surgeon, config)."""
    arrays = {f"param/{k}": v for k, v in tensors.params.items()}
    arrays |= {f"mask/{k}": v for k, v in tensors.masks.items()}
    arrays |= {f"optim/{k}": v for k, v in tensors.optimizer.items()}
    best = state.best
    if best is not None:
        arrays |= {f"best_param/{k}": v for k, v in best.params.items()}
        arrays |= {f"best_mask/{k}": v for k, v in best.masks.items()}
    meta = {
        "iteration": state.iteration, "baseline": asdict(state.baseline), "lr_scale": state.lr_scale,
        "rollbacks": state.rollbacks, "history": [{**h, "metrics": asdict(h["metrics"])} for h in state.history],
        "best": None if best is None else {"iteration": best.iteration, "metrics": asdict(best.metrics),
                                          "compression": best.compression},
        **extra,
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    tmp = work_dir / (CHECKPOINT + ".tmp")
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, work_dir / CHECKPOINT)
    except OSError as exc:
        raise OutputError(f"{work_dir}: writing the checkpoint failed ({exc.strerror or exc}); free space "
                          "or choose another --work-dir") from exc
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(work_dir: Path, tensors: Tensors) -> tuple[TrainState, dict[str, Any]] | None:
    """Restore the arrays in place and return the run's state and the extra JSON state, or None without one."""
    path = work_dir / CHECKPOINT
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(bytes(data["meta"]).decode())
        for k, v in tensors.params.items():
            v[...] = data[f"param/{k}"]
        for k, v in tensors.masks.items():
            v[...] = data[f"mask/{k}"]
        tensors.optimizer.clear()
        tensors.optimizer.update({k[6:]: data[k] for k in data.files if k.startswith("optim/")})
        best = None
        if meta["best"] is not None:
            best = Snapshot(meta["best"]["iteration"], Metrics(**meta["best"]["metrics"]),
                            meta["best"]["compression"],
                            {k: data[f"best_param/{k}"] for k in tensors.params},
                            {k: data[f"best_mask/{k}"] for k in tensors.masks})
    history = [{**h, "metrics": Metrics(**h["metrics"])} for h in meta["history"]]
    state = TrainState(meta["iteration"], Metrics(**meta["baseline"]), meta["lr_scale"], meta["rollbacks"],
                       history, best)
    extra = {k: v for k, v in meta.items() if k not in ("iteration", "baseline", "lr_scale", "rollbacks",
                                                        "history", "best")}
    return state, extra
