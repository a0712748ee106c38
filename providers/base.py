"""The interface every provider type implements, and the checks they share.

A provider type turns ``(raw body, headers)`` into a verified :class:`Delivery` or raises a
:class:`~providers.errors.DeliveryRejected`. It is pure: no I/O, no clock except the one it is
given, no imports from ``gateway`` or ``workers``. To add a provider, subclass
:class:`BaseProvider`, override :meth:`~BaseProvider.verify`, :meth:`~BaseProvider.sign` and
:meth:`~BaseProvider.sample`, in a new module of this package (it is found by itself).

Headers are passed as a mapping whose ``get`` is case-insensitive (Starlette's ``Headers``).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson

from .api import ResourceRef
from .errors import ProviderConfigError, SignatureRejected

#: The longest signature or timestamp header we look at; anything longer is malformed.
MAX_SIGNATURE_HEADER = 4096

#: Shortest secret accepted for a plain HMAC key. Short shared secrets are guessable offline
#: from a single captured delivery.
MIN_SECRET_LENGTH = 8

#: Headers stored for every provider.
COMMON_HEADERS = frozenset({"content-type", "user-agent"})

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Handshake:
    """The answer to a provider's verification request (not a business event)."""

    status_code: int
    body: bytes
    media_type: str = "application/json"


@dataclass(frozen=True, slots=True)
class Delivery:
    """A verified webhook: what the gateway stores and the workers process.

    ``sequence`` orders one resource's events (a version, or a time in milliseconds);
    ``handshake`` is set instead when the request only checks the endpoint (GitHub's ping).
    """

    event_id: str
    event_type: str
    resource_id: str | None = None
    sequence: int | None = None
    payload: Any = None
    handshake: Handshake | None = None


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """One entry of providers.yaml, after ``${ENV}`` substitution.

    ``options`` holds the keys specific to a type; the type validates them itself.
    """

    name: str
    type: str
    secrets: tuple[str, ...] = ()
    tolerance_seconds: int = 300
    options: Mapping[str, Any] = field(default_factory=dict)


