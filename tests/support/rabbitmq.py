"""RabbitMQ for the tests: the run's broker when ``$HOOKGATE_TEST_BROKER_URL`` is ``amqp://…``.

Give the tests a virtual host of their own (``amqp://guest:guest@127.0.0.1:5672/hookgate_test``):
each test deletes Hookgate's queues there. What AMQP cannot tell (the messages delivered to
consumers and not acknowledged) and what it cannot do (restart the broker) goes through
``rabbitmqctl``, which needs to run as root on the broker's host. Without a configured and reachable
RabbitMQ the tests that need one are skipped, with the reason; ``.ci/run`` sets
``$HOOKGATE_TEST_REQUIRE_RABBITMQ`` so that they fail there instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import unquote, urlsplit

import pika
import pika.exceptions
import pytest
from dramatiq.common import dq_name, xq_name

from gateway.queue import QUEUE_NAME
from gateway.rabbitmq import is_rabbitmq_url

REDIS_ONLY = "about Redis itself (its key layout, FLUSHALL, the embedded server): the run's broker is RabbitMQ"
#: rabbitmqctl's options for rows only: no banner, no table header.
QUIET = ("--quiet", "--no-table-headers")
NOT_CONFIGURED = (
    "needs RabbitMQ: set HOOKGATE_TEST_BROKER_URL=amqp://guest:guest@127.0.0.1:5672/<vhost> (.ci/run's third pass)"
)


def configured_url() -> str | None:
    """``$HOOKGATE_TEST_BROKER_URL`` if it names a RabbitMQ."""
    url = os.environ.get("HOOKGATE_TEST_BROKER_URL", "")
    return url if is_rabbitmq_url(url) else None


def _unavailable(reason: str) -> None:
    if os.environ.get("HOOKGATE_TEST_REQUIRE_RABBITMQ"):
        pytest.fail(f"RabbitMQ is required here (HOOKGATE_TEST_REQUIRE_RABBITMQ): {reason}")
    pytest.skip(reason)


def available_url() -> str:
    """The configured RabbitMQ's URL once it answers; else the test is skipped (or fails)."""
    url = configured_url()
    if url is None:
        _unavailable(NOT_CONFIGURED)
        raise AssertionError("unreachable")
    try:
        pika.BlockingConnection(pika.URLParameters(url)).close()
    except pika.exceptions.AMQPError as exc:
        _unavailable(f"RabbitMQ at {urlsplit(url).hostname}:{urlsplit(url).port} does not answer: {exc!r}")
    return url


def vhost(url: str) -> str:
    return unquote(urlsplit(url).path[1:]) or "/"


def delete_queues(url: str) -> None:
    """Delete Hookgate's queues (and Dramatiq's delay and dead-letter queues) of ``url``'s vhost."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        for name in (QUEUE_NAME, dq_name(QUEUE_NAME), xq_name(QUEUE_NAME)):
            channel.queue_delete(name)
    finally:
        connection.close()


def rabbitmqctl(*args: str) -> str:
    """Run ``rabbitmqctl``; the test is skipped (or fails) where it cannot run."""
    if shutil.which("rabbitmqctl") is None or os.geteuid() != 0:
        _unavailable("needs rabbitmqctl, as root, on the broker's host")
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"rabbitmqctl {' '.join(args)}: {done.stderr or done.stdout}"
    return done.stdout


def queue_counts(url: str, name: str = QUEUE_NAME) -> tuple[int, int]:
    """(ready, delivered to consumers and not acknowledged) for the queue ``name`` of ``url``."""
    out = rabbitmqctl("list_queues", *QUIET, "-p", vhost(url), "name", "messages_ready", "messages_unacknowledged")
    for line in out.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[0] == name:
            return int(fields[1]), int(fields[2])
    return 0, 0


def unacknowledged(url: str) -> int:
    return queue_counts(url)[1]


def durable_queues(url: str) -> dict[str, bool]:
    """Each queue of ``url``'s vhost and whether it is durable."""
    out = rabbitmqctl("list_queues", *QUIET, "-p", vhost(url), "name", "durable")
    return {name: durable == "true" for name, durable in (line.split() for line in out.splitlines() if line.strip())}


@contextmanager
def stopped(url: str) -> Iterator[None]:
    """RabbitMQ stopped (``rabbitmqctl stop_app``: every connection closed, the port refused)
    inside the block, started again after it, whatever happens."""
    rabbitmqctl("stop_app")
    try:
        yield
    finally:
        rabbitmqctl("start_app")
        deadline = time.monotonic() + 30
        while True:
            try:
                pika.BlockingConnection(pika.URLParameters(url)).close()
                break
            except pika.exceptions.AMQPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


@contextmanager
def policy(url: str, name: str, definition: str) -> Iterator[None]:
    """A policy on Hookgate's queue (e.g. a length limit) inside the block."""
    rabbitmqctl("set_policy", "-p", vhost(url), "--apply-to", "queues", name, f"^{QUEUE_NAME}$", definition)
    try:
        yield
    finally:
        rabbitmqctl("clear_policy", "-p", vhost(url), name)
