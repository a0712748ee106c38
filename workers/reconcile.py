"""Reconciliation: fetch a resource's current state from its provider's API before it is stored.

A webhook body is a snapshot from when the event happened, possibly days ago and out of order;
the provider's API says what is true now. The state written to the store and handed to
handlers as ``event.resource`` is therefore what the API answers, fetched after the delivery
was verified.

How an answer is read:

* 2xx with a JSON body: the current state (``{"deleted": true}`` counts as deleted, as Stripe
  answers for deleted customers);
* 404 and 410: the resource is gone, and the store marks it deleted;
* 408, 429, 5xx, timeouts and refused connections: transient, retried with backoff that waits
  at least ``Retry-After``;
* anything else (401, 403, a redirect, a body that is not JSON or is too large): permanent, the
  event is ``failed`` with the answer in ``last_error``; replay it once the cause is fixed.

Every request goes through :func:`providers.api.api_url`: only the configured API host is ever
contacted, and redirects are never followed.
"""

from __future__ import annotations

import base64
import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway import tracing
from gateway.config import ProviderEntry
from gateway.metrics import worker_metrics
from providers.api import ApiSettings, ResourceRef, UnsafeUrl, api_url, fill_path

from .api_client import ApiClient, FetchFailed, FetchTimeout, TooLarge

#: The longest ``Retry-After`` honoured; a larger value is taken as this (one hour).
MAX_RETRY_AFTER = 3600.0
TRANSIENT_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
USER_AGENT = "Hookgate (+https://github.com/hookgate/hookgate)"


class ReconcileError(Exception):
    """The API did not give the state. ``permanent`` errors are not retried; ``status`` is the
    API's status code when it answered (for the attempt's record)."""

    def __init__(
        self, message: str, *, permanent: bool = False, retry_after: float | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after
        self.status = status


@dataclass(frozen=True, slots=True)
class Fetched:
    """What reconciliation learnt: ``state`` is ``None`` when nothing was fetched or it is gone;
    ``status`` is the API's status code when it was asked."""

    resource_type: str | None
    state: Any = None
    deleted: bool = False
    fetched_at: float | None = None
    status: int | None = None

    @property
    def reconciled(self) -> bool:
        return self.fetched_at is not None


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max(0.0, moment.timestamp() - now), MAX_RETRY_AFTER)


class ProviderApi:
    """One provider's API: a pooled keep-alive client (:mod:`workers.api_client`) with its base
    URL, auth and timeouts."""

    def __init__(self, entry: ProviderEntry, settings: ApiSettings) -> None:
        self.provider = entry.provider
        self.settings = settings
        headers = {"User-Agent": USER_AGENT, **self.provider.api_headers, **settings.headers}
        if settings.token:
            headers["Authorization"] = f"Bearer {settings.token}"
        if settings.username is not None:
            pair = f"{settings.username}:{settings.password or ''}".encode()
            headers["Authorization"] = f"Basic {base64.b64encode(pair).decode()}"
        self.client = ApiClient(
            settings.base_url,
            headers,
            connect_timeout=settings.connect_timeout_seconds,
            read_timeout=settings.read_timeout_seconds,
        )

    def ref(self, event_type: str, resource_id: str, payload: Any) -> ResourceRef | None:
        if self.settings.resource_path:
            return ResourceRef(None, fill_path(self.settings.resource_path, resource=resource_id))
        return self.provider.resource_ref(event_type, resource_id, payload)

    def fetch(self, ref: ResourceRef) -> Fetched:
        url = api_url(self.settings.base_url, ref.url or ref.path or "")
        shown = url.split("?", 1)[0]
        answered: int | str = "error"  # for the metric: the status, or why there is none
        limit = self.settings.max_response_bytes
        try:
            with tracing.fetching(url) as traced:
                try:
                    answer = self.client.get(url, limit)
                except TooLarge as exc:
                    traced(exc.status)
                    raise
                traced(answer.status)
            answered = answer.status
        except TooLarge as exc:
            answered = exc.status
            raise ReconcileError(
                f"GET {shown}: the answer is larger than {limit} bytes", permanent=True, status=exc.status
            ) from None
        except FetchTimeout:
            answered = "timeout"
            raise ReconcileError(f"GET {shown} timed out") from None
        except FetchFailed as exc:
            answered = "error"
            raise ReconcileError(f"GET {shown} failed: {exc.kind}: {exc}") from None
        finally:
            worker_metrics.fetched(self.provider.name, answered)
        now = time.time()
        status, body = answer.status, answer.body
        if status in (404, 410):
            return Fetched(ref.type, None, True, now, status)
        said = f"GET {shown} answered {status}: {_snippet(body)}"
        if status in TRANSIENT_STATUSES:
            retry_after = parse_retry_after(answer.headers.get("retry-after"), now)
            raise ReconcileError(said, retry_after=retry_after, status=status)
        if not 200 <= status < 300:
            if 300 <= status < 400:
                said += " (redirects are not followed)"
            raise ReconcileError(said, permanent=True, status=status)
        try:
            state = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ReconcileError(
                f"GET {shown} answered {status} with a body that is not JSON", permanent=True, status=status
            ) from None
        deleted = self.provider.is_deleted(state)
        return Fetched(ref.type, state, deleted, now, status)

    def close(self) -> None:
        self.client.close()


class Reconciler:
    """Fetches resources for every provider that has ``api:`` configured."""

    def __init__(self, providers: Mapping[str, ProviderEntry]) -> None:
        self.providers = providers
        self.apis = {name: ProviderApi(entry, entry.api) for name, entry in providers.items() if entry.api}

    def fetch(self, provider: str, event_type: str, resource_id: str, payload: Any) -> Fetched:
        """The resource's current state, or only its type when no API is configured.

        Raises:
            ReconcileError: the state could not be fetched (``permanent`` if retrying is useless).
        """
        api = self.apis.get(provider)
        entry = self.providers.get(provider)
        try:
            if api is None:
                ref = entry.provider.resource_ref(event_type, resource_id, payload) if entry else None
                return Fetched(ref.type if ref else None)
            ref = api.ref(event_type, resource_id, payload)
            if ref is None:
                raise ReconcileError(
                    f"no API path is known for a {event_type} event: set api.resource_path", permanent=True
                )
            return api.fetch(ref)
        except UnsafeUrl as exc:
            raise ReconcileError(str(exc), permanent=True) from None

    def close(self) -> None:
        for api in self.apis.values():
            api.close()


def _snippet(body: bytes, limit: int = 300) -> str:
    text = body[:limit].decode("utf-8", "replace").replace("\n", " ").strip()
    return text + ("…" if len(body) > limit else "") if text else "(empty body)"
