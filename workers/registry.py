"""Handler plugins: ``@on(provider, pattern)`` and the lookup the workers do per event.

Patterns are an exact type (``invoice.paid``), a prefix wildcard (``issues.*``, which matches
``issues.opened`` but not ``issues``; ``orders/*`` for Shopify's topics), or omitted for every
event of the provider. A handler is
known by its ``module.qualname``; that name records, per event, that it already succeeded.
Stacked ``@on`` decorators register one function for several patterns: every registration counts,
and the function still runs at most once per event (its success is recorded once, by name).

A handler that declares a parameter named ``session`` receives a SQLModel session whose writes
commit in the same transaction as Hookgate's own record of the handler's success, the event's
status and the resource store: its rows and the bookkeeping succeed or fail together.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import inspect
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from providers.errors import HookgateError

from .event import Event

HandlerFunc = Callable[[Event], Any]
F = TypeVar("F", bound=HandlerFunc)


class HandlerRegistrationError(HookgateError):
    """Raised when a handler is registered twice or with an unusable pattern."""


@dataclass(frozen=True, slots=True)
class Handler:
    """One ``@on`` registration: the function, the events it matches, and how to call it."""

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
    """Every ``@on`` registration in order; one function registered several times is one handler."""

    def __init__(self) -> None:
        #: One entry per decorator, so stacked ``@on`` on one function keeps all its patterns.
        self._registrations: list[Handler] = []
        #: The function each name stands for: the name keys the per-event success record.
        self._funcs: dict[str, HandlerFunc] = {}

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
            if self._funcs.setdefault(name, func) is not func:
                raise HandlerRegistrationError(
                    f"[hookgate] a handler named {name} is already registered, by another function: "
                    "rename one of them (a handler's successes are recorded under its module.qualname)"
                )
            takes_session = "session" in inspect.signature(func).parameters
            self._registrations.append(Handler(name, provider, pattern, func, include_superseded, takes_session))
            return func

        return register

    def for_event(self, provider: str, event_type: str) -> list[Handler]:
        """Each matching function once, in the order of its first matching registration.

        A function whose several registrations match runs once (its success is recorded once,
        by name), and also for superseded events if any of those registrations includes them.
        """
        found: dict[str, Handler] = {}
        for handler in self._registrations:
            if not handler.matches(provider, event_type):
                continue
            first = found.setdefault(handler.name, handler)
            if handler.include_superseded and not first.include_superseded:
                found[handler.name] = dataclasses.replace(first, include_superseded=True)
        return list(found.values())


#: The registry ``@on`` fills; the workers read it.
registry = HandlerRegistry()
on = registry.on


def load_handler_modules(modules: Iterable[str]) -> None:
    """Import the configured handler modules so their ``@on`` decorators run."""
    for module in modules:
        importlib.import_module(module)


def import_problem(modules: Iterable[str]) -> str | None:
    """The first handler module that cannot be imported, as one line; ``None`` if all import.

    ``hookgate run`` calls this in a child process before it starts anything: the intake never
    imports handler modules, and a worker that cannot would only crash and restart forever.
    """
    for module in modules:
        try:
            load_handler_modules([module])
        except (Exception, SystemExit) as exc:
            # Where in the user's code it failed: the last frame outside importlib and this file.
            frames = [
                frame
                for frame in traceback.extract_tb(exc.__traceback__)
                if not frame.filename.startswith("<")
                and Path(frame.filename).parent != Path(importlib.__file__).parent
                and frame.filename != __file__
            ]
            where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
            return f"cannot import {module}: {type(exc).__name__}: {' '.join(str(exc).split())}{where}"
    return None
