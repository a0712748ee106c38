"""Building providers with a frozen clock, and case-insensitive headers like the intake's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from starlette.datastructures import Headers

from providers import PROVIDER_TYPES, BaseProvider, Delivery, DeliveryRejected, Inbound, ProviderSettings

NOW = 1_700_000_000


def make(type_name: str, *secrets: str, now: float = NOW, **options: Any) -> BaseProvider:
    settings = ProviderSettings(name=type_name, type=type_name, secrets=secrets, options=options)
    return PROVIDER_TYPES[type_name](settings, clock=lambda: now)


def verify(
    provider: BaseProvider, body: bytes, headers: Mapping[str, str], url: str = "", method: str = "POST"
) -> Delivery:
    """What the intake does: the request as the provider type sees it."""
    return provider.verify_request(Inbound(body, Headers(headers=dict(headers)), url, method))


def rejected(
    provider: BaseProvider, body: bytes, headers: Mapping[str, str], url: str = "", method: str = "POST"
) -> DeliveryRejected:
    with pytest.raises(DeliveryRejected) as info:
        verify(provider, body, headers, url, method)
    return info.value
