"""The ``hookgate`` command line."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from . import tracing
from .config import Config, load_config
from .errors import ConfigError, HookgateError
from .logs import configure_logging
from .processes import Supervised, exit_on_sigterm, run_forwarding_signals
from .settings import Settings

if TYPE_CHECKING:
    from prometheus_client.registry import Collector
    from sqlalchemy import Engine

    from workers.registry import Finding

    from .eventlog import EventFilter
    from .schema import Migration
    from .writer_process import WriterProcess


def _when(timestamp: float | None) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S") if timestamp else "-"


def _settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment, with ``--config`` exported so child processes see it."""
    if getattr(args, "config", None):
        os.environ["HOOKGATE_CONFIG"] = args.config
    return Settings.from_env()


def _config(settings: Settings) -> Config:
    try:
        return load_config(settings.config_path)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        raise SystemExit(1) from None


@contextlib.contextmanager
def _broker_url(settings: Settings) -> Iterator[str]:
    """The broker URL (HOOKGATE_BROKER_URL, else HOOKGATE_REDIS_URL); without either, the embedded
    Redis server (started if needed). With RabbitMQ no Redis is started."""
    if settings.broker:
        yield settings.broker
        return
    from .embedded_redis import EmbeddedRedis

    server = EmbeddedRedis(settings.data_dir)
    url = server.start()
    os.environ["HOOKGATE_REDIS_URL"] = url
    try:
        yield url
    finally:
        server.stop()


def _serve(
    config: Config,
    settings: Settings,
    broker_url: str,
    host: str,
    port: int,
    collectors: Sequence[Collector] = (),
    *,
    admin: bool = True,
) -> None:
    """Serve the intake; ``collectors`` are added to its ``/metrics`` (the worker's, under ``run``).
    With ``admin`` and ``HOOKGATE_ADMIN_TOKEN`` set, the console is served beside it."""
    from .database import create_store_engine
    from .intake import create_app
    from .queue import EventQueue, create_broker
    from .server import serve

    tracing.configure("hookgate-serve")  # OTEL_* (see gateway.tracing)
    try:
        engine = create_store_engine(settings.database_url)
        token = settings.admin_token if admin else None
        queue = EventQueue(create_broker(broker_url))
        writer = _intake_writer(settings, broker_url)
        app = create_app(config, engine, queue, limits=settings.limits, admin_token=token, writer=writer)
        for collector in collectors:
            app.intake.metric_registry.register(collector)
        serve(app, settings.limits, host, port)
    finally:
        tracing.shutdown()  # exports the spans still waiting


def _intake_writer(settings: Settings, broker_url: str) -> WriterProcess | None:
    """The intake's writer process, unless ``HOOKGATE_INTAKE_WRITER=thread`` or the store is a
    SQLite database in memory (which no other process can open)."""
    from sqlalchemy.engine import make_url

    from .writer_process import WriterProcess

    url = make_url(settings.database_url)
    in_memory = url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")
    if settings.intake_writer == "thread" or in_memory:
        return None
    return WriterProcess(settings.database_url, broker_url)


def _worker_command(processes: int, threads: int) -> list[str]:
    options = ["--processes", str(processes), "--threads", str(threads)]
    return [sys.executable, "-m", "workers.cli", "workers.main", *options]  # Dramatiq's CLI, our log format


def _handler_findings(config: Config) -> list[Finding]:
    """Import the handler modules as the worker will, in a short child process, and look at what
    they registered (see :func:`workers.registry.check_modules`).

    The intake never imports users' handler modules, so this runs in its own interpreter with the
    worker's environment and working directory; :func:`workers.registry.load_handler_modules`
    decides the import path there as it does in the worker. A module that fails here would crash
    every worker start.
    """
    import subprocess

    from workers.registry import Finding

    if not config.handlers:
        return []
    code = "import sys; from workers.registry import print_findings; print_findings(*sys.argv[1:])"
    argv = [sys.executable, "-c", code, orjson.dumps(config.provider_types).decode(), *config.handlers]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return [Finding(f"importing {', '.join(config.handlers)} took longer than 120s", module="")]
    # The findings are the last line printed; without them, the child died before it could say.
    out, err = done.stdout.strip().splitlines(), done.stderr.strip().splitlines()
    if done.returncode == 0 and out:
        with contextlib.suppress(ValueError):
            return [Finding(**found) for found in orjson.loads(out[-1])]
    message = f"the import check exited with code {done.returncode}" + (f": {err[-1]}" if err else "")
    return [Finding(message, module="")]


