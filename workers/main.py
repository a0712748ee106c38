"""The module Dramatiq's CLI loads: ``dramatiq workers.main`` (what ``hookgate worker`` runs).

Settings come from the environment (``HOOKGATE_CONFIG``, ``HOOKGATE_DATABASE_URL``,
``HOOKGATE_BROKER_URL`` or ``HOOKGATE_REDIS_URL``, ``HOOKGATE_LOG_FORMAT``, and ``OTEL_*`` for
traces); ``hookgate worker`` fills in the embedded Redis when no broker is set. The log format is
set up first, so that everything after it logs in it; traces next (see :mod:`gateway.tracing`).
"""

from __future__ import annotations

from gateway import tracing
from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.logs import configure_worker_process
from gateway.settings import Settings

from .app import build_worker_broker

try:
    configure_worker_process()
    tracing.configure("hookgate-worker")  # OTEL_* (see gateway.tracing)
    _settings = Settings.from_env()
except ConfigError as exc:
    raise SystemExit(str(exc)) from None

if not _settings.broker:
    raise SystemExit(
        "no broker: start workers with `hookgate worker`, or set HOOKGATE_BROKER_URL (or HOOKGATE_REDIS_URL)"
    )
broker = build_worker_broker(load_config(_settings.config_path), _settings.database_url, _settings.broker)
