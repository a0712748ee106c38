"""Example handler plugins, loaded by the quick start's providers.yaml.

A handler receives a verified, stored, deduplicated :class:`workers.Event`, one resource's
events in sequence order. If it raises, the event is retried with backoff; once it has succeeded
for an event it is not run again. With ``api:`` configured for the provider, ``event.resource``
is the provider's current state of the resource and ``event.previous`` the state stored before.
"""

from __future__ import annotations

import logging

from workers import Event, on

log = logging.getLogger("examples.handlers")


@on("stripe", "invoice.paid")
def activate_subscription(event: Event) -> None:
    # Prefer the reconciled state (api: configured) over the snapshot in the payload.
    invoice = event.resource or event.payload["data"]["object"]
    log.info("invoice %s is %s: activate the subscription", invoice.get("id"), invoice.get("status", "paid"))


@on("github", "issues.*")
def triage_issue(event: Event) -> None:
    issue = event.payload.get("issue", {})
    log.info("issue #%s %s: %s", issue.get("number"), event.type.split(".")[-1], issue.get("title"))


@on("clerk")
async def sync_user(event: Event) -> None:
    log.info("clerk %s for %s", event.type, event.resource_id)


@on("acme", include_superseded=True)
def acme_event(event: Event) -> None:
    if event.superseded:
        log.info("acme %s arrived after a newer version was applied; ignored", event.id)
        return
    log.info("acme %s (resource %s, version %s)", event.type, event.resource_id, event.sequence)
