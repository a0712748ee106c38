"""``hookgate run`` with a broken handler module, and the supervisor's restarts of a dying worker."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gateway.processes import Supervised
from tests.support.servers import wait_for
from tests.test_cli import free_port

BROKEN_HOOKS = """\
import os
from pathlib import Path

from workers import Event, on

Path("imported-by").write_text(str(os.getpid()))


@on("stripe")
def handle(event: Event) -> None: ...


raise ImportError("No module named 'fancy_sdk'")
"""


def serves(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_run_refuses_to_start_when_a_handler_module_cannot_be_imported(tmp_path: Path) -> None:
    (tmp_path / "providers.yaml").write_text(
        'providers:\n  stripe: {type: stripe, secrets: ["whsec_test_secret_for_hookgate"]}\nhandlers: [broken_hooks]\n'
    )
    (tmp_path / "broken_hooks.py").write_text(BROKEN_HOOKS)
    env = {name: value for name, value in os.environ.items() if not name.startswith("HOOKGATE_")}
    port = free_port()
    started = time.monotonic()
    with (tmp_path / "out.log").open("wb") as out, (tmp_path / "err.log").open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=err,
        )
    try:
        wait_for(lambda: process.poll() is not None or serves(port), 60, interval=0.1, what="hookgate run to settle")
        assert not serves(port), "hookgate run serves although its handler module cannot be imported"
        assert process.wait(timeout=30) == 1
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    assert time.monotonic() - started < 30
    stderr = (tmp_path / "err.log").read_text()
    (message,) = [line for line in stderr.splitlines() if "broken_hooks" in line]
    assert "ImportError: No module named 'fancy_sdk'" in message
    # The file and line of the handlers: entry, as every configuration problem is reported.
    assert message.startswith("hookgate run: not starting: providers.yaml:3: handlers[0]: cannot import broken_hooks: ")
    assert "Traceback" not in stderr
    # The import was tried in a child process (the intake never imports handler modules), and
    # nothing was started: no embedded Redis, no store.
    assert int((tmp_path / "imported-by").read_text()) != process.pid
    assert not (tmp_path / ".hookgate").exists()
    assert not (tmp_path / "hookgate.db").exists()


class Recording(Supervised):
    """Remembers when each child was started."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.starts: list[float] = []

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.starts.append(time.monotonic())
        return super()._spawn()


def hookgate_records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in list(caplog.records) if r.name == "hookgate" and r.levelno == level]


def test_a_crashing_child_is_restarted_with_growing_delays_and_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hookgate")
    child = Recording([sys.executable, "-c", "import sys; sys.exit(3)"], restart_delay=0.05)
    child.start()
    try:
        wait_for(lambda: len(child.starts) >= 5, 30, what="five starts")
    finally:
        child.stop()
    gaps = [later - earlier for earlier, later in zip(child.starts, child.starts[1:], strict=False)]
    for n, gap in enumerate(gaps[:4]):
        assert gap >= 0.05 * 2**n, f"restart {n + 1} came after {gap:.3f}s: {gaps}"
    (warning,) = hookgate_records(caplog, logging.WARNING)
    assert "code 3" in warning
    repeats = hookgate_records(caplog, logging.INFO)
    assert repeats, "a repeated failure says how often it happened and when the next start is"
    assert "4 times" in repeats[2]
    assert "next start in 0.4s" in repeats[2]


def test_a_child_that_stayed_up_starts_a_new_streak(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hookgate")
    flag = tmp_path / "stay-up"
    script = f"import os, sys, time; os.path.exists({str(flag)!r}) and time.sleep(0.6); sys.exit(3)"
    child = Recording([sys.executable, "-c", script], restart_delay=0.05, stable_after=0.3)
    child.start()
    try:
        wait_for(lambda: len(child.starts) >= 3, 30, what="three starts")
        flag.touch()
        wait_for(lambda: len(hookgate_records(caplog, logging.WARNING)) == 2, 30, what="a second streak")
    finally:
        child.stop()
    first, second = hookgate_records(caplog, logging.WARNING)
    assert "starting it again in 0.05s" in first
    assert "starting it again in 0.05s" in second, "the delay starts again from the beginning"


STOPS_SLOWLY = """
import signal, sys, time
from pathlib import Path

def stop(signum, frame):
    if sys.argv[1] == "graceful":
        time.sleep(1.5)  # a worker finishing its running handlers
        sys.exit(0)

signal.signal(signal.SIGTERM, stop)
Path(sys.argv[2]).touch()
time.sleep(60)
"""


@pytest.mark.parametrize("child", ["graceful", "ignores SIGTERM"])
def test_stop_gives_the_child_its_stop_timeout(tmp_path: Path, child: str) -> None:
    """``hookgate run`` stops its worker within the worker's own bound (see workers.shutdown),
    not a fixed 30 s: a child still stopping gracefully is waited for, and one that ignores
    SIGTERM is killed once its stop timeout has passed."""
    ready = tmp_path / "ready"
    supervised = Supervised([sys.executable, "-c", STOPS_SLOWLY, child.split()[0], str(ready)], stop_timeout=3)
    supervised.start()
    wait_for(ready.exists, 30, what="the child to start")
    started = time.monotonic()
    supervised.stop()
    stopped_after = time.monotonic() - started
    assert supervised.process is not None
    if child == "graceful":
        assert supervised.process.returncode == 0
    else:
        assert supervised.process.returncode == -signal.SIGKILL
        assert stopped_after < 30, "killed after a fixed 30 s instead of its stop timeout"
