"""Process settings from the environment (``HOOKGATE_*``); every one has a working default.

Provider settings live in providers.yaml (see :mod:`gateway.config`); these say where things
are: the configuration file, the database, the broker and the admin token.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ConfigError


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What one ``serve`` process gives a client, before and while it reads a request.

    The defaults hold a sender's ordinary behaviour with room to spare (webhook requests are a
    few KiB of headers and at most ``max_body_bytes`` of body, sent at once) and bound what a slow
    or hostile client can hold: connections, time and memory.
    """

    #: Open connections (idle kept-alive ones included) that are served at once; a request on
    #: one more is answered 503.
    max_connections: int = 1000
    #: An idle kept-alive connection is closed after this long.
    keep_alive_seconds: float = 5.0
    #: A request's headers must arrive within this long of its first byte (else 408, closed).
    header_timeout_seconds: float = 10.0
    #: Request line and headers together, in bytes (else 431, closed).
    max_header_bytes: int = 16 * 1024
    #: A request's body must arrive within this long of its headers (else 408, closed).
    body_timeout_seconds: float = 10.0
    #: Rows waiting for the group commit, and their bytes: past either, new deliveries are
    #: answered 503 at once instead of piling up in memory while the store stalls.
    inbox_max_rows: int = 10_000
    inbox_max_bytes: int = 64 * 1024 * 1024
    #: Connections the kernel queues before ``accept``.
    backlog: int = 2048
    #: Refused requests kept per provider in the rejection log (the newest; see gateway.rejections).
    rejections_per_provider: int = 1000
    #: Refused requests waiting to be written to that log; past it, new ones are dropped and counted.
    rejections_max_waiting: int = 10_000

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ServerLimits:
        """Each field from ``HOOKGATE_<FIELD>`` (upper case) when set."""
        values: dict[str, float | int] = {}
        for name in cls.__dataclass_fields__:
            raw = environ.get(f"HOOKGATE_{name.upper()}")
            if raw:
                kind = type(getattr(cls(), name))
                try:
                    values[name] = kind(raw)
                except ValueError:
                    raise ConfigError([f"HOOKGATE_{name.upper()}={raw!r} is not a number"]) from None
                if not math.isfinite(values[name]) or values[name] <= 0:
                    raise ConfigError([f"HOOKGATE_{name.upper()}={raw!r}: give a positive, finite number"])
        return cls(**values)  # type: ignore[arg-type]


DEFAULT_LIMITS = ServerLimits()


@dataclass(frozen=True, slots=True)
class Settings:
    """Where Hookgate finds its configuration, store and broker."""

    config_path: Path = Path("providers.yaml")
    database_url: str = "sqlite:///./hookgate.db"
    #: ``None`` starts an embedded Redis server under ``data_dir`` (unless ``broker_url`` is set).
    redis_url: str | None = None
    #: ``amqp://…`` selects RabbitMQ (a Redis URL works too); it wins over ``redis_url``.
    broker_url: str | None = None
    admin_token: str | None = None
    data_dir: Path = Path(".hookgate")
    limits: ServerLimits = DEFAULT_LIMITS
    #: Where ``serve`` writes the intake's batches: ``process`` (a child process of its own) or
    #: ``thread`` (the committer thread, in the intake's process; see gateway.writer_process).
    intake_writer: str = "process"

    @property
    def broker(self) -> str | None:
        """The broker's URL: ``broker_url``, else ``redis_url``; ``None`` for the embedded Redis."""
        return self.broker_url or self.redis_url

    @property
    def broker_variable(self) -> str:
        """The variable the broker's URL came from, for messages."""
        return "HOOKGATE_BROKER_URL" if self.broker_url else "HOOKGATE_REDIS_URL"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        def get(name: str) -> str | None:
            return environ.get(f"HOOKGATE_{name}") or None

        defaults = cls()
        return cls(
            config_path=Path(get("CONFIG") or defaults.config_path),
            database_url=get("DATABASE_URL") or defaults.database_url,
            redis_url=get("REDIS_URL"),
            broker_url=_broker_url(get("BROKER_URL")),
            admin_token=(get("ADMIN_TOKEN") or "").strip() or None,  # a stray newline from a secret file
            data_dir=Path(get("DATA_DIR") or defaults.data_dir),
            limits=ServerLimits.from_env(environ),
            intake_writer=_intake_writer(get("INTAKE_WRITER")),
        )


#: The values of ``HOOKGATE_INTAKE_WRITER``.
INTAKE_WRITERS = ("process", "thread")


def _intake_writer(value: str | None) -> str:
    chosen = (value or INTAKE_WRITERS[0]).strip().lower()
    if chosen not in INTAKE_WRITERS:
        raise ConfigError([f"HOOKGATE_INTAKE_WRITER={value!r}: give process or thread"])
    return chosen


#: URL schemes of the brokers: RabbitMQ's, and Redis' (as ``HOOKGATE_REDIS_URL`` takes them).
BROKER_SCHEMES = ("amqp", "amqps", "redis", "rediss", "unix")


def _broker_url(url: str | None) -> str | None:
    scheme = urlsplit(url).scheme if url else None
    if url and scheme not in BROKER_SCHEMES:
        raise ConfigError(
            [f"HOOKGATE_BROKER_URL: {scheme or 'no'} scheme: give amqp://… (RabbitMQ) or redis://… (Redis)"]
        )
    return url
