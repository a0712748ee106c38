"""A provider's API, as configured under ``api:``, and the one rule for every outbound URL.

Reconciliation fetches a resource's current state from the provider. Payloads are full of URLs
(GitHub's ``*_url`` fields, Stripe's ``related_object.url``), and a receiver that follows them
can be aimed at Redis on localhost or a cloud metadata address. So every URL the workers fetch
goes through :func:`api_url`: a path is joined to the configured ``base_url``, and an absolute
URL is accepted only if its scheme, host and port equal the base's and its path lies under the
base's path.

Paths are also read the way a lenient server might read them: a segment that decodes (once,
twice) to ``.`` or ``..``, or to anything with a slash or a backslash, and any control character,
would let a payload walk out of the base path on a server that decodes ``%2e%2e`` or ``%2f``, or
treats ``\\`` as ``/``; such URLs are refused. Ids put into paths are percent-encoded as one
segment each, and refused by the same rule.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, quote, unquote, urlsplit

from .errors import HookgateError


class UnsafeUrl(HookgateError):
    """A URL that points outside the configured API, or an id that would change the path."""


@dataclass(frozen=True, slots=True)
class ResourceRef:
    """Where a resource's current state is fetched: a ``path`` under the API's base URL, or an
    absolute ``url`` taken from the payload (checked against the base before any request)."""

    type: str | None
    path: str | None = None
    url: str | None = None


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """The ``api:`` section of a provider (reconciliation)."""

    base_url: str
    token: str | None = None
    username: str | None = None
    password: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    #: ``/v1/things/{resource}``: fetch this path for every event (any type may set it).
    resource_path: str | None = None
    connect_timeout_seconds: float = 5.0
    read_timeout_seconds: float = 10.0
    max_response_bytes: int = 5 * 1024 * 1024

    KEYS = (
        "base_url",
        "token",
        "basic",
        "headers",
        "resource_path",
        "connect_timeout_seconds",
        "read_timeout_seconds",
        "max_response_bytes",
    )

    @classmethod
    def parse(
        cls, raw: Mapping[str, Any], default_base_url: str | None
    ) -> tuple[ApiSettings | None, list[tuple[str, str]]]:
        """Validate an ``api:`` mapping; returns the settings (or ``None``) and ``(field, problem)`` pairs."""
        problems = [(f"api.{key}", "unknown key") for key in raw if key not in cls.KEYS]
        base_url = raw.get("base_url", default_base_url)
        if not isinstance(base_url, str) or not base_url:
            problems.append(("api.base_url", "required: the provider API's base URL, e.g. https://api.example.com"))
        else:
            parts = urlsplit(base_url)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
                problems.append(("api.base_url", "must be an http(s) URL with a host and no query"))
        token = raw.get("token")
        if token is not None and (not isinstance(token, str) or not token):
            problems.append(("api.token", "must be a non-empty string"))
        basic = raw.get("basic") or {}
        if not isinstance(basic, Mapping) or (basic and not {"username", "password"} <= set(basic)):
            problems.append(("api.basic", "must be {username: ..., password: ...}"))
            basic = {}
        if token and basic:
            problems.append(("api", "give either token or basic, not both"))
        headers = raw.get("headers") or {}
        if not isinstance(headers, Mapping) or not all(isinstance(v, str) for v in headers.values()):
            problems.append(("api.headers", "must map header names to strings"))
            headers = {}
        resource_path = raw.get("resource_path")
        if resource_path is not None and (
            not isinstance(resource_path, str) or not resource_path.startswith("/") or "{resource}" not in resource_path
        ):
            problems.append(("api.resource_path", "must be a path containing {resource}, e.g. /v1/things/{resource}"))
        numbers: dict[str, Any] = {}
        for key in ("connect_timeout_seconds", "read_timeout_seconds", "max_response_bytes"):
            if key in raw:
                value = raw[key]
                if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                    problems.append((f"api.{key}", "must be a number > 0"))
                else:
                    numbers[key] = int(value) if key == "max_response_bytes" else float(value)
        if problems:
            return None, problems
        settings = cls(
            base_url=str(base_url).rstrip("/"),
            token=token,
            username=basic.get("username"),
            password=basic.get("password"),
            headers=dict(headers),
            resource_path=resource_path,
            **numbers,
        )
        return settings, []


#: Control characters (C0, DEL, C1): never part of a URL a provider's API gives out.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
#: How many times a segment is decoded when looking for a disguised ``..`` or slash.
_DECODINGS = 3


def unsafe_segment(segment: str) -> bool:
    """Whether one path segment, as written or decoded up to three times, is empty-ish (``.``,
    ``..``), holds a slash or a backslash, or a control character: what some server between us and
    the API could read as a step out of the path. A segment still encoded after three decodings
    is refused too (no API needs that)."""
    for _ in range(_DECODINGS):
        if segment in (".", "..") or "/" in segment or "\\" in segment or _CONTROL.search(segment):
            return True
        decoded = unquote(segment)
        if decoded == segment:
            return False
        segment = decoded
    return True


def fill_path(template: str, **values: str) -> str:
    """``template`` with each ``{name}`` replaced by its value, percent-encoded as one segment.

    Raises:
        UnsafeUrl: a value is empty or would change the path's shape (see :func:`unsafe_segment`).
    """
    path = template
    for name, value in values.items():
        if not value or unsafe_segment(value):
            raise UnsafeUrl(f"refused to put {value[:100]!r} into an API path")
        path = path.replace("{" + name + "}", quote(value, safe=""))
    return path


def collection_ref(
    resource_id: str, collections: Mapping[str, str], template: str = "/{collection}/{id}"
) -> ResourceRef | None:
    """For a resource id written ``<kind>:<id>``: ``template`` with the kind's collection and the
    id; ``None`` for a kind with no collection."""
    kind, _, object_id = resource_id.partition(":")
    collection = collections.get(kind)
    if collection is None or not object_id:
        return None
    return ResourceRef(kind, fill_path(template.replace("{collection}", collection), id=object_id))


def api_url(base_url: str, target: str) -> str:
    """The absolute URL of ``target`` under ``base_url``: a path is appended to the base; an
    absolute URL (from a payload) must already lie under it.

    Raises:
        UnsafeUrl: ``target`` cannot be parsed, points at another scheme, host or port, or outside
            the base path, or has a path segment that could be read as one (see
            :func:`unsafe_segment`).
    """
    base = urlsplit(base_url)
    if target.startswith("/") and not target.startswith("//"):
        target = base_url.rstrip("/") + target
    parts = _split(target)
    if parts is None:
        raise UnsafeUrl(f"refused to fetch {_shown(target)}: it is not a valid URL")
    same_origin = (parts.scheme, parts.hostname, parts.port or _default_port(parts.scheme)) == (
        base.scheme,
        base.hostname,
        base.port or _default_port(base.scheme),
    )
    if not same_origin or parts.username or parts.password:
        raise UnsafeUrl(f"refused to fetch {_shown(target)}: it is not on the configured API host {base.netloc}")
    # urlsplit drops tabs and newlines from what it returns: look at the text as it will be sent.
    segments = parts.path.split("/")[1:]
    if (
        _CONTROL.search(target)
        or "\\" in target
        or any(unsafe_segment(segment) for segment in segments if segment)
        or not (parts.path + "/").startswith(base.path.rstrip("/") + "/")
    ):
        raise UnsafeUrl(f"refused to fetch {_shown(target)}: it is outside the configured API path {base.path or '/'}")
    return target


def _split(url: str) -> SplitResult | None:
    """``url`` split, its port checked; ``None`` if either raises (``[`` in the host, port 99999)."""
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        return None
    return parts


def _default_port(scheme: str) -> int | None:
    return {"http": 80, "https": 443}.get(scheme)


def _shown(url: str) -> str:
    """A URL as it may appear in ``last_error``: without credentials or query, control characters
    escaped, and short."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(a URL that cannot be parsed)"
    host = parts.hostname or ""
    shown = f"{parts.scheme}://{host}{':' + str(parts.port) if _port_or_none(parts) else ''}{parts.path}"
    return _CONTROL.sub(lambda match: repr(match.group())[1:-1], shown[:200])


def _port_or_none(parts: Any) -> int | None:
    try:
        return parts.port
    except ValueError:
        return None
