"""``@on`` registrations: stacked decorators, one run per function, and name clashes."""

from __future__ import annotations

import pytest

from workers.event import Event
from workers.registry import HandlerRegistrationError, HandlerRegistry


def names(registry: HandlerRegistry, provider: str, event_type: str) -> list[str]:
    return [h.name.rsplit(".", 1)[-1] for h in registry.for_event(provider, event_type)]


def test_stacked_decorators_both_register() -> None:
    registry = HandlerRegistry()

    @registry.on("github", "issues.*")
    @registry.on("github", "pull_request.*")
    def triage(event: Event) -> None: ...

    assert names(registry, "github", "pull_request.opened") == ["triage"]
    assert names(registry, "github", "issues.opened") == ["triage"]
    assert names(registry, "github", "push") == []


def test_a_function_matching_several_of_its_patterns_runs_once_in_registration_order() -> None:
    registry = HandlerRegistry()

    @registry.on("github", "issues.opened")
    def first(event: Event) -> None: ...

    @registry.on("github")
    @registry.on("github", "issues.*")
    def second(event: Event) -> None: ...

    @registry.on("github", "issues.*")
    def third(event: Event) -> None: ...

    assert names(registry, "github", "issues.opened") == ["first", "second", "third"]
    assert names(registry, "github", "issues.closed") == ["second", "third"]
    assert names(registry, "github", "push") == ["second"]


def test_include_superseded_if_any_matching_registration_asks_for_it() -> None:
    registry = HandlerRegistry()

    @registry.on("acme", "thing.updated", include_superseded=True)
    @registry.on("acme", "thing.*")
    def audit(event: Event) -> None: ...

    (updated,) = registry.for_event("acme", "thing.updated")
    (created,) = registry.for_event("acme", "thing.created")
    assert updated.include_superseded
    assert not created.include_superseded


def test_a_different_function_with_the_same_name_is_an_error() -> None:
    registry = HandlerRegistry()

    def make() -> object:
        def handler(event: Event) -> None: ...

        return handler

    one, two = make(), make()
    registry.on("stripe")(one)  # type: ignore[arg-type]
    with pytest.raises(
        HandlerRegistrationError, match=r"a handler named .*make\.<locals>\.handler is already"
    ) as raised:
        registry.on("stripe", "invoice.paid")(two)  # type: ignore[arg-type]
    assert "rename" in str(raised.value)  # the hint: what to do about it
    assert [h.func for h in registry.for_event("stripe", "invoice.paid")] == [one]
