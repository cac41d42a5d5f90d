"""The worker process: :func:`build_worker` wires the services, agents and views onto one app,
and :class:`Worker` runs it.

One :class:`streaming.partitions.OwnedPartitions` holds the per-partition stores; the ingest
service writes them, the scoring service reads them, and the item catalog learnt from events
serves both. Each agent has a sink of its own (:mod:`streaming.sink`): the ingest service's
flushes wait for every record it sent and fail on one the broker refused; the score agent's
answers are best effort and never hold up or fail an ingest flush. Each agent has a
:class:`streaming.routing.Router` over its sink for the records that arrive outside their user's
partition. Every metric goes to one registry (the default one unless ``metrics`` says). One
:class:`streaming.failstop.FailStop` stops the worker when a batch's state cannot be written or
its records cannot be delivered, and :class:`Worker` then exits with ``EXIT_STATUS``.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import faust

from contracts.settings import Settings
from serving.item_embeddings import ClusterMetrics, LiveItemEmbeddings
from serving.metrics import ScoringMetrics
from serving.scorer import ItemCatalog
from streaming.agents.ingest import add_ingest_agent, add_rebalance_hooks
from streaming.agents.score import add_score_agent, requests_topic
from streaming.app import create_app
from streaming.failstop import EXIT_STATUS, FailStop, FailStopped
from streaming.gauges import WorkerGauges
from streaming.ingest import IngestService
from streaming.metrics import IngestMetrics
from streaming.partitions import OwnedPartitions
from streaming.routing import Router
from streaming.scoring import ScoringService
from streaming.sink import BestEffortSink, FaustSink, Sink
from streaming.views import add_views

GC_YOUNG_THRESHOLD = 20_000  # allocations between young collections (Python's default: 700)
STOP_DEADLINE_S = 30.0  # a fail-stopped worker that has not stopped by then exits at once


def build_worker(
    settings: Settings,
    state_dir: str | Path,
    http_port: int | None = None,
    metrics: IngestMetrics | None = None,
) -> tuple[faust.App, ScoringService]:
    """The app with both agents, the timer, the rebalance hooks and (with ``http_port``) the
    views; and the scoring service, whose model holder the snapshot watcher swaps."""
    metrics = metrics or IngestMetrics.create()
    app = create_app(settings, http_port=http_port, datadir=Path(state_dir) / "faust")
    ingest_sink, score_sink = FaustSink(app), BestEffortSink(app)
    partitions = OwnedPartitions(settings, state_dir, metrics)
    catalog = ItemCatalog()

    def router(agent: str, sink: Sink) -> Router:
        return Router(sink, settings.topics.events_partitions, metrics.routed.labels(agent=agent))

    ingest = IngestService(
        settings, ingest_sink, partitions, catalog, metrics, router("ingest", ingest_sink)
    )
    scoring = ScoringService(partitions, catalog, ScoringMetrics.create(metrics.registry))
    partitions.embedder = LiveItemEmbeddings(scoring.holder)  # by category until a snapshot
    ingest.cluster_metrics = ClusterMetrics(metrics.registry)
    fail_stop = FailStop(app, metrics)
    add_ingest_agent(app, settings, ingest, WorkerGauges(settings, partitions, metrics), fail_stop)
    requests = requests_topic(app, settings)
    add_score_agent(app, requests, settings, scoring, score_sink, router("score", score_sink))
    if http_port is not None:
        add_views(app, requests, scoring, partitions, fail_stop)
    add_rebalance_hooks(app, settings, partitions, fail_stop)
    return app, scoring


class Worker(faust.Worker):
    """``faust.Worker`` without its terminal spinner, with the collector tuned for streaming.

    At a log level of ``warn`` or above the spinner turns on for every log record: Faust sets
    the root logger to DEBUG and adds a handler that spins per record, so each debug call in
    aiokafka and Faust (one per produced message) builds and handles a record. Without it the
    root logger keeps the requested level and those calls return at once.

    Faust allocates several objects per message, so Python's collector ran young collections
    every 700 allocations and a full one every few seconds over everything imported (torch,
    Faust): pauses of 150-200 ms in the ingest worker at 2,000 events/s. The objects that exist
    when the worker starts are frozen out of collections and young collections run every
    ``GC_YOUNG_THRESHOLD`` allocations: no pause over 50 ms in a run of the same load.

    A worker that fail-stopped (the app crashed with :class:`streaming.failstop.FailStopped`)
    exits with ``EXIT_STATUS`` and says why on stderr; if its shutdown has not ended within
    ``STOP_DEADLINE_S``, the process exits with that status at once. Once its app has stopped it
    exits without the interpreter's teardown (``os._exit``), as after a kill: what its stores hold
    is in their write-ahead logs, and the teardown, which destroyed the open RocksDB stores
    while their threads still ran, ended one fail-stopped worker in four with SIGSEGV instead.
    A worker that stops normally runs ``on_stopped`` once its app has stopped (the snapshot
    watcher's thread joined, the stores closed) for the same reason: a SIGTERM-stopped worker
    had ended with SIGSEGV in the interpreter's teardown too.
    """

    def __init__(
        self,
        *services: Any,
        on_stopped: Sequence[Callable[[], None]] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(*services, **kwargs)
        self.on_stopped = on_stopped  # run once the app has stopped, before a normal exit

    def execute_from_commandline(self) -> NoReturn:
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)
        try:
            super().execute_from_commandline()
        except SystemExit:
            fault = self.crash_reason
            if not isinstance(fault, FailStopped):
                for stopped in self.on_stopped:  # threads and stores closed before teardown
                    stopped()
                raise
            print(f"twinstream worker: fail-stop ({fault}), exit {EXIT_STATUS}", file=sys.stderr)
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_STATUS)  # no teardown: see the class docstring

    def on_worker_shutdown(self) -> None:
        super().on_worker_shutdown()
        if isinstance(self.crash_reason, FailStopped):
            deadline = threading.Timer(STOP_DEADLINE_S, os._exit, args=(EXIT_STATUS,))
            deadline.daemon = True
            deadline.start()

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None
        super().on_setup_root_logger(logger, level)
