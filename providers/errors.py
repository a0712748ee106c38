"""The exception tree shared by every Hookgate package.

It lives in ``providers`` because that package is the bottom layer: ``gateway`` and ``workers``
import it, never the other way round. The tree::

    HookgateError
    ├── DeliveryRejected            a webhook request the intake refuses (carries the HTTP status)
    │   ├── SignatureRejected       401: signature or timestamp missing, malformed or wrong
    │   └── PayloadRejected         400: body or a required header unusable for that provider
    ├── ProviderConfigError         a provider entry in providers.yaml is unusable
    └── (gateway.errors adds ConfigError, StoreUnavailable, BrokerUnavailable)

Messages are short, fixed and safe to show to a sender: they never contain a secret, a
signature or a body.
"""

from __future__ import annotations


class HookgateError(Exception):
    """Raised for any failure Hookgate itself detects."""


class DeliveryRejected(HookgateError):
    """Raised when a delivery must be refused; ``status_code`` is the HTTP answer."""

    status_code = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SignatureRejected(DeliveryRejected):
    """Raised when a signature or signed timestamp is missing, malformed, stale or wrong."""

    status_code = 401


class PayloadRejected(DeliveryRejected):
    """Raised when a verified body cannot be parsed, or lacks what the provider always sends."""

    status_code = 400


class ProviderConfigError(HookgateError):
    """Raised when a provider's settings are unusable.

    ``problems`` holds ``(field, message)`` pairs so that the configuration loader can point
    at the exact line of providers.yaml for each one.
    """

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{field}: {message}" for field, message in problems))
        self.problems = problems