def _finding_line(config: Config, finding: Finding) -> str:
    """One line per finding: at the ``handlers:`` entry of a module that cannot be imported, else
    at the ``@on`` in the handler's source; warnings say so."""
    if finding.module is not None:
        index = config.handlers.index(finding.module) if finding.module in config.handlers else None
        return f"{config.where(('handlers',) if index is None else ('handlers', index))}: {finding.message}"
    return f"{finding.where}: {'' if finding.fatal else 'warning: '}{finding.message}"


def _prepare_store(settings: Settings, *, upgrade: bool) -> Migration:
    """Create an empty store and check the schema of one that exists (upgrading it when
    ``upgrade``). A schema this release does not run on, or a store that does not answer, is
    one line and exit 1 (:class:`~gateway.errors.HookgateError`), before any process starts."""
    from sqlalchemy.exc import OperationalError

    from .database import create_store_engine
    from .schema import prepare_store

    engine = create_store_engine(settings.database_url)
    try:
        return prepare_store(engine, upgrade=upgrade)
    except OperationalError as exc:
        raise HookgateError(_unanswered("HOOKGATE_DATABASE_URL", settings.database_url, "the store", exc)) from None
    finally:
        engine.dispose()


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.sql:
        from .schema import upgrade_sql

        sys.stdout.write(upgrade_sql(settings.database_url, args.start))
        return 0
    if args.start:
        raise HookgateError("--from only goes with --sql: a store's own revision is read from it")
    done = _prepare_store(settings, upgrade=True)
    where = _shown_url(settings.database_url)
    if done.before is None:
        print(f"created the store at {where} at schema revision {done.after}")
    elif done.changed:
        print(f"upgraded the store at {where} from schema revision {done.before} to {done.after}")
    else:
        print(f"the store at {where} is at schema revision {done.after}, the newest: nothing to do")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from .retention import Pruner

    settings = _settings(args)
    config = _config(settings)
    engine = _engine(args)
    try:
        report = Pruner(engine, config).run(dry_run=args.dry_run)
    finally:
        engine.dispose()
    print(report.describe(dry_run=args.dry_run))
    return 0


def _shown_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    config = _config(settings)
    # Only modules that cannot be imported stop it; the worker logs registrations that never run.
    problems = [_finding_line(config, f) for f in _handler_findings(config) if f.module is not None]
    if problems:
        print("\n".join(f"hookgate run: not starting: {problem}" for problem in problems), file=sys.stderr)
        return 1
    done = _prepare_store(settings, upgrade=True)  # the all-in-one upgrades its own store
    if done.before is not None and done.changed:
        logging.getLogger("hookgate").info("store upgraded from schema revision %s to %s", done.before, done.after)
    from workers.shutdown import exits_within

    from .metrics_export import group_metrics

    exit_on_sigterm()
    with _broker_url(settings) as url, group_metrics(settings.database_url, config.providers) as metrics:
        worker = Supervised(
            _worker_command(1, args.threads), name="worker", env=metrics.env, stop_timeout=exits_within(config.workers)
        )
        worker.start()
        try:
            _serve(config, settings, url, args.host, args.port, metrics.collectors)
        finally:
            worker.stop()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    config = _config(settings)
    _prepare_store(settings, upgrade=False)
    exit_on_sigterm()
    if args.admin_only:
        return _serve_admin(config, settings, args.host, args.port)
    with _broker_url(settings) as url:
        _serve(config, settings, url, args.host, args.port, admin=not args.no_admin)
    return 0


