"""The Dockerfile, read as text (no Docker engine here) and its start-up run without Docker.

What can be checked without building the image: it is multi-stage, runs as a non-root user,
ships no providers.yaml (so no demo secret), has a health check, and keeps its writable state in
its volume; ``hookgate serve`` started with the image's environment and no configuration
refuses to start, says where the configuration is expected, and writes nothing; and the build
stage's own COPY and ``pip wheel`` replayed here give a wheel that holds every file of the
project's packages and installs, as the final stage installs it, into a clean venv whose
``hookgate`` runs.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from gateway.cli import build_parser
from tests.support.servers import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions(name: str) -> list[str]:
    """The arguments of every ``name`` instruction, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [line.split(None, 1)[1] for line in text.splitlines() if line.startswith(name + " ")]


def stages() -> list[list[tuple[str, str]]]:
    """Each stage's instructions as (name, arguments), from its ``FROM`` on."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    found: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        name, _, arguments = line.partition(" ")
        if name == "FROM":
            found.append([])
        if found and name.isupper():
            found[-1].append((name, arguments))
    return found


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


#: The project's packages that the image need not carry: its tests and benchmarks.
DEV_ONLY_PACKAGES = {"tests", "bench"}


def replay_build_stage(work: Path) -> Path:
    """The build stage's COPY and ``pip wheel`` run in ``work/src`` (its WORKDIR) with this
    interpreter's pip and ``/wheels`` at ``work/wheels``; the directory of wheels it wrote."""
    source, wheels = work / "src", work / "wheels"
    source.mkdir()
    for name, arguments in stages()[0]:
        if name == "COPY":
            *copied, target = arguments.split()
            for path in copied:
                into = source / target / path if target.endswith("/") else source / target
                if (ROOT / path).is_dir():
                    shutil.copytree(ROOT / path, into, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy(ROOT / path, into)
        elif name == "RUN":
            argv = shlex.split(arguments.replace("/wheels", str(wheels)))
            assert argv[:2] == ["pip", "wheel"], f"the build stage runs {arguments!r}, not pip wheel"
            built = subprocess.run(
                [sys.executable, "-m", "pip", *argv[1:]], cwd=source, capture_output=True, text=True, timeout=600
            )
            if built.returncode != 0:
                skip_if_the_index_does_not_answer(work)
                pytest.fail(f"{arguments} failed:\n{built.stdout[-2000:]}{built.stderr[-3000:]}")
    return wheels


def skip_if_the_index_does_not_answer(work: Path) -> None:
    """Skip, saying why, when pip cannot fetch a dependency at all (no network to the index)."""
    probe = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(work / "probe"), "starlette"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if probe.returncode != 0:
        pytest.skip(f"the package index does not answer: {probe.stderr.strip().splitlines()[-1:]}")


def install_as_the_final_stage(wheels: Path, venv: Path) -> None:
    """The final stage's ``pip install … /wheels/*.whl``, into a new venv."""
    [install] = [arguments for name, arguments in stages()[-1] if name == "RUN" and "pip install" in arguments]
    argv = shlex.split(install.split("&&")[0])
    assert argv[:2] == ["pip", "install"]
    assert argv[-1] == "/wheels/*.whl"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    done = subprocess.run(
        [str(venv / "bin" / "pip"), *argv[1:-1], *map(str, sorted(wheels.glob("*.whl")))],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def project_files() -> set[str]:
    """Every file of the project's packages (each directory with an ``__init__.py`` at the top),
    package data included, as a wheel names them."""
    packages = [path.parent for path in ROOT.glob("*/__init__.py") if path.parent.name not in DEV_ONLY_PACKAGES]
    return {
        path.relative_to(ROOT).as_posix()
        for package in packages
        for path in package.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


@pytest.mark.timeout(900)
def test_the_wheel_the_image_builds_has_every_module_and_installs_into_a_clean_venv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheels = replay_build_stage(tmp_path)
    [wheel] = wheels.glob("hookgate-*.whl")
    missing = project_files() - set(zipfile.ZipFile(wheel).namelist())
    assert not missing, f"not in the wheel (pyproject's [tool.setuptools] packages or package data): {sorted(missing)}"

    venv = tmp_path / "venv"
    install_as_the_final_stage(wheels, venv)
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["COLUMNS"] = "100"
    monkeypatch.setenv("COLUMNS", "100")
    shown = subprocess.run(
        [str(venv / "bin" / "hookgate"), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == build_parser().format_help()
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import gateway.cli; print(gateway.cli.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr
