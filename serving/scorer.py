"""The scorer: a user's state and a request's candidates in, one score per candidate out.

:class:`ModelHolder` holds the serving snapshot (swapped atomically on reload),
:class:`ItemCatalog` remembers each item's category from the events, and :class:`Scorer` builds
the request sample from the state with the same code as training samples, scores it, explains
the most attended behaviours and feeds the attention to the drift monitor.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Protocol

import numpy as np
import torch

from feature_store import UserState, decode_samples, stable_ids
from feature_store.sample_format import SampleArrays
from feature_store.samples import request_sample
from feature_store.state import StateConfig
from models.batch import Batch
from serving.drift import AttentionDrift
from serving.requests import ScoreRequest, error_response


class ServingModel(Protocol):
    """What the scorer needs of a loaded snapshot (:class:`serving.loading.LoadedSnapshot`)."""

    version: int
    model: Any  # models.CTRModel in eval mode
    mapper: Any  # serving.features.FeatureMapper
    device: torch.device

    def batch(self, arrays: SampleArrays) -> Batch: ...


class InFlight:
    """How many requests are being scored now, on any thread. Background work beside the
    scorer (a delta being prepared: :class:`serving.gil_share.GilShare`) yields while any is.

    >>> requests = InFlight()
    >>> with requests.entered():
    ...     bool(requests)
    True
    >>> bool(requests)
    False
    """

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    @contextmanager
    def entered(self) -> Iterator[None]:
        with self._lock:
            self._count += 1
        try:
            yield
        finally:
            with self._lock:
                self._count -= 1

    def __bool__(self) -> bool:
        return self._count > 0


class ModelHolder:
    """The serving model; swapped atomically (one reference assignment) on reload. A delta
    (:mod:`serving.delta_follow`) replaces it with its twin, or changes it in place, while
    holding :attr:`lock`, which the scorer holds while it reads the model: a request sees one
    version, never half a delta."""

    def __init__(self) -> None:
        self._model: ServingModel | None = None
        self.lock = threading.Lock()
        self.requests = InFlight()  # the scorer's requests in flight

    @property
    def model(self) -> ServingModel | None:
        return self._model

    def replace(self, current: ServingModel, twin: ServingModel) -> None:
        """Serve ``twin`` (a copy of ``current`` with a delta written in) in place of
        ``current``; call under :attr:`lock`."""
        if self._model is not current:
            raise RuntimeError("the serving model changed under a delta")
        self._model = twin

    def swap(self, model: ServingModel) -> bool:
        """Serve ``model`` if it is newer than the current one; True when swapped."""
        with self.lock:
            if self._model is not None and model.version <= self._model.version:
                return False
            self._model = model
            return True


class ItemCatalog:
    """Item → category as last seen in events, bounded (oldest entries drop first)."""

    def __init__(self, capacity: int = 2_000_000) -> None:
        self.capacity = capacity
        self._map: OrderedDict[str, str] = OrderedDict()

    def learn(self, item: str, category: str) -> None:
        self._map[item] = category
        if len(self._map) > self.capacity:
            self._map.popitem(last=False)

    def categories(self, items: Sequence[str]) -> list[str]:
        return [self._map.get(i, "0") for i in items]


class Scorer:
    def __init__(
        self,
        holder: ModelHolder,
        catalog: ItemCatalog,
        state_config: StateConfig | None = None,
        drift: AttentionDrift | None = None,
    ) -> None:
        self.holder, self.catalog = holder, catalog
        self.state_config = state_config or StateConfig()
        self.drift = drift  # fed the attention of every scored request

    def score(self, req: ScoreRequest, state: UserState | None) -> dict[str, Any]:
        """Score one request against the user's state (None: unknown user, empty history)."""
        with self.holder.requests.entered():
            return self._score(req, state)

    def _score(self, req: ScoreRequest, state: UserState | None) -> dict[str, Any]:
        model = self.holder.model
        if model is None:
            return error_response(req.request_id, "no_model", "no snapshot has been loaded yet")
        state = state or UserState.empty(self.state_config)
        categories = req.categories or tuple(self.catalog.categories(req.items))
        blob = request_sample(
            state,
            user_id=req.user_id,
            ts=time.time(),
            items=req.items[:1],
            categories=categories[:1],
            recent_length=self.state_config.recent_length,
        )
        arrays = decode_samples([blob], recent_length=self.state_config.recent_length)
        with torch.inference_mode(), self.holder.lock:
            model = self.holder.model or model
            version = model.version
            batch = candidates_batch(model, arrays, req.items, categories)
            out = model.model(batch)
            if self.drift is not None and out.attention is not None:
                self.drift.observe(
                    model,
                    batch,
                    out.attention,
                    req.user_id,
                    rescore=lambda anchor, rows: attend(
                        anchor, arrays, [req.items[i] for i in rows], [categories[i] for i in rows]
                    ),
                )
            scores = torch.sigmoid(out.logits.float()).cpu().numpy()
        response: dict[str, Any] = {
            "request_id": req.request_id,
            "user_id": req.user_id,
            "items": list(req.items),
            "scores": [round(float(s), 6) for s in scores],
            "model_version": version,
            "history_length": int(arrays.hist_mask[0].sum()),
        }
        if req.explain:
            response["explanations"] = explain(arrays, out.attention, req.top)
        return response


def candidates_batch(
    model: ServingModel, arrays: SampleArrays, items: Sequence[str], categories: Sequence[str]
) -> Batch:
    """One user's history (mapped once, shared as stride-0 views) against every candidate."""
    one = model.batch(arrays)  # (1, ...) on the model's device
    n = len(items)
    item_rows = model.mapper.items.lookup(stable_ids(items)).to(model.device)
    category_rows = model.mapper.categories.lookup(stable_ids(categories)).to(model.device)
    return replace(
        one.expand_history(n),
        target_item=item_rows,
        target_category=category_rows,
        target_dense=one.target_dense.expand(n, -1),
        label=None,
        user=None if one.user is None else one.user.expand(n),
    )


def attend(
    model: ServingModel, arrays: SampleArrays, items: Sequence[str], categories: Sequence[str]
) -> tuple[Batch, torch.Tensor | None]:
    """``model``'s batch and attention for ``items`` (the drift's anchor model re-scoring a
    request's sampled candidates)."""
    batch = candidates_batch(model, arrays, items, categories)
    return batch, model.model(batch).attention


def explain(
    arrays: SampleArrays, attention: torch.Tensor | None, top: int
) -> list[list[dict[str, Any]]]:
    """Per candidate, the ``top`` most attended past behaviours (recent sequence or clusters)."""
    if attention is None:
        return []
    weights = attention.float().cpu().numpy()  # (B, S): every row shares row 0's history
    on_clusters = weights.shape[1] == arrays.cluster_item.shape[1] != arrays.hist_item.shape[1]
    items = (arrays.cluster_item if on_clusters else arrays.hist_item)[0]
    cats = (arrays.cluster_category if on_clusters else arrays.hist_category)[0]
    ts = None if on_clusters else arrays.hist_ts[0]
    where = "cluster" if on_clusters else "position"
    out = []
    for row in weights:
        order = np.argsort(-row, kind="stable")[:top]
        out.append([_behaviour(items, cats, ts, row, j, where) for j in order if row[j] > 0])
    return out


def _behaviour(
    items: np.ndarray, cats: np.ndarray, ts: np.ndarray | None, w: np.ndarray, j: int, where: str
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "item": int(items[j]),
        "category": int(cats[j]),
        "weight": round(float(w[j]), 6),
        where: int(j),
    }
    if ts is not None:
        out["ts"] = float(ts[j])
    return out
