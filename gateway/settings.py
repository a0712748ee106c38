"""Process settings from the environment (``HOOKGATE_*``); every one has a working default.

Provider settings live in providers.yaml (see :mod:`gateway.config`); these say where things
are: the configuration file, the database, the broker and the admin token.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Settings:
    """Where Hookgate finds its configuration, store and broker."""

    config_path: Path = Path("providers.yaml")
    database_url: str = "sqlite:///./hookgate.db"
    #: ``None`` starts an embedded Redis server under ``data_dir``.
    redis_url: str | None = None
    admin_token: str | None = None
    data_dir: Path = Path(".hookgate")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        def get(name: str) -> str | None:
            return environ.get(f"HOOKGATE_{name}") or None

        defaults = cls()
        return cls(
            config_path=Path(get("CONFIG") or defaults.config_path),
            database_url=get("DATABASE_URL") or defaults.database_url,
            redis_url=get("REDIS_URL"),
            admin_token=get("ADMIN_TOKEN"),
            data_dir=Path(get("DATA_DIR") or defaults.data_dir),
        )
