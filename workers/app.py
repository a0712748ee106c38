"""Assembles a worker: store, broker, handler modules, the actor, recovery and leases.

Dramatiq's CLI imports :mod:`workers.main`, which calls :func:`build_worker_broker`. The parts
that use the store are built when the worker boots, because only then is its thread count known:
the connection pool holds one connection per thread and one for the recovery sweep, so no thread
ever waits for a connection, and the lease keeper has a connection of its own.
"""

from __future__ import annotations

import logging
import os

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.middleware import Retries

from gateway import tracing
from gateway.config import Config
from gateway.database import create_store_engine
from gateway.heap import freeze_startup_heap
from gateway.logs import quiet_http_client_logs
from gateway.pausing import PausedProviders
from gateway.queue import ACTOR_NAME, QUEUE_NAME, EventQueue, create_broker
from gateway.schema import prepare_store

from .alerts import AlertLoop
from .calls import TimeLimiter
from .leases import LeaseKeeper
from .processing import Processor
from .pruning import PruneLoop
from .reconcile import Reconciler
from .recovery import RecoverySweep
from .registry import HandlerRegistry, load_handler_modules, registry, warn_about_registrations
from .replaying import ReplayJobs
from .shutdown import count_repeated_signals_once, stop_gracefully

log = logging.getLogger("hookgate.worker")

#: The exit code of a worker process whose every thread is stuck in a handler.
EXIT_ALL_STUCK = 75


def exit_all_stuck(count: int) -> None:
    """Every thread is blocked in a handler where no time limit reaches it: this process can do
    nothing more, and what it prefetched would wait for ever. Exit; the process manager (or
    ``hookgate run``) starts a fresh one, and the recovery sweep re-sends the prefetched events
    and takes over the stuck ones."""
    log.critical(
        "all %d worker threads are stuck in handlers past their time limit; exiting so that this "
        "process is restarted and its events are taken over (set timeouts on the handlers' own I/O)",
        count,
    )
    logging.shutdown()
    os._exit(EXIT_ALL_STUCK)


class WorkerRuntime(dramatiq.Middleware):
    """Builds the processor at boot, and runs the recovery sweep and the lease keeper beside it.

    Shutdown order matters: Dramatiq calls ``before_worker_shutdown`` *before* it waits for the
    running actors, so the lease keeper and the API clients, which those actors still need, stop
    only ``after_worker_shutdown``; the stop itself is :func:`workers.shutdown.stop_gracefully`.
    """

    def __init__(self, config: Config, database_url: str, handlers: HandlerRegistry) -> None:
        self.config = config
        self.database_url = database_url
        self.handlers = handlers
        self.processor: Processor | None = None
        self.sweep: RecoverySweep | None = None
        self.pruning: PruneLoop | None = None
        self.alerts: AlertLoop | None = None
        self.keeper: LeaseKeeper | None = None
        self.replays: ReplayJobs | None = None
        self.reconciler: Reconciler | None = None

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if isinstance(broker, RabbitmqBroker) and not os.getenv("dramatiq_queue_prefetch"):  # noqa: SIM112 (Dramatiq's name)
            # RabbitMQ pushes the next message as soon as one is acknowledged: a prefetch beyond
            # the threads (Dramatiq's default is twice as many) would only park messages behind
            # running handlers, where the recovery sweep cannot tell them from a stalled
            # worker's and sends them again, and where a SIGTERM cannot give them back.
            worker.queue_prefetch = worker.worker_threads
        settings = self.config.workers
        engine = create_store_engine(
            self.database_url, acknowledges=False, pool_size=worker.worker_threads + 1, max_overflow=2
        )
        keeper_engine = create_store_engine(self.database_url, acknowledges=False, pool_size=1, max_overflow=0)
        self.keeper = LeaseKeeper(keeper_engine, settings)
        self.reconciler = Reconciler(self.config.providers)
        limiter = TimeLimiter(
            settings.handler_time_limit_seconds, threads=worker.worker_threads, on_all_stuck=exit_all_stuck
        )
        paused = PausedProviders(engine)
        self.processor = Processor(
            engine,
            settings,
            self.handlers,
            self.reconciler,
            self.config.providers,
            self.keeper,
            limiter=limiter,
            paused=paused,
            threads=worker.worker_threads,
            spread_to=EventQueue(broker),
        )
        self.sweep = RecoverySweep(engine, EventQueue(broker), settings, paused=paused)
        self.pruning = PruneLoop(engine, self.config)
        self.replays = ReplayJobs(engine)
        self.alerts = AlertLoop(engine, self.config.alerts, settings.alert_interval_seconds)

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        count_repeated_signals_once()
        freeze_startup_heap()  # its threads share one GIL: a full collection stopped all of them
        for task in (self.keeper, self.sweep, self.pruning, self.replays, self.alerts):
            if task is not None:
                task.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        for task in (self.sweep, self.pruning, self.replays, self.alerts):
            if task is not None:
                task.stop()
        stop_gracefully(worker, self.processor, self.config.workers.stop_timeout_seconds)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self.keeper is not None:
            self.keeper.stop()
        if self.reconciler is not None:
            self.reconciler.close()
        tracing.shutdown()  # exports the spans still waiting

    def process(self, pks: int | list[int], token: str) -> None:
        """The ``hookgate.process_event`` actor."""
        assert self.processor is not None, "the worker has not booted"
        self.processor.process(pks, token)


def build_worker_broker(
    config: Config, database_url: str, broker_url: str, *, handlers: HandlerRegistry = registry
) -> dramatiq.Broker:
    """A broker with the ``hookgate.process_event`` actor declared, installed as Dramatiq's.

    Its queues are declared on the broker when the worker starts consuming (RabbitMQ: durable,
    with Dramatiq's delay and dead-letter queues beside them).
    """
    quiet_http_client_logs()  # Dramatiq's CLI set up logging before it imported workers.main
    schema_engine = create_store_engine(database_url, acknowledges=False)
    try:
        prepare_store(schema_engine, upgrade=False)
    finally:
        schema_engine.dispose()
    load_handler_modules(config.handlers)
    warn_about_registrations(handlers, config.provider_types)
    # Handler retries are scheduled in the store (see lifecycle.fail) and the time limit applies
    # per handler call (see workers.calls): Dramatiq retries nothing and limits no message.
    broker = create_broker(broker_url, middleware=[Retries(max_retries=0)])
    runtime = WorkerRuntime(config, database_url, handlers)
    broker.add_middleware(runtime)
    dramatiq.set_broker(broker)
    dramatiq.actor(actor_name=ACTOR_NAME, queue_name=QUEUE_NAME, max_retries=0, broker=broker)(runtime.process)
    return broker
