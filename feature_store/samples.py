"""Training samples as of just before an event, and scoring requests in the same form.

Implicit mode: every behaviour in ``positive_types`` is a positive; K negatives are drawn in
proportion to item frequency (:class:`feature_store.negatives.FrequencySampler`), excluding the
user's whole lifelong log and the target. Negatives carry the positive event's dense features, so a
feature never reveals the label. Explicit mode: an impression becomes a pending sample
(:class:`feature_store.delayed_labels.PendingImpressions`), labelled 1 when a click on the same
(user, item[, request_id]) follows within the attribution window, and 0 when the window closes.
Both write sample messages (:mod:`feature_store.sample_format`).

>>> from contracts.schema import Event
>>> from feature_store.sample_format import decode_samples
>>> builder = SampleBuilder(SampleConfig(negatives=0), StateConfig())
>>> state = UserState.empty(StateConfig())
>>> blobs = builder.samples_for(state, Event("u", "7", EventType.CLICK, 1e9, "3"))
>>> decode_samples(blobs).target_item.tolist(), decode_samples(blobs).label.tolist()
([7], [1.0])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from contracts.schema import Event, EventType
from contracts.settings import RECENT_LENGTH
from feature_store.batch_negatives import SHORT_HISTORY, BatchNegatives
from feature_store.delayed_labels import PendingImpressions
from feature_store.ids import stable_id
from feature_store.item_index import ItemIndex
from feature_store.negatives import FrequencySampler, event_key
from feature_store.sample_format import (
    F32,
    I64,
    PackedHistory,
    empty_history,
    encode_sample,
    make_targets,
    pack_history,
    pack_sample,
    target_dtype,
    targets_struct,
)
from feature_store.state import StateConfig, UserState
from feature_store.state_format import TYPE_CODES


@dataclass(frozen=True)
class SampleConfig:
    """How samples are made (ARCHITECTURE.md section 4)."""

    mode: Literal["implicit", "explicit"] = "implicit"
    negatives: int = 2  # K
    recent_length: int = RECENT_LENGTH  # L
    attribution_window_s: float = 30 * 60
    positive_types: frozenset[EventType] = frozenset(
        {EventType.CLICK, EventType.CART, EventType.FAV, EventType.BUY}
    )
    attribution_types: frozenset[EventType] = frozenset({EventType.CLICK})
    seed: int = 0
    narrow_ids: bool = False  # long histories in narrow rows when ids fit (sample_narrow)

    def __post_init__(self) -> None:
        if self.negatives < 0 or self.recent_length < 1 or self.attribution_window_s <= 0:
            raise ValueError(f"invalid SampleConfig: {self}")


class SampleBuilder:
    """The samples of one partition's events. Call :meth:`samples_for` with the user's state
    *before* applying the event (point-in-time correct), then apply it."""

    def __init__(
        self,
        config: SampleConfig,
        state_config: StateConfig,
        sampler: FrequencySampler | None = None,
        pending: PendingImpressions | None = None,
    ) -> None:
        self.config, self.state_config = config, state_config
        self.sampler = FrequencySampler() if sampler is None else sampler
        window = config.attribution_window_s
        self.pending = PendingImpressions(window) if pending is None else pending

    def samples_for(self, state: UserState, event: Event) -> list[bytes]:
        """Samples completed by ``event`` (implicit: now; explicit: when a label is known)."""
        if self.config.mode == "implicit":
            return self._implicit(state, event)
        if event.type is EventType.IMPRESSION:
            blob = self.encode(state, event, np.zeros(0, np.int64), np.zeros(0, np.int64), np.nan)
            return self.pending.add_impression(
                event.user_id, event.item_id, event.request_id, event.ts, blob
            )
        if event.type in self.config.attribution_types:
            return self.pending.add_click(event.user_id, event.item_id, event.request_id, event.ts)
        return []

    def close_expired(self, now: float) -> list[bytes]:
        """Explicit mode: label 0 the impressions whose attribution window ended before ``now``."""
        return self.pending.close_expired(now)

    def _implicit(self, state: UserState, event: Event) -> list[bytes]:
        if event.type not in self.config.positive_types:
            return []
        item, category = stable_id(event.item_id), stable_id(event.category_id)
        key = event_key(self.config.seed, event)
        neg_items, neg_cats = self.sampler.sample(
            self.config.negatives, _history_items(state), key, exclude_item=item
        )
        blob = self.encode(state, event, neg_items, neg_cats, 1.0)
        self.sampler.observe(item, category)
        return [blob]

    def encode(
        self, state: UserState, event: Event, neg_items: I64, neg_cats: I64, label: float
    ) -> bytes:
        """The event's item (with ``label``) and the negatives (label 0) over the state's
        history as of the event."""
        n_dense, code = self.state_config.n_dense, TYPE_CODES[event.type]
        dense = self.state_config.dense(event).tolist() if n_dense else []
        rows = [(stable_id(event.item_id), stable_id(event.category_id), label)]
        rows += [(i, c, 0.0) for i, c in zip(neg_items.tolist(), neg_cats.tolist(), strict=True)]
        values = [v for item, cat, lab in rows for v in (item, cat, code, lab, *dense)]
        recent, clusters, tail, tail_ends_recent = state.sample_history(
            self.config.recent_length, as_of=event.ts
        )
        return pack_sample(
            stable_id(event.user_id),
            event.ts,
            len(rows),
            n_dense,
            targets_struct(len(rows), n_dense).pack(*values),
            recent,
            clusters,
            tail,
            tail_ends_recent,
            narrow_ids=self.config.narrow_ids,
        )


# an implicit positive staged in a batch: user, ts, item, category, type code, dense, history
Staged = tuple[int, float, int, int, int, tuple[float, ...], PackedHistory]


class BatchSamples:
    """The samples of one batch of a partition, in event order: what :meth:`SampleBuilder.
    samples_for` makes of each event, with the negatives of implicit positives drawn together
    at the end (:mod:`feature_store.batch_negatives`, the same draws). Call :meth:`add` with the
    user's state before applying the event (point-in-time correct), then :meth:`finish` once,
    and :meth:`close` in any case (the states and the sampler stop recording)."""

    def __init__(self, builder: SampleBuilder) -> None:
        self.builder = builder
        config = builder.config
        self.implicit, self.negatives = config.mode == "implicit", None
        if self.implicit:
            self.negatives = BatchNegatives(builder.sampler, config.negatives)
        self.ready: list[bytes] = []  # explicit mode: the samples each event completed
        self.staged: list[Staged] = []  # implicit positives, negatives not drawn yet

    def add(self, state: UserState, event: Event) -> None:
        if self.negatives is None:
            self.ready += self.builder.samples_for(state, event)
            return
        builder = self.builder
        if event.type not in builder.config.positive_types:
            return
        item, category = stable_id(event.item_id), stable_id(event.category_id)
        self.negatives.add(state, event_key(builder.config.seed, event), item)
        n_dense = builder.state_config.n_dense
        dense = tuple(builder.state_config.dense(event).tolist()) if n_dense else ()
        history = self._history(state, event.ts, n_dense)
        code = TYPE_CODES[event.type]
        self.staged.append(
            (stable_id(event.user_id), event.ts, item, category, code, dense, history)
        )
        builder.sampler.observe(item, category)

    def _history(self, state: UserState, ts: float, n_dense: int) -> PackedHistory:
        """The state's history as of ``ts``, packed; a state with nothing logged and no
        clusters (a new user's first event) has the one empty history of its width."""
        narrow_ids = self.builder.config.narrow_ids
        if (
            not state.n_log
            and not state.cluster_state.clusters.shape[0]
            and state.n_dense == n_dense
        ):
            return empty_history(n_dense, narrow_ids)
        recent, clusters, tail, ends_recent = state.sample_history(
            self.builder.config.recent_length, as_of=ts
        )
        return pack_history(
            recent, clusters, tail, ends_recent, n_dense=n_dense, narrow_ids=narrow_ids
        )

    def finish(self) -> list[bytes]:
        """Every sample of the batch, in event order."""
        if self.negatives is None or not self.staged:
            return self.ready
        items, cats, found = self.negatives.draw()
        targets = self._targets(items, cats)
        return [
            history.message(user, ts, n + 1, targets[row, : n + 1].tobytes())
            for row, ((user, ts, *_, history), n) in enumerate(
                zip(self.staged, found.tolist(), strict=True)
            )
        ]

    def _targets(self, neg_items: I64, neg_cats: I64) -> np.ndarray:
        """Every staged positive's target rows (:func:`target_dtype`): its item labelled 1, then
        its K negatives labelled 0 with its type and dense features (a row uses the first
        1 + found)."""
        n, k = neg_items.shape
        out = np.zeros((n, k + 1), target_dtype(self.builder.state_config.n_dense))
        staged = list(zip(*self.staged, strict=True))
        out["item"][:, 0], out["category"][:, 0] = staged[2], staged[3]
        out["item"][:, 1:], out["category"][:, 1:] = neg_items, neg_cats
        out["type"] = np.array(staged[4], np.uint8)[:, None]
        out["label"][:, 0] = 1.0
        if self.builder.state_config.n_dense:
            out["dense"] = np.array(staged[5], np.float32)[:, None, :]
        return out

    def close(self) -> None:
        if self.negatives is not None:
            self.negatives.close()


def request_sample(
    state: UserState,
    *,
    user_id: str,
    ts: float,
    items: Sequence[str],
    categories: Sequence[str],
    recent_length: int = RECENT_LENGTH,
    dense: F32 | None = None,
) -> bytes:
    """A scoring request as an unlabelled sample message (one target per candidate), so the
    scorer decodes it with :func:`decode_samples` exactly as the trainer decodes training data.

    >>> from feature_store.sample_format import decode_samples
    >>> state = UserState.empty(StateConfig())
    >>> blob = request_sample(state, user_id="u", ts=1e9, items=["1", "2"], categories=["0", "0"])
    >>> a = decode_samples([blob], recent_length=4)
    >>> a.target_item.tolist(), np.isnan(a.label).all(), a.hist_mask.any()
    ([1, 2], np.True_, np.False_)
    """
    n = len(items)
    if dense is None:
        dense = np.zeros((n, state.n_dense), np.float32)
    targets = make_targets(
        [stable_id(i) for i in items],
        [stable_id(c) for c in categories],
        labels=np.full(n, np.nan, np.float32),
        types=np.full(n, TYPE_CODES[EventType.IMPRESSION], np.uint8),
        dense=dense,
    )
    return encode_sample(
        user=stable_id(user_id),
        ts=ts,
        targets=targets,
        recent=state.recent(recent_length, as_of=ts),
        clusters=state.clusters(),
    )


def _history_items(state: UserState) -> npt.NDArray[np.int64] | ItemIndex:
    """What a negative must not be: the items of the user's log, indexed once it is long (a
    scan of a short one costs less than the index)."""
    log = state.log
    return log["item"] if log.shape[0] <= SHORT_HISTORY else state.items()
