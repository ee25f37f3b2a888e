"""A stream model's held-out stretch scored as a deployment runs it: in its stream, the state carried along.

Silero's LSTM VAD takes a recurrent state (h, c, fed zeros by default) and returns the next one (hn, cn). Run in
chunks with the state carried from one chunk to the next it computes exactly what it computes on the whole
stream. Scored on its held-out runs from zero state instead, each run starts with a transient whose decisions a
tiny change of the weights flips: over the benchmark's 33 s, runs of 64 frames (even after 48 frames of burn-in)
gave every 2x model about 80% Dice, whether it kept 96% of the stream's decisions or 66%, and on the training
audio's last quiet run (8 s of audio in all) 33-37% for the good ones. Run after the frames before it
(`Dataset.split(burn_in=...)`), the same stretch reads 94-95% for models that keep 94-96% over 33 s, and 74% and
87% for two that keep 74% and 66%; one that drifts only after longer than the data (77% over 33 s) still reads
97%: a held-out stretch judges no further than the data reaches.

A state input is an input fed whole (no batch axis, float, static shape); its next value is the graph output of
the same rank whose known dimensions agree, paired in order of declaration. A model where any state input finds
no such output is scored from zero state, run by run, as before.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from onnx_dns.data import model_inputs

RunAll = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
BURN_IN_RUNS = 4  # runs of the batch size before the held-out stretch that a stream model runs through first


def state_pairs(model: onnx.ModelProto) -> dict[str, str]:
    """{state input: the output that holds its next value}, or {} when the model has no state or one of its
    states has no output to match."""
    states = [s for s in model_inputs(model) if s.batch_axis is None and s.dtype.kind == "f"
              and s.shape and None not in s.shape]
    outputs = [(o.name, [d.dim_value if d.HasField("dim_value") else None for d in o.type.tensor_type.shape.dim])
               for o in model.graph.output]
    pairs: dict[str, str] = {}
    for spec in states:
        match = next((name for name, dims in outputs if name not in pairs.values() and len(dims) == len(spec.shape)
                      and all(d is None or d == s for d, s in zip(dims, spec.shape))), None)
        if match is None:
            return {}
        pairs[spec.name] = match
    return pairs


class Stream:
    """A run function (batch in, `output` out) that feeds each batch the state the previous batch left;
    `start` begins a new pass from the data's own state (zeros)."""

    def __init__(self, run_all: RunAll, output: str, pairs: dict[str, str]) -> None:
        self.run_all = run_all
        self.output = output
        self.pairs = pairs
        self.state: dict[str, np.ndarray] = {}

    def start(self) -> None:
        self.state = {}

    def __call__(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        if self.state:
            n = len(next(iter(feed.values())))
            feed = {**feed, **{i: np.repeat(self.state[i][None], n, axis=0) for i in self.pairs}}
        outputs = self.run_all(feed)
        self.state = {i: np.asarray(outputs[o]) for i, o in self.pairs.items()}
        return outputs[self.output]


def runner(run_all: RunAll, output: str, pairs: dict[str, str] | None) -> Callable[[dict], np.ndarray]:
    """A run function from a batch to `output`: a `Stream` carrying the state of `pairs`, or stateless without."""
    return Stream(run_all, output, pairs) if pairs else lambda feed: run_all(feed)[output]


def start_pass(run: Callable) -> None:
    """Reset a `Stream` before a pass over the data (any other run function keeps no state)."""
    if isinstance(run, Stream):
        run.start()
