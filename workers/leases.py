"""Keeps the leases this worker process holds alive while it works."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from gateway.config import WorkerSettings

from .lifecycle import EventLifecycle
from .ordering import ResourceKey, ResourceStore
from .periodic import Periodic

K = TypeVar("K")


class _Held(Generic[K]):
    """What this process holds: key → token, safe to read from the renewing thread."""

    def __init__(self) -> None:
        self._held: dict[K, str] = {}
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, key: K, token: str) -> Iterator[None]:
        with self._lock:
            self._held[key] = token
        try:
            yield
        finally:
            with self._lock:
                self._held.pop(key, None)

    def items(self) -> list[tuple[K, str]]:
        with self._lock:
            return list(self._held.items())


class LeaseKeeper(Periodic):
    """Renews, every third of a lease, the leases of the events and resources being worked on."""

    name = "hookgate-leases"

    def __init__(self, lifecycle: EventLifecycle, store: ResourceStore, settings: WorkerSettings) -> None:
        super().__init__(settings.lease_seconds / 3)
        self.lifecycle = lifecycle
        self.store = store
        self.events: _Held[int] = _Held()
        self.resources: _Held[ResourceKey] = _Held()

    def tick(self) -> None:
        if held_events := self.events.items():
            self.lifecycle.renew(held_events)
        if held_resources := self.resources.items():
            self.store.renew(held_resources)
