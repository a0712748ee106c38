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

Handler modules are imported from the working directory, first on ``sys.path``, by
:func:`load_handler_modules` wherever they are imported (``hookgate check``, ``run``'s import check
and the workers), so a module one of them finds the others find too. A registration that can never
run (a provider that is not configured, a pattern its provider's types never take) is a
:class:`Finding`: ``hookgate check`` reports it and the workers log it when they start.
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import importlib
import inspect
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from providers.errors import HookgateError

from .event import Event

HandlerFunc = Callable[[Event], Any]
F = TypeVar("F", bound=HandlerFunc)
log = logging.getLogger("hookgate.handlers")

#: GitHub events whose payload always has an ``action``: their type is always ``<event>.<action>``
#: (see providers/github.py), so a pattern naming the bare event never matches.
GITHUB_EVENTS_WITH_ACTION = frozenset(
    {
        "check_run",
        "check_suite",
        "discussion",
        "discussion_comment",
        "installation",
        "installation_repositories",
        "issue_comment",
        "issues",
        "label",
        "member",
        "milestone",
        "pull_request",
        "pull_request_review",
        "pull_request_review_comment",
        "release",
        "repository",
        "star",
        "watch",
        "workflow_job",
        "workflow_run",
    }
)


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
    #: ``file:line`` of the ``@on``, for messages about the registration.
    where: str = ""

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
        caller = sys._getframe(1)
        where = f"{caller.f_code.co_filename}:{caller.f_lineno}"

        def register(func: F) -> F:
            name = f"{func.__module__}.{func.__qualname__}"
            if self._funcs.setdefault(name, func) is not func:
                raise HandlerRegistrationError(
                    f"[hookgate] a handler named {name} is already registered, by another function: "
                    "rename one of them (a handler's successes are recorded under its module.qualname)"
                )
            takes_session = "session" in inspect.signature(func).parameters
            self._registrations.append(Handler(name, provider, pattern, func, include_superseded, takes_session, where))
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

    def findings(self, provider_types: Mapping[str, str]) -> list[Finding]:
        """Registrations that can never run, given the configured providers and their types.

        A provider name close to a configured one is a typo and fatal to ``hookgate check``; one
        with no near match may be a shared module's provider this deployment does not configure,
        so it only warns, as does a pattern the provider's types never take.
        """
        found = []
        for handler in self._registrations:
            call = f"@on({handler.provider!r}, {handler.pattern!r})"
            if handler.provider not in provider_types:
                near = difflib.get_close_matches(handler.provider, list(provider_types), n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                found.append(
                    Finding(f"{call}: no provider {handler.provider!r} is configured{hint}", handler.where, bool(near))
                )
            elif why := never_matches(provider_types[handler.provider], handler.pattern):
                found.append(Finding(f"{call}: never matches: {why}", handler.where, False))
        return found


@dataclass(frozen=True, slots=True)
class Finding:
    """A handler module that cannot be imported, or a registration that can never run."""

    message: str
    #: ``file:line`` of the ``@on``; empty for an import failure (see ``module``).
    where: str = ""
    #: Whether ``hookgate check`` fails on it (else it warns).
    fatal: bool = True
    #: The ``handlers:`` entry that cannot be imported.
    module: str | None = None


def never_matches(type_name: str, pattern: str) -> str | None:
    """Why ``pattern`` never matches an event type of a provider of built-in type ``type_name``, or
    ``None`` when it may. Only what is certain about a type's event types is used: GitHub's are
    ``<event>`` or ``<event>.<action>`` (and ``ping`` is a handshake), Stripe's are dotted
    (``invoice.paid``), Shopify's topics have a slash (``orders/create``); other types are not judged.
    """
    if pattern == "*":
        return None
    if type_name == "github":
        if pattern == "ping":
            return "GitHub's ping is answered as a handshake and never reaches handlers"
        if "/" in pattern:
            return "GitHub's types are <event> or <event>.<action>, never with '/'"
        if pattern in GITHUB_EVENTS_WITH_ACTION:
            return (
                f"GitHub's {pattern} events always carry an action, so their type is {pattern}.<action>: "
                f"use {pattern + '.*'!r} for all of them"
            )
    if type_name == "stripe" and ("/" in pattern or "." not in pattern):
        return f"Stripe's types are dotted, e.g. invoice.paid{_instead(pattern, '/', '.')}"
    if type_name == "shopify" and "/" not in pattern:
        return f"Shopify's topics are <resource>/<event>, e.g. orders/create{_instead(pattern, '.', '/')}"
    return None


def _instead(pattern: str, wrong: str, right: str) -> str:
    return f": use {pattern.replace(wrong, right)!r}" if wrong in pattern else ""


#: The registry ``@on`` fills; the workers read it.
registry = HandlerRegistry()
on = registry.on


def handler_import_dir() -> str:
    """Where handler modules are imported from: the working directory, which Dramatiq's CLI puts
    first on ``sys.path`` (``--path .``) for the workers. ``hookgate check`` and ``run``'s import
    check run elsewhere (a console script, a child interpreter), so they get it from here too."""
    return os.getcwd()


def load_handler_modules(modules: Iterable[str]) -> None:
    """Import the configured handler modules so their ``@on`` decorators run, from
    :func:`handler_import_dir` first on ``sys.path`` as the workers do."""
    directory = handler_import_dir()
    if not sys.path or os.path.abspath(sys.path[0]) != directory:
        sys.path.insert(0, directory)
    for module in modules:
        importlib.import_module(module)


def import_problem(module: str) -> str | None:
    """Why ``module`` cannot be imported, in one line; ``None`` if it imports."""
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


def check_modules(
    modules: Iterable[str], provider_types: Mapping[str, str], handlers: HandlerRegistry = registry
) -> list[Finding]:
    """Import every handler module, then look at what they registered: every finding at once."""
    found = [Finding(problem, module=module) for module in modules if (problem := import_problem(module))]
    return found + handlers.findings(provider_types)


def print_findings(provider_types: str, *modules: str) -> None:
    """What ``hookgate check`` and ``run`` run in a short child process (the intake never imports
    handler modules): :func:`check_modules` on ``modules``, printed as one JSON line last."""
    found = check_modules(modules, json.loads(provider_types))
    print(json.dumps([dataclasses.asdict(finding) for finding in found]))


def warn_about_registrations(handlers: HandlerRegistry, provider_types: Mapping[str, str]) -> None:
    """Log each registration that can never run; the worker starts all the same."""
    for finding in handlers.findings(provider_types):
        log.warning("%s: %s", finding.where, finding.message)
