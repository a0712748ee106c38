"""Provider types: how each sender signs, identifies and describes its webhooks.

Pure code: a raw body and headers in, a verified :class:`Delivery` or a rejection out. Adding a
provider is one module with a :class:`BaseProvider` subclass and one line in ``PROVIDER_TYPES``.
"""

from __future__ import annotations

from .base import BaseProvider, Clock, Delivery, Handshake, ProviderSettings
from .declarative import DeclarativeHmacProvider
from .errors import (
    DeliveryRejected,
    HookgateError,
    PayloadRejected,
    ProviderConfigError,
    SignatureRejected,
)
from .github import GitHubProvider
from .standard import StandardProvider
from .stripe import StripeProvider

#: Every built-in ``type:`` of providers.yaml.
PROVIDER_TYPES: dict[str, type[BaseProvider]] = {
    cls.type_name: cls for cls in (StripeProvider, GitHubProvider, StandardProvider, DeclarativeHmacProvider)
}

__all__ = [
    "PROVIDER_TYPES",
    "BaseProvider",
    "Clock",
    "Delivery",
    "DeliveryRejected",
    "Handshake",
    "HookgateError",
    "PayloadRejected",
    "ProviderConfigError",
    "ProviderSettings",
    "SignatureRejected",
]
