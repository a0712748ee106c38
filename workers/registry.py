"""Handler plugins: ``@on(provider, pattern)`` and the lookup the workers do per event.

Patterns are an exact type (``invoice.paid``), a prefix wildcard (``issues.*``, which matches
``issues.opened`` but not ``issues``; ``orders/*`` for Shopify's topics), or omitted for every
event of the provider. A handler is
known by its ``module.qualname``; that name records, per event, that it already succeeded.

A handler that declares a parameter named ``session`` receives a SQLModel session whose writes
commit in the same transaction as Hookgate's own record of the handler's success, the event's
status and the resource store: its rows and the bookkeeping succeed or fail together.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from providers.errors import HookgateError

from .event import Event

HandlerFunc = Callable[[Event], Any]
F = TypeVar("F", bound=HandlerFunc)


class HandlerRegistrationError(HookgateError):
    """Raised when a handler is registered twice or with an unusable pattern."""


@dataclass(frozen=True, slots=True)
class Handler:
    name: str
    provider: str
    pattern: str
    func: HandlerFunc
    #: Also run for events older than the resource's applied state (``event.superseded``).
    include_superseded: bool = False
    #: Takes a ``session`` argument that commits with the event.
    takes_session: bool = False

    def matches(self, provider: str, event_type: str) -> bool:
        if provider != self.provider:
            return False
        if self.pattern == "*":
            return True
        if self.pattern.endswith((".*", "/*")):
            return event_type.startswith(self.pattern[:-1])
        return event_type == self.pattern

    def __call__(self, event: Event, session: Any = None) -> None:
        result = self.func(event, session=session) if self.takes_session else self.func(event)  # type: ignore[call-arg]
        if inspect.isawaitable(result):
            asyncio.run(_await(result))


async def _await(awaitable: Any) -> None:
    await awaitable


class HandlerRegistry:
    """Handlers by name, in registration order."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def on(self, provider: str, pattern: str = "*", *, include_superseded: bool = False) -> Callable[[F], F]:
        """Register the decorated function for ``provider`` events matching ``pattern``.

        With ``include_superseded=True`` it also receives events that arrived after a newer
        one of the same resource was applied, with ``event.superseded`` set.
        """
        if not provider or not isinstance(provider, str):
            raise HandlerRegistrationError("[hookgate] on() needs a provider name, e.g. @on('stripe')")
        if "*" in pattern.removesuffix("*") or (
            pattern.endswith("*") and pattern != "*" and not pattern.endswith((".*", "/*"))
        ):
            raise HandlerRegistrationError(
                f"[hookgate] pattern {pattern!r}: use an exact type, 'prefix.*', or no pattern for every event"
            )

        def register(func: F) -> F:
            name = f"{func.__module__}.{func.__qualname__}"
            existing = self._handlers.get(name)
            if existing is not None and existing.func is not func:
                raise HandlerRegistrationError(f"[hookgate] a handler named {name} is already registered")
            takes_session = "session" in inspect.signature(func).parameters
            self._handlers[name] = Handler(name, provider, pattern, func, include_superseded, takes_session)
            return func

        return register

    def for_event(self, provider: str, event_type: str) -> list[Handler]:
        return [h for h in self._handlers.values() if h.matches(provider, event_type)]


#: The registry ``@on`` fills; the workers read it.
registry = HandlerRegistry()
on = registry.on


def load_handler_modules(modules: Iterable[str]) -> None:
    """Import the configured handler modules so their ``@on`` decorators run."""
    for module in modules:
        importlib.import_module(module)
