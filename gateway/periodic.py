"""A background task that runs every few seconds: the workers' keeper, sweep and pruning, the
intake's WAL checkpoints."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("hookgate.worker")


class Periodic:
    """Calls :meth:`tick` every ``interval`` seconds in a daemon thread until :meth:`stop`.

    A failing tick is logged and tried again at the next interval: a store or broker outage must
    not end the task for the life of the process.
    """

    name = "hookgate-periodic"

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> None:
        raise NotImplementedError

    def next_wait(self) -> float:
        """Seconds until the next tick; a subclass may wake up earlier than ``interval``."""
        return self.interval

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called: a long tick should end early."""
        return self._stop.is_set()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.next_wait()):
            try:
                self.tick()
            except Exception:
                log.warning("%s failed; trying again in %.1f s", self.name, self.interval, exc_info=True)
