"""Assembles a worker: store, broker, handler modules, the actor, recovery and leases.

Dramatiq's CLI imports :mod:`workers.main`, which calls :func:`build_worker_broker`.
"""

from __future__ import annotations

import dramatiq
from dramatiq.middleware import Retries, ShutdownNotifications, TimeLimit

from gateway.config import Config
from gateway.database import create_schema, create_store_engine
from gateway.queue import ACTOR_NAME, QUEUE_NAME, EventQueue, create_broker

from .leases import LeaseKeeper
from .lifecycle import EventLifecycle
from .ordering import ResourceStore
from .processing import Processor
from .reconcile import Reconciler
from .recovery import RecoverySweep
from .registry import HandlerRegistry, load_handler_modules, registry


class WorkerRuntime(dramatiq.Middleware):
    """Runs the recovery sweep and the lease keeper alongside each worker process."""

    def __init__(self, sweep: RecoverySweep, leases: LeaseKeeper, reconciler: Reconciler) -> None:
        self.sweep = sweep
        self.leases = leases
        self.reconciler = reconciler

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.leases.start()
        self.sweep.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.sweep.stop()
        self.leases.stop()
        self.reconciler.close()


def build_worker_broker(
    config: Config, database_url: str, redis_url: str, *, handlers: HandlerRegistry = registry
) -> dramatiq.Broker:
    """A broker with the ``hookgate.process_event`` actor declared, installed as Dramatiq's."""
    engine = create_store_engine(database_url, acknowledges=False)
    create_schema(engine)
    load_handler_modules(config.handlers)
    lifecycle = EventLifecycle(engine, config.workers)
    store = ResourceStore(engine, config.workers)
    leases = LeaseKeeper(lifecycle, store, config.workers)
    reconciler = Reconciler(config.providers)
    # Handler retries are scheduled in the store (see lifecycle.fail); Dramatiq retries nothing.
    broker = create_broker(redis_url, middleware=[TimeLimit(), ShutdownNotifications(), Retries(max_retries=0)])
    sweep = RecoverySweep(engine, EventQueue(broker), config.workers)
    broker.add_middleware(WorkerRuntime(sweep, leases, reconciler))
    dramatiq.set_broker(broker)
    budget = config.workers.handler_time_limit_seconds / 2
    processor = Processor(lifecycle, store, handlers, leases, reconciler, config.providers, pass_budget=budget)
    time_limit_ms = int(config.workers.handler_time_limit_seconds * 1000)
    dramatiq.actor(
        actor_name=ACTOR_NAME, queue_name=QUEUE_NAME, max_retries=0, time_limit=time_limit_ms, broker=broker
    )(processor.process)
    return broker
