"""One ``/metrics`` for a whole worker group, however many processes Dramatiq forks.

``hookgate worker --processes N`` is Dramatiq's CLI forking N worker processes, which Dramatiq
stops and starts together. Rather than a port per process (N targets to configure, numbered
after a base port), the group uses prometheus_client's multiprocess mode: ``hookgate worker``
makes a fresh directory, starts its workers with ``PROMETHEUS_MULTIPROC_DIR`` naming it (each
process then keeps its values in files of its own there), and serves ``/metrics`` itself, from
its own process, summing every process's files. One scrape thus sees the whole group, and a
process started again (by ``hookgate run``, or Dramatiq's reload on SIGHUP) adds to its
predecessor's counts. The
backlog gauges come from the store, read by the same exporter (see :mod:`gateway.backlog`).

The directory is under ``/dev/shm`` when it is writable (memory, and writable on a read-only
root filesystem), else the temporary directory; it is removed when the group stops.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from .backlog import BacklogCollector
from .database import create_store_engine
from .errors import ConfigError

log = logging.getLogger("hookgate.metrics")

#: The variable prometheus_client reads, at import, to keep values in files of that directory.
MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
#: As Dramatiq's own Prometheus exporter.
DEFAULT_PORT = 9191
DIR_PREFIX = "hookgate-metrics-"
SHARED_MEMORY = Path("/dev/shm")  # noqa: S108  (mkdtemp makes a private directory in it)


def metrics_port(option: int | None, environ: Mapping[str, str] = os.environ) -> int:
    """``--metrics-port``, else ``HOOKGATE_METRICS_PORT``, else 9191; 0 turns the exporter off.

    Raises:
        ConfigError: the option or the variable is not a port number.
    """
    given, raw = ("--metrics-port", str(option)) if option is not None else ("HOOKGATE_METRICS_PORT", None)
    raw = raw or environ.get("HOOKGATE_METRICS_PORT") or str(DEFAULT_PORT)
    if not raw.isdigit() or int(raw) > 65535:
        raise ConfigError([f"{given}={raw!r} is not a port: give 0 to 65535 (0: no metrics)"])
    return int(raw)


@contextlib.contextmanager
def multiprocess_dir(base: Path | None = None) -> Iterator[Path]:
    """A fresh directory for the worker processes' metric files, removed afterwards.

    Its name holds this process's id: the directories of exporters killed before they could
    remove theirs (SIGKILL) are removed here, so that restarts do not fill ``/dev/shm``.
    """
    if base is None:
        base = SHARED_MEMORY if os.access(SHARED_MEMORY, os.W_OK) else Path(tempfile.gettempdir())
    for stale in base.glob(f"{DIR_PREFIX}*-*"):
        pid = stale.name.removeprefix(DIR_PREFIX).split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


@dataclass(frozen=True, slots=True)
class GroupMetrics:
    """What the exporter of a worker group reads, and the environment its processes start with."""

    env: dict[str, str]
    collectors: list[Collector]


@contextlib.contextmanager
def group_metrics(database_url: str, providers: Iterable[str]) -> Iterator[GroupMetrics]:
    """A directory for the processes' values, read (summed) by one collector, and the backlog."""
    with multiprocess_dir() as directory:
        engine = create_store_engine(database_url, acknowledges=False, pool_size=1, max_overflow=0)
        backlog = BacklogCollector(engine, providers)
        try:
            yield GroupMetrics(
                {MULTIPROC_VARIABLE: str(directory)}, [MultiProcessCollector(None, path=str(directory)), backlog]
            )
        finally:
            backlog.close()


@contextlib.contextmanager
def serve_worker_metrics(host: str, port: int, database_url: str, providers: Iterable[str]) -> Iterator[dict[str, str]]:
    """Serve ``/metrics`` of the worker group about to start on ``host:port``; yields the
    environment to start its processes with.

    Never stops a worker from starting: with port 0, a port in use (another ``hookgate worker``
    on this host) or no directory for the files, it yields an empty environment, after a
    warning in the two latter cases, and the workers run without an exporter.
    """
    with contextlib.ExitStack() as stack:
        yield _start_exporter(stack, host, port, database_url, providers) if port else {}


def _start_exporter(
    stack: contextlib.ExitStack, host: str, port: int, database_url: str, providers: Iterable[str]
) -> dict[str, str]:
    """Start the exporter, its cleanup moved onto ``stack``; the workers' environment, or ``{}``
    (and nothing left behind) when it cannot start."""
    with contextlib.ExitStack() as attempt:
        try:
            group = attempt.enter_context(group_metrics(database_url, providers))
        except OSError as exc:
            log.warning("no directory for the worker processes' metrics (%s); running without /metrics", exc)
            return {}
        registry = CollectorRegistry()
        for collector in group.collectors:
            registry.register(collector)
        try:
            server, _ = start_http_server(port, host, registry)
        except OSError as exc:
            log.warning(
                "cannot listen on %s:%d (%s): this worker runs without /metrics; give each "
                "hookgate worker on a host its own --metrics-port",
                host,
                port,
                exc.strerror or exc,
            )
            return {}
        attempt.callback(server.server_close)
        attempt.callback(server.shutdown)
        stack.push(attempt.pop_all())
    log.info("metrics of this worker group at http://%s:%d/metrics", host, port)
    return group.env
