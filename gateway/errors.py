"""Errors of the gateway layer, under the shared root ``providers.errors.HookgateError``.

HookgateError
├── ConfigError           providers.yaml or the environment is unusable (lists every problem)
├── StoreUnavailable      the database did not take a write: answer 503, never 2xx
│   └── InboxFull         too much already waits for the store: answer 503 at once
├── BrokerUnavailable     the broker did not take a message: answer 503
└── ReplayError           a replay asked for something that does not exist
"""

from __future__ import annotations

from providers.errors import HookgateError


class ConfigError(HookgateError):
    """Raised when the configuration has problems; ``problems`` are ``file:line: field: message``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class StoreUnavailable(HookgateError):
    """Raised when the store cannot commit; the sender should retry later."""


class InboxFull(StoreUnavailable):
    """Raised when too many deliveries already wait for the group commit; answered 503 at once."""


class BrokerUnavailable(HookgateError):
    """Raised when the broker does not answer; the sender should retry later."""


class ReplayError(HookgateError):
    """Raised when a replay names a status that does not exist."""
