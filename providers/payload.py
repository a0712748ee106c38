"""Parsing and reading verified bodies.

Bodies are parsed only after their signature verified, from the exact bytes that were verified.
orjson (>= 3.9.15) refuses invalid UTF-8, NaN/Infinity and nesting deeper than 1024 levels with
an exception instead of a crash, which is what a receiver facing the internet needs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
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
    """Follow a dotted ``path`` (``data.object.id``) into nested objects; ``None`` if absent.

    Lenient, for reading stored payloads (``resource_ref``): it never raises. Verification uses
    :func:`checked_dig`, which refuses a body of the wrong shape.
    """
    value = payload
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def checked_dig(payload: Any, path: str) -> Any:
    """:func:`dig` for a body being verified: ``None`` if a step is absent (or null), but a step
    that is there and is not an object means the sender's body has a shape we do not understand.

    Raises:
        PayloadRejected: a step of ``path`` is present and is not an object.
    """
    value, seen = payload, ""
    for part in path.split("."):
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise PayloadRejected(f"{seen or 'body'} is not an object")
        value = value.get(part)
        seen = f"{seen}.{part}" if seen else part
    return value


def as_text(value: Any) -> str | None:
    """An id-like value as text (ids arrive as strings or numbers); ``None`` for anything else.

    Lenient, for reading stored payloads; verification uses :func:`checked_text`.
    """
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


#: C0 and C1 control characters and DEL: NUL is refused by PostgreSQL's text, and the others
#: rewrite logs and terminals (``\x1b`` and ``\x9b`` start escape sequences) where ids are shown.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def checked_text(value: Any, what: str) -> str | None:
    """An id, type or resource id from a verified body or header, as text: a string, or an
    integer (ids arrive as both); ``None`` when absent, null or empty.

    ``what`` names the value in the reason (``"event id"``), which the sender sees.

    Raises:
        PayloadRejected: the value is there but is not a string or an integer (a list, an
            object, a bool, a float), or it contains control characters.
    """
    if value is None or value == "":
        return None
    if isinstance(value, str):
        if _CONTROL.search(value):
            raise PayloadRejected(f"{what} contains control characters")
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise PayloadRejected(f"{what} is not a string or an integer")


def typed_id(kind: Any, object_id: Any) -> str | None:
    """A resource id written ``<kind>:<id>`` (``incident:PGR0VU2``), if both parts are there.

    Raises:
        PayloadRejected: a part is of the wrong type or contains control characters.
    """
    kind, object_id = checked_text(kind, "resource type"), checked_text(object_id, "resource id")
    return f"{kind}:{object_id}" if kind and object_id else None


#: What a sequence must fit: the store keeps it in a signed 64-bit (BIGINT) column.
SEQUENCE_MIN, SEQUENCE_MAX = -(2**63), 2**63 - 1
#: A decimal integer in ASCII (``str.isdigit`` also takes "²", which ``int()`` refuses).
_DECIMAL = re.compile("-?[0-9]+")
#: More significant digits than any 64-bit integer has: out of range without calling ``int()``,
#: which raises past 4300 digits and is quadratic before that.
_MAX_DIGITS = 19


def as_sequence(value: Any) -> int | None:
    """A sequence number from a version, a unix time or an ISO-8601 time (as milliseconds).

    ``None`` when absent, or for text that is neither a number nor a time this reads (a
    sender's own format is not worth a 400); a time without a zone is UTC, whatever the host's.

    Raises:
        PayloadRejected: a bool, a list or an object ("sequence is not a number or a time"), or a
            number outside the signed 64-bit range (NaN and infinities included): "sequence out
            of range". A sequence the store cannot keep, or that wrapped around, would order
            the resource's events wrongly; the sender is told instead.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PayloadRejected("sequence is not a number or a time")
    if isinstance(value, float):
        if not (SEQUENCE_MIN <= value < SEQUENCE_MAX + 1):  # exact comparisons; False for NaN
            raise PayloadRejected("sequence out of range")
        value = int(value)
    elif isinstance(value, str):
        if not _DECIMAL.fullmatch(value):
            return _milliseconds(value)
        if len(value.lstrip("-").lstrip("0")) > _MAX_DIGITS:
            raise PayloadRejected("sequence out of range")
        value = int(value)
    if not SEQUENCE_MIN <= value <= SEQUENCE_MAX:
        raise PayloadRejected("sequence out of range")
    return value


def _milliseconds(value: str) -> int | None:
    """An ISO-8601 time (or GitLab's ``2013-12-03 17:23:34 UTC``) as unix milliseconds."""
    try:
        moment = datetime.fromisoformat(value.removesuffix(" UTC") + ("+00:00" if value.endswith(" UTC") else ""))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)  # years 1 to 9999: always within range
