"""The interface every provider type implements, and the checks they share.

A provider type turns ``(raw body, headers)`` into a verified :class:`Delivery` or raises a
:class:`~providers.errors.DeliveryRejected`. It is pure: no I/O, no clock except the one it is
given, no imports from ``gateway`` or ``workers``. To add a provider, subclass
:class:`BaseProvider`, override :meth:`~BaseProvider.verify`, :meth:`~BaseProvider.sign` and
:meth:`~BaseProvider.sample`, in a new module of this package (it is found by itself).

Headers are passed as a mapping whose ``get`` is case-insensitive (Starlette's ``Headers``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar
from urllib.parse import SplitResult, parse_qsl, urlsplit

import orjson

from .api import ResourceRef
from .errors import PayloadRejected, ProviderConfigError, SignatureRejected

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
    ``reply`` replaces Hookgate's usual JSON answer once the event is stored. A sender that posts
    several events in one request (SendGrid, HubSpot, Microsoft Graph, Meta) gives one Delivery
    per event in ``batch``, each with its own ``body`` (that event's JSON), so that each is
    deduped, ordered and retried on its own.
    """

    event_id: str
    event_type: str
    resource_id: str | None = None
    sequence: int | None = None
    payload: Any = None
    handshake: Handshake | None = None
    batch: tuple[Delivery, ...] = ()
    body: bytes | None = None
    #: The answer once the event is stored, for senders that expect a particular one (Discord
    #: interactions want a deferred response); default: Hookgate's JSON status.
    reply: Handshake | None = None


@dataclass(frozen=True, slots=True)
class Inbound:
    """A webhook request as a provider type sees it.

    ``url`` is the URL the sender addressed as well as the intake can tell: scheme and host from
    ``X-Forwarded-Proto``/``X-Forwarded-Host`` when a proxy set them, else from the request;
    then the path and query as received. Types that sign the URL prefer ``public_url``.
    """

    body: bytes
    headers: Mapping[str, str]
    url: str = ""
    method: str = "POST"

    @property
    def parts(self) -> SplitResult:
        """The URL split into its parts; see :func:`split_url`."""
        return split_url(self.url)

    @property
    def query(self) -> dict[str, str]:
        """The query string's parameters (the last value of a repeated name)."""
        return dict(parse_qsl(self.parts.query, keep_blank_values=True))


def split_url(url: str) -> SplitResult:
    """``url`` split into its parts, its port checked.

    The intake builds the URL from the request's ``Host`` or ``X-Forwarded-Host``, which the
    sender writes: ``[`` or a port of 99999 make ``urlsplit`` (or ``.port``) raise ValueError. That
    is the sender's mistake, so it is a 400 here, whatever the intake checked before.

    Raises:
        PayloadRejected: the URL cannot be parsed.
    """
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        raise PayloadRejected("request URL is malformed") from None
    return parts


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

    #: Whether the type answers a ``GET`` (Meta's subscription check); others get 405.
    accepts_get: ClassVar[bool] = False
    #: Whether :meth:`verify_request` reads ``Inbound.url`` or ``Inbound.query``: the intake
    #: rebuilds the URL only for those types (it costs a few header scans per request).
    reads_url: ClassVar[bool] = False

    # -- to override ----------------------------------------------------------------------

    def verify_request(self, request: Inbound) -> Delivery:
        """What the intake calls. Types that sign the URL or read the query override this one;
        the others override :meth:`verify`, which sees only the body and the headers."""
        return self.verify(request.body, request.headers)

    def sign_request(self, request: Inbound, *, secret: str, timestamp: int) -> dict[str, str]:
        """The signature headers for ``request``; the counterpart of :meth:`verify_request`."""
        return self.sign(request.body, request.headers, secret=secret, timestamp=timestamp)

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
        url: str = "",
    ) -> tuple[bytes, dict[str, str]]:
        """A complete sample request to ``url``, signed with ``secret`` (default: the first
        configured; key-pair types take a private key here)."""
        when = int(self.clock()) if timestamp is None else timestamp
        body, headers = self.sample(event_type, data, event_id=event_id, timestamp=when)
        key = secret if secret is not None else next(iter(self.settings.secrets), None)
        if key is None:
            raise ProviderConfigError([("secrets", f"type {self.type_name!r} signs with a private key: pass one")])
        return self.sign_sample(body, headers, secret=key, timestamp=when, url=url)

    def sign_sample(
        self, body: bytes, headers: dict[str, str], *, secret: str, timestamp: int, url: str
    ) -> tuple[bytes, dict[str, str]]:
        """Sign a request built by :meth:`sample`; a type that signs inside the body overrides this."""
        plain = {name.lower(): value for name, value in headers.items()}  # as the intake reads them
        headers.update(self.sign_request(Inbound(body, plain, url), secret=secret, timestamp=timestamp))
        return body, headers

    def check_timestamp(self, timestamp: float) -> None:
        """Refuse a signed time more than ``tolerance_seconds`` away from now, either way."""
        if abs(self.clock() - timestamp) > self.settings.tolerance_seconds:
            raise SignatureRejected("timestamp outside the tolerance")