class BaseProvider:
    """Verifies one provider's deliveries, and signs sample ones the way it would.

    Subclasses override :meth:`verify` (the only method the intake calls), :meth:`sign` (used by
    tests and ``hookgate send``) and :meth:`sample`. Validation of settings belongs in
    ``__init__``: raise :class:`ProviderConfigError` listing every problem at once.
    """

    type_name: ClassVar[str]
    #: Keys of ``options`` this type accepts (anything else is reported as unknown).
    option_keys: ClassVar[frozenset[str]] = frozenset()
    #: Whether the type needs ``secrets`` (key-pair and token types may not).
    needs_secrets: ClassVar[bool] = True
    #: Request headers worth storing with an event (lower case): ids, types, times, signatures.
    #: Everything else is dropped, since some senders have put secrets in headers.
    kept_headers: ClassVar[frozenset[str]] = frozenset()
    #: The provider's public API, used when ``api:`` gives credentials but no ``base_url``.
    api_base_url: ClassVar[str | None] = None
    #: Headers every request to the provider's API carries (versions, media types).
    api_headers: ClassVar[Mapping[str, str]] = {}

    def __init__(self, settings: ProviderSettings, *, clock: Clock = time.time) -> None:
        self.settings = settings
        self.name = settings.name
        self.clock = clock
        problems = [
            (key, f"unknown key for type {self.type_name!r}") for key in settings.options if key not in self.option_keys
        ]
        if self.needs_secrets:
            problems += self.check_secrets(settings.secrets)
        problems += self.check_options(settings.options)
        if problems:
            raise ProviderConfigError(problems)

    # -- to override ----------------------------------------------------------------------

    def verify(self, body: bytes, headers: Mapping[str, str]) -> Delivery:
        """Check the signature (and timestamp) of ``body``, then parse it into a Delivery.

        Raises:
            SignatureRejected: the request is not authentic or not fresh (401).
            PayloadRejected: authentic, but unusable (400).
        """
        raise NotImplementedError

    def sign(self, body: bytes, headers: Mapping[str, str], *, secret: str, timestamp: int) -> dict[str, str]:
        """Return the signature headers this provider would send for ``body``."""
        raise NotImplementedError

    def sample(
        self, event_type: str, data: Mapping[str, Any] | None, *, event_id: str, timestamp: int
    ) -> tuple[bytes, dict[str, str]]:
        """Build an unsigned sample delivery of ``event_type``: its body and its plain headers."""
        raise NotImplementedError

    def decode(self, body: bytes, headers: Mapping[str, str]) -> Any:
        """The payload handlers see, from a stored body (verified when it arrived) and its stored
        headers. JSON by default; a type whose sender posts forms overrides this."""
        return orjson.loads(body)

    def resource_ref(self, event_type: str, resource_id: str, payload: Any) -> ResourceRef | None:
        """Where the current state of the event's resource is fetched; ``None`` if unknown.

        Only called for events with a resource id, and only when ``api:`` is configured.
        """
        return None

    @staticmethod
    def is_deleted(state: Any) -> bool:
        """Whether a fetched state says the resource is gone (Stripe answers deleted customers
        with ``"deleted": true`` instead of a 404)."""
        return isinstance(state, Mapping) and state.get("deleted") is True

    def check_secret(self, secret: str) -> str | None:
        """Return why ``secret`` is unusable for this type, or ``None``."""
        if len(secret) < MIN_SECRET_LENGTH:
            return f"secret is shorter than {MIN_SECRET_LENGTH} characters"
        return None

    def check_options(self, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Validate type-specific options; return ``(field, message)`` problems."""
        return []

    # -- shared helpers -------------------------------------------------------------------

    def stored_headers(self) -> frozenset[str]:
        """The allowlist of headers stored with this provider's events."""
        return COMMON_HEADERS | self.kept_headers

    def check_secrets(self, secrets: tuple[str, ...]) -> list[tuple[str, str]]:
        if not secrets:
            return [("secrets", "at least one secret is required")]
        problems = []
        for index, secret in enumerate(secrets):
            reason = "secret is empty" if not secret else self.check_secret(secret)
            if reason:
                problems.append((f"secrets[{index}]", reason))
        return problems

    def signed_request(
        self,
        event_type: str,
        data: Mapping[str, Any] | None = None,
        *,
        event_id: str,
        timestamp: int | None = None,
        secret: str | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """A complete sample request, signed with ``secret`` (default: the first configured)."""
        when = int(self.clock()) if timestamp is None else timestamp
        body, headers = self.sample(event_type, data, event_id=event_id, timestamp=when)
        key = self.settings.secrets[0] if secret is None else secret
        headers.update(self.sign(body, headers, secret=key, timestamp=when))
        return body, headers

    def check_timestamp(self, timestamp: float) -> None:
        """Refuse a signed time more than ``tolerance_seconds`` away from now, either way."""
        if abs(self.clock() - timestamp) > self.settings.tolerance_seconds:
            raise SignatureRejected("timestamp outside the tolerance")


def required_header(headers: Mapping[str, str], name: str) -> str:
    """The value of a signature-related header, which must be present, short and ASCII."""
    value = headers.get(name)
    if not value:
        raise SignatureRejected(f"missing {name} header")
    if len(value) > MAX_SIGNATURE_HEADER or not value.isascii():
        raise SignatureRejected(f"malformed {name} header")
    return value


def parse_unix_timestamp(value: str, name: str) -> int:
    """A decimal unix time from a header; anything else is a malformed signature header."""
    if not value.isdigit() or len(value) > 13:
        raise SignatureRejected(f"malformed {name} header")
    return int(value)


def hmac_digest(key: bytes, message: bytes, algorithm: str = "sha256") -> bytes:
    return hmac.new(key, message, getattr(hashlib, algorithm)).digest()


def any_match(expected: Iterable[bytes], offered: Iterable[bytes]) -> bool:
    """Constant-time: does any offered signature equal any expected one?

    Every pair is compared (no early exit) so that timing does not reveal which secret or which
    offered signature matched. Comparing bytes, not str, keeps non-ASCII input from raising.
    """
    offered = list(offered)
    matched = False
    for candidate in expected:
        for signature in offered:
            matched |= hmac.compare_digest(candidate, signature)
    return matched
