"""The scoring service: answers one score request from the owner's local user state.

The request arrives over Kafka (the ``score`` agent) or HTTP (``POST /score``); the state comes
from the partition's store in :class:`streaming.partitions.OwnedPartitions`, the model from the
:class:`serving.scorer.ModelHolder` that the snapshot watcher swaps, and item categories from the
:class:`serving.scorer.ItemCatalog` the ingest service fills. A request for a partition this worker
does not hold now (a rebalance is moving it, or its state is being restored) is answered
``not_served``, never from an empty history.
"""

from __future__ import annotations

import time
from typing import Any

from serving.metrics import ScoringMetrics
from serving.requests import (
    NOT_SERVED,
    BadRequest,
    error_response,
    parse_request,
    request_id_of,
)
from serving.scorer import ItemCatalog, ModelHolder, Scorer
from streaming.partitions import OwnedPartitions


class ScoringService:
    def __init__(
        self, partitions: OwnedPartitions, catalog: ItemCatalog, metrics: ScoringMetrics
    ) -> None:
        self.partitions, self.metrics = partitions, metrics
        self.holder = ModelHolder()
        state_config = partitions.config.state
        self.scorer = Scorer(self.holder, catalog, state_config, metrics.drift)

    def answer(self, raw: bytes | None, partition: int | None, transport: str) -> dict[str, Any]:
        """Answer one score request from the owner's local state (never raises)."""
        started = time.perf_counter()
        try:
            req = parse_request(raw or b"")
        except BadRequest as err:
            self.metrics.requests.labels(transport=transport, outcome=err.code).inc()
            return error_response(request_id_of(raw or b""), err.code, err.detail)
        if partition is None or partition not in self.partitions.workers:
            answer = error_response(req.request_id, NOT_SERVED, _not_served(partition))
        else:
            answer = self.scorer.score(req, self.partitions.state(partition, req.user_id))
        outcome = answer["error"]["code"] if "error" in answer else "ok"
        self.metrics.requests.labels(transport=transport, outcome=outcome).inc()
        self.metrics.latency.labels(transport=transport).observe(time.perf_counter() - started)
        if req.sent_at is not None:
            self.metrics.request_to_answer.observe(max(0.0, time.time() - req.sent_at))
        return answer


def _not_served(partition: int | None) -> str:
    where = "no partition is known for the user" if partition is None else f"partition {partition}"
    return (
        f"{where}: not served by this worker now (a rebalance is moving it, or its state is being "
        "restored); ask again, the answer would otherwise come from an empty history"
    )
