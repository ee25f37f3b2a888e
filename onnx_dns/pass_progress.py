"""Progress of one pass over the data (an evaluation, the original model's outputs): a pass that runs longer than
AFTER seconds reports how far it got, at most once every AFTER seconds, so a long pass is never silent."""

from __future__ import annotations

import time
from collections.abc import Callable

AFTER = 2.0  # seconds


class PassProgress:
    """Counts the samples of a pass and sends `{"event": "pass", ...}` to `progress` when it is due."""

    def __init__(self, progress: Callable[[dict], None] | None, what: str, total: int | None,
                 clock: Callable[[], float] | None = None) -> None:
        """`what` names the pass ("evaluating"), `total` its samples (None when unknown); `clock` is for tests."""
        self.progress = progress
        self.what = what
        self.total = total
        self.clock = clock or time.perf_counter
        self.started = self.clock()
        self.reported = 0.0
        self.done = 0

    def advance(self, samples: int) -> None:
        """`samples` more are done; report when the pass has run over AFTER seconds since the last report."""
        self.done += samples
        elapsed = self.clock() - self.started
        if self.progress is not None and elapsed > AFTER and elapsed - self.reported > AFTER:
            self.reported = elapsed
            self.progress({"event": "pass", "what": self.what, "done": self.done, "total": self.total,
                           "seconds": elapsed})
