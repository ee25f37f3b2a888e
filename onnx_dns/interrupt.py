"""Ctrl-C during training: the first one asks the loop to stop after the current iteration (and checkpoint),
a second one aborts at once. Python lets only the main thread install handlers; elsewhere nothing changes."""

from __future__ import annotations

import logging
import signal
import threading
from types import TracebackType

log = logging.getLogger(__name__)


class StopRequest:
    """A context manager that turns the first SIGINT into `requested = True`."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None
        self._installed = False

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, kind: type | None, value: BaseException | None, trace: TracebackType | None) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.default_int_handler)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.info("interrupt: finishing this iteration and writing a checkpoint (Ctrl-C again to abort now)")
