"""Provider types: how each sender signs, identifies and describes its webhooks.

Pure code: a raw body and headers in, a verified :class:`Delivery` or a rejection out. Adding a
provider is one module in this package with a :class:`BaseProvider` subclass that sets
``type_name``: every module here is imported once and its types are collected into
``PROVIDER_TYPES``, so nothing else has to change.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from .base import BaseProvider, Clock, Delivery, Handshake, Inbound, ProviderSettings
from .errors import (
    DeliveryRejected,
    HookgateError,
    PayloadRejected,
    ProviderConfigError,
    SignatureRejected,
)

#: Modules of this package that hold shared code, not provider types.
_SHARED = frozenset({"api", "base", "errors", "payload"})


def _discover() -> dict[str, type[BaseProvider]]:
    found: dict[str, type[BaseProvider]] = {}
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name in _SHARED:
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseProvider) and cls.__module__ == module.__name__ and "type_name" in vars(cls):
                if cls.type_name in found:
                    raise ImportError(f"provider type {cls.type_name!r} is defined twice")
                found[cls.type_name] = cls
    return found


#: Every built-in ``type:`` of providers.yaml.
PROVIDER_TYPES: dict[str, type[BaseProvider]] = _discover()

__all__ = [
    "PROVIDER_TYPES",
    "BaseProvider",
    "Clock",
    "Delivery",
    "DeliveryRejected",
    "Handshake",
    "HookgateError",
    "Inbound",
    "PayloadRejected",
    "ProviderConfigError",
    "ProviderSettings",
    "SignatureRejected",
]