def batch_delivery(body: bytes, payload: Any, parts: Iterable[Delivery]) -> Delivery:
    """A request that carries several events. Its own id, shown only in the answer, is a digest
    of the body.

    Raises:
        PayloadRejected: it carries no event.
    """
    batch = tuple(parts)
    if not batch:
        raise PayloadRejected("no events in the request")
    return Delivery(f"batch-{hashlib.sha256(body).hexdigest()[:32]}", "batch", payload=payload, batch=batch)


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
    """The HMAC of ``message``; ``algorithm`` is hashlib's name for it. One call into OpenSSL, with
    no HMAC object built and copied: it runs for every request and every configured secret."""
    return hmac.digest(key, message, algorithm)


def mac_text(secret: str, message: bytes, *, algorithm: str = "sha256", encoding: str = "hex", prefix: str = "") -> str:
    """``prefix`` + the HMAC of ``message`` keyed with ``secret`` (UTF-8), as hex or base64: the
    signature text a sender puts in its header, and what :func:`check_mac` compares against."""
    digest = hmac_digest(secret.encode(), message, algorithm)
    return prefix + (digest.hex() if encoding == "hex" else base64.b64encode(digest).decode())


def check_mac(
    secrets: Iterable[str],
    message: bytes,
    offered: Iterable[str],
    *,
    algorithm: str = "sha256",
    encoding: str = "hex",
    prefix: str = "",
) -> str:
    """The secret under which one ``offered`` signature is ``prefix`` + the encoded HMAC of
    ``message`` (each secret is used as UTF-8 bytes, as nearly every provider does).

    Every pair is compared, whatever matched, so timing does not tell which one did.

    Raises:
        SignatureRejected: no offered signature matches.
    """
    candidates = [o.encode() for o in offered]
    matched = None
    for secret in secrets:
        expected = mac_text(secret, message, algorithm=algorithm, encoding=encoding, prefix=prefix).encode()
        if any_match([expected], candidates) and matched is None:
            matched = secret
    if matched is None:
        raise SignatureRejected("signature does not match")
    return matched


def check_any_mac(secrets: Iterable[str], messages: Iterable[bytes], offered: Iterable[str], **options: str) -> str:
    """:func:`check_mac` for a sender whose signed bytes may take several forms (URL variants)."""
    secrets, offered = list(secrets), list(offered)
    for message in messages:
        try:
            return check_mac(secrets, message, offered, **options)
        except SignatureRejected:
            continue
    raise SignatureRejected("signature does not match")


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


class KeyPairProvider(BaseProvider):
    """A type whose sender signs with a private key (SendGrid, Discord): ``public_key`` instead of
    ``secrets``. Subclasses say how to read the key in :meth:`load_key`."""

    needs_secrets = False
    option_keys = frozenset({"public_key"})
    #: What ``public_key`` must be, for the configuration error.
    key_format: ClassVar[str] = "a public key"

    @staticmethod
    def load_key(value: str) -> Any:
        """The key object; raises ValueError if ``value`` is not such a key."""
        raise NotImplementedError

    def check_options(self, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        value = options.get("public_key")
        try:
            self.load_key(value if isinstance(value, str) else "")
        except ValueError:
            return [("public_key", f"required: {self.key_format}")]
        return []

    @cached_property
    def public_key(self) -> Any:
        return self.load_key(self.settings.options["public_key"])


class SignsUrl(BaseProvider):
    """A type whose sender signs the URL it posted to (Twilio, Square, HubSpot).

    Behind a proxy the intake sees another URL than the sender used, so ``public_url`` gives the
    one configured at the provider (scheme, host and path); the request's query string is
    appended to it. Without it, the URL is rebuilt from the request (``X-Forwarded-Proto`` and
    ``X-Forwarded-Host`` first).
    """

    option_keys = frozenset({"public_url"})
    reads_url = True

    def check_options(self, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        url = options.get("public_url")
        if url is None:
            return []
        try:
            parts = split_url(url) if isinstance(url, str) else None
        except PayloadRejected:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            return [("public_url", "must be an http(s) URL such as https://hooks.example.com/webhooks/NAME")]
        if parts.query or parts.fragment:
            return [("public_url", "give it without a query or fragment (the request's query is appended)")]
        return []

    def signed_url(self, request: Inbound) -> str:
        """The URL the sender signed, as well as it can be known.

        Raises:
            PayloadRejected: the request's URL cannot be parsed (even with ``public_url``, whose
                query comes from it).
        """
        query = request.parts.query
        public = self.settings.options.get("public_url")
        if not public:
            return request.url
        return public + (f"?{query}" if query else "")
