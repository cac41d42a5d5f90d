"""Scoring requests: their schema, the serving model holder, and the scorer itself.

A request (topic ``score-requests``, key = user id, or ``POST /score``)::

    {"request_id": "r1", "user_id": "42", "items": ["1001", "1002"],
     "categories": ["7", "7"], "explain": true, "top": 10}

``categories`` is optional (the worker remembers each item's category from the events it has
seen; unknown → "0"). The answer carries one score per candidate, the snapshot version, and with
``explain`` the most attended past behaviours and their weights. Problems are answered, never
raised: ``{"request_id": ..., "error": {"code": ..., "detail": ...}}``.

>>> req = parse_request(b'{"request_id": "r", "user_id": 1, "items": [5, "6"]}')
>>> req.user_id, req.items, req.explain
('1', ('5', '6'), False)
>>> try:
...     parse_request(b'{"request_id": "r", "user_id": 1, "items": []}')
... except BadRequest as err:
...     print(err.code)
no_candidates
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import orjson
import torch

from feature_store import UserState, decode_samples, stable_ids
from feature_store.samples import SampleArrays, request_sample
from feature_store.state import StateConfig
from models.batch import Batch
from streaming.drift import AttentionDrift

MAX_CANDIDATES = 1_000
MAX_REQUEST_BYTES = 256 * 1024
MAX_EXPLAIN = 50


class BadRequest(ValueError):
    """A request that cannot be scored; ``code`` is a closed set, safe as a metric label."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code, self.detail = code, detail


@dataclass(frozen=True)
class ScoreRequest:
    request_id: str
    user_id: str
    items: tuple[str, ...]
    categories: tuple[str, ...] | None = None
    explain: bool = False
    top: int = 10
    sent_at: float | None = None

    def to_json(self) -> bytes:
        out: dict[str, Any] = {
            "request_id": self.request_id,
            "user_id": self.user_id,
            "items": list(self.items),
            "explain": self.explain,
            "top": self.top,
        }
        if self.categories is not None:
            out["categories"] = list(self.categories)
        if self.sent_at is not None:
            out["sent_at"] = self.sent_at
        return orjson.dumps(out)


def new_request_id() -> str:
    return uuid.uuid4().hex


def parse_request(raw: bytes) -> ScoreRequest:
    if len(raw) > MAX_REQUEST_BYTES:
        raise BadRequest("too_large", f"{len(raw)} bytes > {MAX_REQUEST_BYTES}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise BadRequest("bad_json", str(err)) from None
    if not isinstance(obj, dict):
        raise BadRequest("not_object", "a request is a JSON object")
    items = _ids(obj.get("items"), "items")
    categories = None if obj.get("categories") is None else _ids(obj["categories"], "categories")
    if categories is not None and len(categories) != len(items):
        raise BadRequest("wrong_type", "categories must have one entry per item")
    return ScoreRequest(
        request_id=_text(obj.get("request_id") or new_request_id(), "request_id"),
        user_id=_text(obj.get("user_id"), "user_id"),
        items=items,
        categories=categories,
        explain=_flag(obj.get("explain", False)),
        top=_top(obj.get("top", 10)),
        sent_at=_number(obj.get("sent_at")),
    )


def request_id_of(raw: bytes) -> str | None:
    """Best effort: the request id of a request that failed to parse (to answer it)."""
    try:
        obj = orjson.loads(raw[:MAX_REQUEST_BYTES])
    except orjson.JSONDecodeError:
        return None
    rid = obj.get("request_id") if isinstance(obj, dict) else None
    return rid if isinstance(rid, str) and len(rid) <= 128 else None


def _text(value: object, name: str) -> str:
    if value is None:
        raise BadRequest("missing_field", f"{name} is required")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadRequest("wrong_type", f"{name} must be a string or an integer")
    text = str(value)
    if not text or len(text) > 128:
        raise BadRequest("wrong_type", f"{name} must have 1..128 characters")
    return text


def _ids(value: object, name: str) -> tuple[str, ...]:
    if value is None:
        raise BadRequest("missing_field", f"{name} is required")
    if not isinstance(value, list):
        raise BadRequest("wrong_type", f"{name} must be a list")
    if not value:
        raise BadRequest("no_candidates", f"{name} is empty")
    if len(value) > MAX_CANDIDATES:
        raise BadRequest("too_many_candidates", f"{len(value)} > {MAX_CANDIDATES}")
    return tuple(_text(v, name) for v in value)


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise BadRequest("wrong_type", "explain must be true or false")
    return value


def _top(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_EXPLAIN:
        raise BadRequest("wrong_type", f"top must be an integer in 1..{MAX_EXPLAIN}")
    return value


def _number(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest("wrong_type", "sent_at must be a finite number")
    return float(value)


def error_response(request_id: str | None, code: str, detail: str) -> dict[str, Any]:
    return {"request_id": request_id, "error": {"code": code, "detail": detail}}


class ServingModel(Protocol):
    """What the scorer needs of a loaded snapshot (:class:`trainer.snapshot.LoadedSnapshot`)."""

    version: int
    model: Any  # models.CTRModel in eval mode
    mapper: Any  # trainer.features.FeatureMapper
    device: torch.device

    def batch(self, arrays: SampleArrays) -> Batch: ...


class ModelHolder:
    """The serving model; swapped atomically (one reference assignment) on reload."""

    def __init__(self) -> None:
        self._model: ServingModel | None = None
        self._lock = threading.Lock()

    @property
    def model(self) -> ServingModel | None:
        return self._model

    def swap(self, model: ServingModel) -> bool:
        """Serve ``model`` if it is newer than the current one; True when swapped."""
        with self._lock:
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
        with torch.inference_mode():
            batch = candidates_batch(model, arrays, req.items, categories)
            out = model.model(batch)
            if self.drift is not None and out.attention is not None:
                self.drift.observe(model, batch, out.attention)
        scores = torch.sigmoid(out.logits.float()).cpu().numpy()
        response: dict[str, Any] = {
            "request_id": req.request_id,
            "user_id": req.user_id,
            "items": list(req.items),
            "scores": [round(float(s), 6) for s in scores],
            "model_version": model.version,
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
