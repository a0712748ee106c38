"""Child processes of the command line: stopping them, forwarding signals, restarting them."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading

log = logging.getLogger("hookgate")

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:  # pragma: no cover - runs in the child, before exec
    """``preexec_fn``: on Linux, the kernel sends this child SIGTERM when its parent dies, even by
    SIGKILL, so no embedded Redis or worker outlives the command that started it."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def terminate(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM (a graceful stop), then SIGKILL if it has not exited within ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def exit_on_sigterm() -> None:
    """Turn SIGTERM into a normal exit, so that ``finally`` blocks (stopping Redis) run."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, handler)


def run_forwarding_signals(command: list[str]) -> int:
    """Run ``command`` until it exits, passing SIGTERM and SIGINT on to it."""
    child = subprocess.Popen(command, env=os.environ.copy())

    def forward(signum: int, frame: object) -> None:
        child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    return child.wait()


class Supervised:
    """A child process started again whenever it exits, until :meth:`stop`.

    Dramatiq's CLI stops all its worker processes when one of them dies; in production a process
    manager restarts ``hookgate worker``, and under ``hookgate run`` this does.
    """

    def __init__(self, command: list[str], *, restart_delay: float = 1.0) -> None:
        self.command = command
        self.restart_delay = restart_delay
        self.stopping = threading.Event()
        self.process: subprocess.Popen[bytes] | None = None
        self.thread = threading.Thread(target=self._supervise, name="hookgate-supervisor", daemon=True)

    def start(self) -> None:
        self.process = self._spawn()
        self.thread.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.command, env=os.environ.copy(), preexec_fn=die_with_parent)

    def _supervise(self) -> None:
        while not self.stopping.is_set():
            assert self.process is not None
            code = self.process.wait()
            if self.stopping.wait(self.restart_delay):
                return
            log.warning("%s exited (code %s); starting it again", self.command[-5:], code)
            self.process = self._spawn()

    def stop(self) -> None:
        self.stopping.set()
        if self.process is not None:
            terminate(self.process)