def _serve_admin(config: Config, settings: Settings, host: str, port: int) -> int:
    """``serve --admin-only``: the console and ``/healthz`` on their own listener, no webhooks (it
    needs the store, not the broker)."""
    if not settings.admin_token:
        print("hookgate serve --admin-only: set HOOKGATE_ADMIN_TOKEN (the console's token)", file=sys.stderr)
        return 1
    from .admin import create_admin_app
    from .database import create_store_engine
    from .server import serve

    serve(
        create_admin_app(config, create_store_engine(settings.database_url), settings.admin_token),
        settings.limits,
        host,
        port,
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from .metrics_export import metrics_port, serve_worker_metrics

    settings = _settings(args)
    config = _config(settings)
    port = metrics_port(args.metrics_port)
    _prepare_store(settings, upgrade=False)
    with (
        _broker_url(settings),
        serve_worker_metrics(args.metrics_host, port, settings.database_url, config.providers) as env,
    ):
        return run_forwarding_signals(_worker_command(args.processes, args.threads), env)


#: psycopg's ``connection to server at "host" (address), port 5432 failed: FATAL:  reason``.
_PG_FAILED = re.compile(
    r'connection to server (?:at "(?P<host>[^"]*)"(?: \([^)]*\))?, port (?P<port>\d+)|on socket "(?P<socket>[^"]*)")'
    r" failed: (?:FATAL:\s*)?(?P<reason>.+)"
)
#: redis-py's ``Error 111 connecting to host:port. Connection refused.``
_REDIS_FAILED = re.compile(r"Error -?\d+ connecting to (?P<at>\S+?)\.? (?P<reason>.+?)\.?$")


def _unanswered(variable: str, url: str, what: str, exc: Exception) -> str:
    """Why the store or broker at ``url`` did not answer, in one line naming where it was looked
    for (the reason and the host, or the SQLite file), never its password: drivers' errors are
    terse (``OperationalError``) and URLs may hold credentials."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:
        return f"{variable} is not a valid URL: {type(exc).__name__}"
    secrets = [s for s in (parsed.password, parsed.query.get("password")) if isinstance(s, str) and s]
    shown = parsed.difference_update_query(["password"]).render_as_string(hide_password=True)
    # pika's connection errors say nothing themselves: the cause is their argument.
    text = str(getattr(exc, "orig", None) or exc) or " ".join(map(repr, exc.args))
    lines = text.strip().splitlines()
    first = lines[0] if lines else type(exc).__name__
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        file = os.path.abspath(parsed.database)
        reason = f"cannot open {file}" if "unable to open" in first else f"{first}: {file}"
    elif found := _PG_FAILED.search(first):
        reason = _at(found["reason"], found["socket"] or f"{found['host']}:{found['port']}")
    elif found := _REDIS_FAILED.match(first):
        reason = _at(found["reason"], found["at"])
    elif "ConnectionRefusedError" in first:  # pika: ``…: ConnectionRefusedError(111, 'Connection refused')``
        reason = _at("connection refused", f"{parsed.host}:{parsed.port or 5672}")
    else:
        host = f"{parsed.host}:{parsed.port}" if parsed.port else parsed.host
        reason = f"{type(exc).__name__}: {first}" + (f" (at {host})" if host else "")
    for secret in secrets:
        reason = reason.replace(secret, "***")
    return f"{variable}={shown}: {what} does not answer: {reason}"


def _at(reason: str, where: str) -> str:
    """``connection refused at host:port``; any other reason with ``(at host:port)`` after it."""
    reason = reason.strip()
    reason = reason[:1].lower() + reason[1:] if reason[1:2].islower() else reason
    return f"{reason} at {where}" if reason.startswith("connection refused") else f"{reason} (at {where})"


def cmd_check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    problems: list[str] = []
    try:
        config = load_config(settings.config_path)
    except ConfigError as exc:
        problems += exc.problems
        config = None
    warnings: list[str] = []
    if config is not None:
        for finding in _handler_findings(config):
            (problems if finding.fatal else warnings).append(_finding_line(config, finding))
    from .database import create_store_engine, ping

    try:
        ping(create_store_engine(settings.database_url))
    except Exception as exc:
        problems.append(_unanswered("HOOKGATE_DATABASE_URL", settings.database_url, "the store", exc))
    if settings.broker:
        from .queue import EventQueue, create_broker

        try:
            EventQueue(create_broker(settings.broker)).ping()
        except Exception as exc:
            problems.append(_unanswered(settings.broker_variable, settings.broker, "the broker", exc))
    if problems or warnings:
        print("\n".join(problems + warnings), file=sys.stderr)
    if problems:
        return 1
    assert config is not None
    counts = f"{len(config.providers)} providers, {len(config.handlers)} handler modules"
    print(f"{settings.config_path}: {counts}: OK" + (f" ({len(warnings)} warnings)" if warnings else ""))
    return 0


def _engine(args: argparse.Namespace) -> Engine:
    """The store of the event commands; :class:`~gateway.database.NoStore` (exit 1, one line)
    if there is none, which is then not created."""
    from .database import open_existing_store

    return open_existing_store(_settings(args).database_url)


def _next(row: Any) -> str:
    """What a waiting event waits for, from the columns :mod:`gateway.eventlog` computes; the
    event ahead of it first, since a scheduled retry also waits for that one."""
    if row.waiting_behind is not None:
        return f"waiting behind event {row.waiting_behind}"
    if row.retry_at is not None:
        return f"retry {row.next_attempt} at {_when(row.retry_at)}"
    return "-"


#: The event filters of ``events list`` and ``events replay``: option, EventFilter parameter, help.
EVENT_FILTERS = (
    ("--provider", "provider", "one provider"),
    ("--type", "type", "an event type, or a pattern as handlers take: 'invoice.*', '*'"),
    ("--status", "status", "received, queued, processing, processed, superseded or failed"),
    ("--since", "since", "received at or after this time (ISO 8601, UTC unless it says; or Unix seconds)"),
    ("--until", "until", "received before this time (same forms)"),
    ("--event-id", "event_id", "the provider's event id"),
    ("--resource", "resource_id", "the resource id"),
    ("--error", "error", "TEXT found in the last error, in any case"),
    ("--group", "group", "a failure group, e.g. handlers.charge:ValueError"),
)


def _add_event_filters(p: argparse.ArgumentParser) -> None:
    for option, param, text in EVENT_FILTERS:
        p.add_argument(option, dest=f"filter_{param}", metavar=option[2:].upper().replace("-", "_"), help=text)


def _event_filter(args: argparse.Namespace) -> EventFilter:
    """The filter the options name (an unusable one is a FilterError: one line, exit 1)."""
    from .eventlog import EventFilter

    return EventFilter.from_params({param: getattr(args, f"filter_{param}") for _, param, _ in EVENT_FILTERS})


def _event_json(row: Any) -> bytes:
    """An event as one line of ``events list --json``: the fields of the admin API's list."""
    from .eventlog import list_fields

    return orjson.dumps(list_fields(row))


def cmd_events_list(args: argparse.Namespace) -> int:
    from .eventlog import list_events

    page = list_events(_engine(args), _event_filter(args), cursor=args.cursor, limit=args.limit)
    rows = page.rows
    if args.json:
        for r in rows:
            sys.stdout.buffer.write(_event_json(r) + b"\n")
    else:
        head = f"{'ID':>7}  {'RECEIVED':19}  {'PROVIDER':10}  {'STATUS':10}  {'TRIES':>5}  {'NEXT':31}  {'TYPE':28}"
        print(f"{head}  EVENT ID")
        for r in rows:
            when, step = _when(r.received_at), _next(r)
            line = (
                f"{r.id:>7}  {when:19}  {r.provider:10}  {r.status:10}  {r.attempts:>5}  {step:31}  {r.event_type:28}"
            )
            print(f"{line}  {r.event_id}")
    if page.next_cursor is not None:
        sys.stdout.flush()
        print(f"next page: --cursor {page.next_cursor}", file=sys.stderr)
    return 0


def _timeline(history: list[dict[str, Any]]) -> None:
    """The attempts of ``events show``: one line per try, then its errors indented below it."""
    print("attempt history:" + ("" if history else " none"))
    for a in history:
        took = a["finished_at"] - a["started_at"]
        duration = f"{took * 1000:.0f} ms" if took < 1 else f"{took:.1f} s"
        api = f"api {a['reconcile_status']}" if a["reconcile_status"] is not None else "-"
        if a["reconcile_status"] is None and a["reconcile_error"]:
            api = f"api: {a['reconcile_error']}"
        when = _when(a["started_at"])
        print(f"  #{a['attempt']:<3} {when}  {duration:>7}  {a['trigger']:11}  {a['outcome']:10}  {a['worker']}  {api}")
        for e in a["errors"]:
            where = f" at {e['frame']}" if e["frame"] else ""
            print(f"        {e['handler']} raised {e['type']}: {e['message']}{where}")


def cmd_events_show(args: argparse.Namespace) -> int:
    from .attempts import attempts_for
    from .eventlog import find_event

    engine = _engine(args)
    found = find_event(engine, args.id, args.provider)
    if found is None:
        print(f"no event {args.id}", file=sys.stderr)
        return 1
    row, runs = found
    for label, value in (
        ("id", row.id),
        ("provider", row.provider),
        ("event id", row.event_id),
        ("type", row.event_type),
        ("resource", row.resource_id or "-"),
        ("sequence", row.sequence if row.sequence is not None else "-"),
        ("status", row.status),
        ("next", _next(row)),
        ("attempts", row.attempts),
        ("received", _when(row.received_at)),
        ("processed", _when(row.processed_at)),
    ):
        print(f"{label + ':':11}{value}")
    if row.last_error:
        print("last error:\n  " + row.last_error.replace("\n", "\n  "))
    print("handler runs:" + ("" if runs else " none"))
    for run in runs:
        replayed = f"  (forced replay {run.round})" if run.round else ""
        print(f"  {_when(run.finished_at)}  {run.handler}{replayed}")
    _timeline(attempts_for(engine, row.id))
    print("headers:")
    for name, value in orjson.loads(row.headers).items():
        print(f"  {name}: {value}")
    print("body:")
    print(row.body.decode("utf-8", "replace"))
    return 0


def cmd_events_replay(args: argparse.Namespace) -> int:
    from .eventlog import replay

    where = _event_filter(args)
    if not args.ids:
        if not where.to_params():
            print(
                "name events (store ids or provider event ids), or filter them (e.g. --status failed)", file=sys.stderr
            )
            return 2
        return _bulk_replay(args, where)
    if where.to_params().keys() - {"provider", "status"}:
        print("name events or filter them, not both (only --provider and --status go with ids)", file=sys.stderr)
        return 2
    done = replay(
        _engine(args), args.ids, status=where.status, provider=where.provider, force=args.force, dry_run=args.dry_run
    )
    verb = "would queue" if args.dry_run else "queued"
    for row in done.queued:
        print(f"{verb} {row.id} ({row.provider}/{row.event_id}), {row.status} until now: {_replay_effect(args.force)}")
    for _, reason in done.refused:
        print(f"not replayed: {reason}", file=sys.stderr)
    if not done.queued and not done.refused:
        print("no events to replay")
    return 1 if done.refused else 0


def _replay_effect(force: bool) -> str:
    return "every handler runs again" if force else "handlers that succeeded are not run again"


def _bulk_replay(args: argparse.Namespace, where: EventFilter) -> int:
    """Replay every event ``where`` matches as a replay job run here, with a progress bar on
    stderr; Ctrl-C cancels the job after its current batch (what was queued stays queued)."""
    import signal
    import threading

    from . import replays
    from .progress import ProgressBar

    engine = _engine(args)
    effect = _replay_effect(args.force)
    if args.dry_run:
        print(f"would queue {replays.count(engine, where, force=args.force)} events: {effect}")
        return 0
    interrupted = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    try:
        job_id, total = replays.start(engine, where, force=args.force)

        def keep_going() -> bool:
            if interrupted.is_set():
                replays.cancel(engine, job_id)  # before run() gives the lease back: no worker adopts it
                return False
            return True

        bar = ProgressBar(total)
        if total:
            bar.update(0)
            replays.run(engine, job_id, progress=bar.update, keep_going=keep_going)
            bar.finish()
    finally:
        signal.signal(signal.SIGINT, previous)
    if not total:
        print("no events to replay")
        return 0
    state = replays.status(engine, job_id)
    assert state is not None
    counts = f"{state['done']} of {state['total']} events"
    if state["status"] == replays.CANCELLED:
        print(f"replay job {job_id} cancelled: queued {counts}; the others are left as they were")
        return 130 if interrupted.is_set() else 1
    if state["status"] == replays.RUNNING:  # another runner took it over (this one's lease lapsed)
        print(f"replay job {job_id} goes on in another process: queued {counts} so far")
        return 1
    print(f"replay job {job_id}: queued {counts}: {effect}")
    return 0


def cmd_providers_list(args: argparse.Namespace) -> int:
    from .pausing import states

    config = _config(_settings(args))
    for name, state in states(_engine(args), config.providers).items():
        print(f"{name:20}  {state}")
    return 0


def cmd_providers_pause(args: argparse.Namespace) -> int:
    """``pause`` and ``resume``: the provider must be configured, so that a typo is not stored."""
    from . import pausing

    settings = _settings(args)
    config = _config(settings)
    if args.name not in config.providers:
        configured = ", ".join(config.providers)
        print(
            f"unknown provider {args.name!r}: not in {settings.config_path} (configured: {configured})", file=sys.stderr
        )
        return 2
    pausing_it = args.providers_command == "pause"
    changed = (pausing.pause if pausing_it else pausing.resume)(_engine(args), args.name)
    state = pausing.PAUSED if pausing_it else pausing.ACTIVE
    print(f"{args.name}: {state}" + ("" if changed else f" (it was already {state})"))
    return 0


#: What ``hookgate send --data FILE`` does with the file's JSON object, per provider type, as each
#: type's ``sample()`` builds its event (tests/test_send_data.py checks every line against it).
SEND_DATA = {
    "discord": "replaces data (of an interaction; of other events, event.data)",
    "github": "replaces the whole payload (its action is set from --type if absent)",
    "gitlab": "replaces object_attributes",
    "hmac": "replaces data",
    "hubspot": "is merged into the event (the body is a batch of one)",
    "intercom": "replaces data.item",
    "linear": "is merged into data",
    "mailgun": "is merged into event-data",
    "meta": "replaces entry[0].changes[0].value",
    "msgraph": "is merged into the notification (value[0])",
    "paddle": "replaces data",
    "pagerduty": "replaces event.data",
    "sendgrid": "is merged into the event (the body is a batch of one)",
    "shopify": "replaces the whole payload",
    "slack": "replaces event (type: --type unless the file has one; a slash_command's form fields are merged)",
    "square": "replaces data.object.<kind> (kind: --type up to its first dot)",
    "standard": "replaces data",
    "stripe": "replaces data.object",
    "twilio": "is merged into the form fields",
    "twitch": "replaces event",
    "zoom": "replaces payload.object",
}


def cmd_send(args: argparse.Namespace) -> int:
    import httpx

    settings = _settings(args)
    config = _config(settings)
    entry = config.providers.get(args.provider)
    if entry is None:
        print(
            f"no provider {args.provider!r} in {settings.config_path} (have: {', '.join(config.providers)})",
            file=sys.stderr,
        )
        return 2
    try:
        data = orjson.loads(Path(args.data).read_bytes()) if args.data else None
    except (OSError, orjson.JSONDecodeError) as exc:
        print(f"--data {args.data}: {exc}", file=sys.stderr)
        return 2
    if data is not None and not isinstance(data, dict):
        print(f"--data {args.data}: must hold a JSON object (see hookgate send --help)", file=sys.stderr)
        return 2
    event_id = args.id or f"evt_{uuid.uuid4().hex[:24]}"
    url = args.url or f"http://127.0.0.1:8000/webhooks/{args.provider}"
    key = Path(args.key).read_text().strip() if args.key else None
    body, headers = entry.provider.signed_request(
        args.type, data, event_id=event_id, timestamp=int(time.time()), secret=key, url=url
    )
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        print(f"POST {url} failed: {exc}", file=sys.stderr)
        return 1
    print(f"POST {url} -> {response.status_code} {response.text}")
    return 0 if response.is_success else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hookgate", description="Webhook ingestion gateway.")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(
        name: str, func: object, help_text: str, parent: argparse._SubParsersAction = sub
    ) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        p.add_argument("--config", help="providers.yaml (default: $HOOKGATE_CONFIG or ./providers.yaml)")
        return p

    for name, func, text in (
        ("run", cmd_run, "intake and workers in one process tree, on the embedded defaults"),
        ("serve", cmd_serve, "the HTTP intake only"),
    ):
        p = command(name, func, text)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=8000)
        if name == "run":
            p.add_argument("--threads", type=int, default=4, help="worker threads")
        else:
            admin = p.add_mutually_exclusive_group()
            admin.add_argument(
                "--admin-only", action="store_true", help="serve only the console (/admin) and /healthz, no webhooks"
            )
            admin.add_argument(
                "--no-admin", action="store_true", help="never serve the console here, even with a token set"
            )
    p = command("worker", cmd_worker, "the Dramatiq workers only")
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument(
        "--metrics-port",
        type=int,
        help="serve the workers' /metrics on this port (default: $HOOKGATE_METRICS_PORT or 9191; 0: none)",
    )
    p.add_argument("--metrics-host", default="0.0.0.0", help="address of /metrics (default: all)")  # noqa: S104
    command("check", cmd_check, "validate the configuration and the environment")
    p = command("prune", cmd_prune, "apply the retention policy now (the workers also do it periodically)")
    p.add_argument("--dry-run", action="store_true", help="say how many events would go; change nothing")
    p = command("migrate", cmd_migrate, "upgrade the store's schema to this release's (create it when empty)")
    p.add_argument("--sql", action="store_true", help="print the SQL instead, for a DBA; touch no database")
    p.add_argument(
        "--from",
        dest="start",
        metavar="REVISION",
        help="with --sql: the store's current revision (0001 for a release 0.1 store); default: an empty database",
    )

    events = sub.add_parser("events", help="the event log").add_subparsers(dest="events_command", required=True)
    p = command("list", cmd_events_list, "list events, newest first", events)
    _add_event_filters(p)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--cursor", help="the next page: the cursor the previous page printed on stderr")
    p.add_argument("--json", action="store_true", help="one JSON object per event and line")
    p = command("show", cmd_events_show, "one event: headers, body, status, attempts, errors, handler runs", events)
    p.add_argument("id", help="store id, or the provider's event id")
    p.add_argument("--provider")
    p = command(
        "replay", cmd_events_replay, "queue stored events again (failed ones; --force for any finished)", events
    )
    p.add_argument("ids", nargs="*", help="store ids or provider event ids; without them, the events the filters match")
    _add_event_filters(p)
    p.add_argument("--force", action="store_true", help="also processed/superseded events: every handler runs again")
    p.add_argument("--dry-run", action="store_true", help="say what would be queued; change nothing")

    providers = sub.add_parser("providers", help="pause and resume providers").add_subparsers(
        dest="providers_command", required=True
    )
    command("list", cmd_providers_list, "each configured provider, active or paused", providers)
    for name, text in (
        ("pause", "stored events of the provider wait unprocessed; the intake keeps accepting them"),
        ("resume", "process the provider's events again, the waiting ones first, in order"),
    ):
        command(name, cmd_providers_pause, text, providers).add_argument(
            "name", help="the provider, as in providers.yaml"
        )

    p = command("send", cmd_send, "sign a sample event as the provider would and POST it")
    p.add_argument("provider")
    p.add_argument("--type", required=True, help="event type, e.g. invoice.paid or issues.opened")
    p.add_argument(
        "--data",
        metavar="FILE",
        help="a JSON object for the sample event: what it replaces depends on the provider's type (below)",
    )
    p.add_argument("--id", help="event id (default: a new random one)")
    p.add_argument("--url", help="default: http://127.0.0.1:8000/webhooks/PROVIDER")
    p.add_argument(
        "--key",
        help="file holding the key to sign with (default: the first secret); sendgrid and discord "
        "need the private half of their public_key (PEM for sendgrid, the 64-hex seed for discord)",
    )
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "--data FILE, by provider type:\n" + "\n".join(f"  {t:<10} {text}" for t, text in SEND_DATA.items())
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        configure_logging()  # HOOKGATE_LOG_FORMAT; a bad value is a ConfigError, like any setting
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a reader that went away (``| head``) shows here, not at exit
        return code
    except BrokenPipeError:
        return _reader_gone()
    except HookgateError as exc:
        print(f"hookgate: {exc}", file=sys.stderr)
        return 1


#: The exit status of a process that wrote to a pipe nobody reads: killed by SIGPIPE (128 + 13).
EXIT_PIPE_CLOSED = 141


def _reader_gone() -> int:
    """``hookgate events list | head -1``: the reader has what it wanted. Stop quietly, with the
    status a shell reports for ``cat`` or ``seq`` there; stdout goes to /dev/null so that the
    interpreter's own flush at exit does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_PIPE_CLOSED


if __name__ == "__main__":
    raise SystemExit(main())
