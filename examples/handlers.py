"""Example handler plugins, loaded by the quick start's providers.yaml.

A handler receives a verified, stored, deduplicated :class:`workers.Event`. If it raises, the
event is retried with backoff; once it has succeeded for an event it is not run again.
"""

from __future__ import annotations

import logging

from workers import Event, on

log = logging.getLogger("examples.handlers")


@on("stripe", "invoice.paid")
def activate_subscription(event: Event) -> None:
    invoice = event.payload["data"]["object"]
    log.info("invoice %s paid: activate the customer's subscription", invoice.get("id"))


@on("github", "issues.*")
def triage_issue(event: Event) -> None:
    issue = event.payload.get("issue", {})
    log.info("issue #%s %s: %s", issue.get("number"), event.type.split(".")[-1], issue.get("title"))


@on("clerk")
async def sync_user(event: Event) -> None:
    log.info("clerk %s for %s", event.type, event.resource_id)


@on("acme")
def acme_event(event: Event) -> None:
    log.info("acme %s (resource %s, version %s)", event.type, event.resource_id, event.sequence)
