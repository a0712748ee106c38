"""Parsing and reading verified bodies.

Bodies are parsed only after their signature verified, from the exact bytes that were verified.
orjson (>= 3.9.15) refuses invalid UTF-8, NaN/Infinity and nesting deeper than 1024 levels with
an exception instead of a crash, which is what a receiver facing the internet needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson

from .errors import PayloadRejected

FORM = "application/x-www-form-urlencoded"


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Parse ``body`` as a JSON object.

    Raises:
        PayloadRejected: the body is not UTF-8 JSON, is nested too deeply, or is not an object.
    """
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise PayloadRejected("body is not valid JSON") from None
    if not isinstance(value, dict):
        raise PayloadRejected("body is not a JSON object")
    return value


def parse_json_array(body: bytes) -> list[dict[str, Any]]:
    """Parse ``body`` as a non-empty JSON array of objects (a sender's batch of events).

    Raises:
        PayloadRejected: the body is not JSON, or not such an array.
    """
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise PayloadRejected("body is not valid JSON") from None
    if not isinstance(value, list) or not value or not all(isinstance(item, dict) for item in value):
        raise PayloadRejected("body is not a non-empty JSON array of events")
    return value


def parse_form(body: bytes) -> list[tuple[str, str]]:
    """The fields of an ``application/x-www-form-urlencoded`` body, in order, repeats kept.

    Raises:
        PayloadRejected: the body is not UTF-8 or not a form.
    """
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError):
        raise PayloadRejected("body is not a valid form") from None


def is_form(headers: Mapping[str, str]) -> bool:
    return headers.get("content-type", "").split(";")[0].strip().lower() == FORM


def dig(payload: Any, path: str) -> Any:
    """Follow a dotted ``path`` (``data.object.id``) into nested objects; ``None`` if absent."""
    value = payload
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def as_text(value: Any) -> str | None:
    """An id-like value as text (ids arrive as strings or numbers); ``None`` for anything else."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def typed_id(kind: Any, object_id: Any) -> str | None:
    """A resource id written ``<kind>:<id>`` (``incident:PGR0VU2``), if both parts are there."""
    kind, object_id = as_text(kind), as_text(object_id)
    return f"{kind}:{object_id}" if kind and object_id else None


def as_sequence(value: Any) -> int | None:
    """A sequence number from a version, a unix time or an ISO-8601 time (as milliseconds)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, str):
        if value.lstrip("-").isdigit():
            return int(value)
        try:
            # GitLab writes "2013-12-03 17:23:34 UTC"; everyone else ISO 8601.
            moment = datetime.fromisoformat(value.removesuffix(" UTC") + ("+00:00" if value.endswith(" UTC") else ""))
        except ValueError:
            return None
        return int(moment.timestamp() * 1000)
    return None
