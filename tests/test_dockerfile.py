"""The Dockerfile, read as text (no Docker engine here) and its start-up run without Docker.

What can be checked without building the image: it is multi-stage, runs as a non-root user,
ships no providers.yaml (so no demo secret), has a health check, and keeps its writable state in
its volume; and ``hookgate serve`` started with the image's environment and no configuration
refuses to start, says where the configuration is expected, and writes nothing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.servers import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions(name: str) -> list[str]:
    """The arguments of every ``name`` instruction, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [line.split(None, 1)[1] for line in text.splitlines() if line.startswith(name + " ")]


def image_env() -> dict[str, str]:
    pairs = re.findall(r"(\w+)=(\S+)", " ".join(instructions("ENV")))
    return dict(pairs)


def test_the_image_is_multi_stage_non_root_and_checks_its_health() -> None:
    assert len(instructions("FROM")) == 2
    assert instructions("USER") == ["hookgate"]
    assert any("/healthz" in check for check in instructions("HEALTHCHECK"))
    assert instructions("VOLUME") == ["/data"]


def test_the_image_ships_no_configuration_and_no_secret() -> None:
    copied = " ".join(instructions("COPY"))
    assert "providers.yaml" not in copied
    assert "demo" not in DOCKERFILE.lower().replace("demo secret", "")
    env = image_env()
    assert env["HOOKGATE_CONFIG"] == "/etc/hookgate/providers.yaml"
    for key in ("HOOKGATE_DATA_DIR", "HOOKGATE_DATABASE_URL"):
        assert "/data" in env[key], key


def test_started_as_the_image_starts_without_a_configuration_it_refuses_and_writes_nothing(tmp_path: Path) -> None:
    """The image's environment with its paths moved under ``tmp_path``: serve exits 1 at once."""
    env = {key: value.replace("/etc/hookgate", str(tmp_path / "etc")) for key, value in image_env().items()}
    env = {key: value.replace("/data", str(tmp_path / "data")) for key, value in env.items()}
    env["PYTHONPATH"] = str(ROOT)
    (tmp_path / "data").mkdir()
    (tmp_path / "work").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1", "--port", "0"],
        env={**os.environ, **env},
        cwd=tmp_path / "work",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert f"{tmp_path}/etc/providers.yaml" in done.stderr
    assert "Traceback" not in done.stderr
    assert list((tmp_path / "data").iterdir()) == []
    assert list((tmp_path / "work").iterdir()) == []
