"""Child processes of the command line: stopping them, forwarding signals, restarting them."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time

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


def run_forwarding_signals(command: list[str], env: dict[str, str] | None = None) -> int:
    """Run ``command`` until it exits, passing SIGTERM and SIGINT on to it; ``env`` is added to
    this process's environment for it."""
    child = subprocess.Popen(command, env={**os.environ, **(env or {})})

    def forward(signum: int, frame: object) -> None:
        child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    return child.wait()


class Supervised:
    """A child process started again whenever it exits, until :meth:`stop`.

    Dramatiq's CLI stops all its worker processes when one of them dies; in production a process
    manager restarts ``hookgate worker``, and under ``hookgate run`` this does. A child that keeps
    dying (a crash streak) waits ``restart_delay`` doubling up to ``max_restart_delay`` between
    starts, so a broken worker does not spin; one that stayed up ``stable_after`` seconds ends the
    streak. Each streak is reported once as a warning; identical failures after it are one info
    line each (how many so far, when the next start is), not a new alarm. :meth:`stop` gives the
    child ``stop_timeout`` seconds to exit after SIGTERM, then kills it.
    """

    def __init__(
        self,
        command: list[str],
        *,
        name: str | None = None,
        restart_delay: float = 1.0,
        max_restart_delay: float = 60.0,
        stable_after: float = 30.0,
        env: dict[str, str] | None = None,
        stop_timeout: float = 30.0,
    ) -> None:
        self.command = command
        self.env = env or {}
        self.name = name or shlex.join(command)
        self.restart_delay = restart_delay
        self.max_restart_delay = max_restart_delay
        self.stable_after = stable_after
        self.stop_timeout = stop_timeout
        self.stopping = threading.Event()
        self._lock = threading.Lock()  # no start after stop() has taken the last process down
        self.process: subprocess.Popen[bytes] | None = None
        self.thread = threading.Thread(target=self._supervise, name="hookgate-supervisor", daemon=True)

    def start(self) -> None:
        self.process = self._spawn()
        self.thread.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.command, env={**os.environ, **self.env}, preexec_fn=die_with_parent)

    def _supervise(self) -> None:
        streak = 0  # consecutive exits of a child that did not stay up: sets the delay
        same, since, last_code = 0, "", None  # the run of identical exits within the streak
        while not self.stopping.is_set():
            assert self.process is not None
            started = time.monotonic()
            code = self.process.wait()
            if self.stopping.is_set():
                return
            uptime = time.monotonic() - started
            if uptime >= self.stable_after:
                streak = 0
            delay = min(self.restart_delay * 2**streak, self.max_restart_delay)
            streak += 1
            if streak == 1 or code != last_code:
                same, since, last_code = 1, time.strftime("%H:%M:%S"), code
                log.warning(
                    "%s %s after %.1fs; starting it again in %.3gs (the wait doubles while it keeps failing, "
                    "up to %.3gs)",
                    *(self.name, _exit_reason(code), uptime, delay, self.max_restart_delay),
                )
            else:
                same += 1
                next_start = time.strftime("%H:%M:%S", time.localtime(time.time() + delay))
                log.info(
                    "%s %s again, %d times in a row since %s; next start in %.3gs, at %s",
                    *(self.name, _exit_reason(code), same, since, delay, next_start),
                )
            if self.stopping.wait(delay):
                return
            with self._lock:
                if self.stopping.is_set():
                    return
                self.process = self._spawn()

    def stop(self) -> None:
        with self._lock:
            self.stopping.set()
        if self.process is not None:
            terminate(self.process, self.stop_timeout)


def _exit_reason(code: int) -> str:
    """``exited with code 3``, or ``was killed by SIGKILL`` for Popen's negative return codes."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"
