"""DARE's offline protocol (ARCHITECTURE.md section 9): an event log -> per-user samples -> batches.

From a time-ordered event log (``streaming.sources.EventLog`` or anything with the same arrays):

1. keep the behaviours (``DatasetConfig.behaviour_types``, DARE: Taobao ``pv`` = ``click``) and the
   users with at least ``min_events`` of them; map users, items and categories to contiguous rows
   with ``np.unique(return_inverse=True)`` (items and categories 1..n, row 0 = padding);
2. every behaviour with at least one earlier behaviour of its user is a candidate target; its
   history is the user's behaviours strictly before it in event-time order (point-in-time correct),
   the last ``seq_len`` of them, right-aligned (most recent last, padding on the left);
3. split by position from the end of each user's sequence: last = test, second last = valid,
   earlier = train (every ``train_stride``-th, at most ``max_train_targets``; DARE uses 5 and 19);
4. each positive gets ``negatives`` (K = 2) negative targets with the same history, items drawn in
   proportion to their behaviour frequency, excluding every item of the user's whole sequence
   (as DARE's preprocessing does, so a negative is never an item the user interacted with).

Per behaviour it also derives the session index (a new session after a gap > ``session_gap_s``,
DSIN's 30 minutes) and, per sample, ``hist_age`` (0 = most recent) and the TWIN-V2 cluster sequence.
Offline clusters (``clustering="kmeans"``, the default): the user's whole history before the target
clustered exactly as the online worker clusters it (ARCHITECTURE.md section 3: hierarchical k-means
over item embeddings, leaves of at most γ, representative nearest the centroid), with the item table
of the model being trained (:mod:`trainer.offline_clusters`), right-aligned, the newest
``max_clusters`` kept. Two departures from the paper (:mod:`feature_store.clustering`):
``cluster_raw_until`` (default ``RECENT_LENGTH``, as the worker's), a history of at most that many
behaviours is not clustered at all but attended behaviour by behaviour; ``cluster_raw_recent`` (an
option, 0 by default), the newest behaviours of a longer history never clustered.
``clustering="category"`` is the earlier stand-in: the history window grouped by category, each
group represented by its most recent item, no leaf cap.

Histories are gathered per mini-batch from flat per-user arrays (no (samples x L) copy in memory).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt
import torch

from contracts.settings import RECENT_LENGTH, SESSION_GAP_S
from feature_store.cluster_config import ClusterConfig
from models.batch import Batch
from trainer.offline_clusters import ClusterArrays, OfflineClusters, right_aligned, user_logs

Int = npt.NDArray[np.int64]
Split = Literal["train", "valid", "test"]


class EventLogLike(Protocol):
    """The columns of ``streaming.sources.EventLog`` read here (equal length, time-ordered)."""

    @property
    def user_id(self) -> npt.NDArray[np.object_]: ...
    @property
    def item_id(self) -> npt.NDArray[np.object_]: ...
    @property
    def category_id(self) -> npt.NDArray[np.object_]: ...
    @property
    def type(self) -> npt.NDArray[np.object_]: ...
    @property
    def ts(self) -> npt.NDArray[np.float64]: ...


@dataclass(frozen=True)
class DatasetConfig:
    seq_len: int = RECENT_LENGTH  # L, DARE's history length
    negatives: int = 2  # K negatives per positive
    behaviour_types: tuple[str, ...] = ("click",)
    session_gap_s: float = SESSION_GAP_S
    min_events: int = 3  # users with fewer behaviours are dropped (DARE Taobao: 210)
    train_stride: int = 1  # every n-th earlier behaviour is a train target (DARE: 5)
    max_train_targets: int | None = None  # most recent train targets per user (DARE: 19)
    clustering: Literal["kmeans", "category"] = "kmeans"  # see the module docstring
    cluster_window: int | None = None  # "category": behaviours grouped; None = seq_len
    max_clusters: int = 200
    cluster_raw_recent: int = 0  # "kmeans": ClusterConfig.raw_recent (0 = as published)
    # "kmeans": ClusterConfig.raw_until, histories of at most this many behaviours (and at most
    # max_clusters) not clustered, as the worker's default (Settings.cluster_raw_until); 0 = as
    # published
    cluster_raw_until: int = RECENT_LENGTH
    seed: int = 0

    def __post_init__(self) -> None:
        if (
            self.seq_len < 1
            or self.negatives < 0
            or self.train_stride < 1
            or self.min_events < 2
            or self.cluster_raw_until < 0
        ):
            raise ValueError(f"invalid DatasetConfig: {self}")
        if self.clustering not in ("kmeans", "category"):
            raise ValueError(f"clustering must be kmeans or category, not {self.clustering!r}")


@dataclass(frozen=True)
class Behaviours:
    """Kept behaviours sorted by (user, event time); ``user_start[u]`` indexes user u's first."""

    user: Int  # (N,) user row 0..U-1
    item: Int  # (N,) item row 1..n
    category: Int  # (N,) category row 1..n
    session: Int  # (N,) session index within the user, 0 = the user's first session
    ts: npt.NDArray[np.float64]  # (N,)
    user_start: Int  # (U + 1,)


@dataclass(frozen=True)
class Samples:
    """Targets of one split; the history of a sample is the behaviours before ``position``."""

    position: Int  # (M,) global index of the target behaviour in Behaviours
    item: Int  # (M,) target item row
    category: Int  # (M,) target category row
    label: npt.NDArray[np.float32]  # (M,)
    user: Int  # (M,) user row

    def __len__(self) -> int:
        return int(self.position.shape[0])

    def take(self, idx: Int) -> Samples:
        return Samples(
            self.position[idx], self.item[idx], self.category[idx], self.label[idx], self.user[idx]
        )


@dataclass(frozen=True)
class OfflineDataset:
    config: DatasetConfig
    behaviours: Behaviours
    train: Samples
    valid: Samples
    test: Samples
    users: npt.NDArray[np.object_]  # raw user id of each user row
    n_items: int  # embedding rows including padding row 0
    n_categories: int
    clusters: OfflineClusters = field(default_factory=OfflineClusters)  # "kmeans" clustering
    logs: list[np.ndarray] = field(default_factory=list, repr=False)  # per user, structured
    item_category: Int = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)

    def split(self, name: Split) -> Samples:
        return {"train": self.train, "valid": self.valid, "test": self.test}[name]

    def batches(
        self, split: Split, batch_size: int, shuffle: bool = False, seed: int = 0
    ) -> Iterator[Batch]:
        """Mini-batches of a split; shuffled with ``seed`` when ``shuffle``."""
        samples = self.split(split)
        order = np.arange(len(samples))
        if shuffle:
            order = np.random.default_rng(seed).permutation(len(samples))
        for lo in range(0, len(samples), batch_size):
            yield self.make_batch(samples.take(order[lo : lo + batch_size]))

    def make_batch(self, s: Samples) -> Batch:
        """Gather histories and clusters for samples and wrap them as a :class:`models.Batch`."""
        cfg = self.config
        hist = _gather(self.behaviours, s.position, cfg.seq_len)
        if cfg.clustering == "kmeans":
            return _to_batch(s, hist, self.cluster_sequences(s))
        window = cfg.cluster_window or cfg.seq_len
        cwin = hist if window == cfg.seq_len else _gather(self.behaviours, s.position, window)
        clusters = _clusters(cwin, self.n_categories, cfg.max_clusters)
        return _to_batch(s, hist, clusters)

    def cluster_sequences(self, s: Samples) -> ClusterArrays:
        """The worker's cluster sequence of each sample's user before its target."""
        start = self.behaviours.user_start
        seqs = [
            self.clusters.sequence(int(u), self.logs[u], int(p - start[u]))
            for u, p in zip(s.user, s.position, strict=True)
        ]
        return right_aligned(seqs, self.config.max_clusters)


def build_dataset(log: EventLogLike, config: DatasetConfig | None = None) -> OfflineDataset:
    """Apply the DARE offline protocol to an event log (see the module docstring)."""
    cfg = config or DatasetConfig()
    beh, users, n_items, n_cats = _behaviours(log, cfg)
    rng = np.random.default_rng(cfg.seed)
    splits = _split_positions(beh, cfg)
    item_cat = _item_category(beh, n_items)
    freq = np.bincount(beh.item, minlength=n_items).astype(np.float64)
    seen = np.unique(beh.user * n_items + beh.item)  # sorted (user, item) keys of every sequence
    made = {
        name: _with_negatives(beh, pos, cfg.negatives, freq, seen, item_cat, rng)
        for name, pos in splits.items()
    }
    logs = user_logs(beh.item, beh.category, beh.ts, beh.user_start)
    clusters = OfflineClusters(
        ClusterConfig(
            raw_recent=cfg.cluster_raw_recent,
            raw_until=min(cfg.cluster_raw_until, cfg.max_clusters),
        )
    )
    return OfflineDataset(
        cfg, beh, made["train"], made["valid"], made["test"], users, n_items, n_cats,
        clusters, logs, item_cat,
    )  # fmt: skip


def _behaviours(
    log: EventLogLike, cfg: DatasetConfig
) -> tuple[Behaviours, npt.NDArray[np.object_], int, int]:
    keep = np.isin(
        np.asarray(log.type, dtype=object), np.asarray(cfg.behaviour_types, dtype=object)
    )
    users_raw, user = np.unique(np.asarray(log.user_id)[keep], return_inverse=True)
    counts = np.bincount(user, minlength=users_raw.shape[0])
    keep_user = counts[user] >= cfg.min_events
    idx = np.flatnonzero(keep)[keep_user]
    users_raw, user = np.unique(np.asarray(log.user_id)[idx], return_inverse=True)
    ts = np.asarray(log.ts, dtype=np.float64)[idx]
    order = np.lexsort((ts, user))  # stable: equal timestamps keep log order
    idx, user, ts = idx[order], user[order].astype(np.int64), ts[order]
    _, item = np.unique(np.asarray(log.item_id)[idx], return_inverse=True)
    _, cat = np.unique(np.asarray(log.category_id)[idx], return_inverse=True)
    user_start = np.searchsorted(user, np.arange(users_raw.shape[0] + 1)).astype(np.int64)
    session = _sessions(user, ts, user_start, cfg.session_gap_s)
    beh = Behaviours(
        user, item.astype(np.int64) + 1, cat.astype(np.int64) + 1, session, ts, user_start
    )
    return beh, users_raw, int(item.max(initial=-1)) + 2, int(cat.max(initial=-1)) + 2


def _sessions(user: Int, ts: npt.NDArray[np.float64], user_start: Int, gap: float) -> Int:
    """Per-user session index: a new session at each user's first behaviour or after a long gap."""
    new = np.ones(user.shape[0], dtype=bool)
    new[1:] = (np.diff(ts) > gap) | (user[1:] != user[:-1])
    running = np.cumsum(new) - 1
    return (running - running[user_start[user]]).astype(np.int64)


def _split_positions(beh: Behaviours, cfg: DatasetConfig) -> dict[str, Int]:
    """Global indices of the target behaviours of each split, by position from the user's end."""
    idx = np.arange(beh.user.shape[0], dtype=np.int64)
    k = idx - beh.user_start[beh.user]  # position within the user's sequence
    from_end = beh.user_start[beh.user + 1] - 1 - idx
    has_history = k >= 1
    r = from_end - 2
    train = (r >= 0) & (r % cfg.train_stride == 0)
    if cfg.max_train_targets is not None:
        train &= r // cfg.train_stride < cfg.max_train_targets
    return {
        "train": idx[has_history & train],
        "valid": idx[has_history & (from_end == 1)],
        "test": idx[has_history & (from_end == 0)],
    }


def _item_category(beh: Behaviours, n_items: int) -> Int:
    """Category of each item row: the category of its most recent behaviour (latest timestamp)."""
    item_cat = np.zeros(n_items, dtype=np.int64)
    order = np.argsort(beh.ts, kind="stable")
    item_cat[beh.item[order]] = beh.category[order]  # later writes win: latest category
    return item_cat


def _with_negatives(
    beh: Behaviours,
    pos: Int,
    k: int,
    freq: npt.NDArray[np.float64],
    seen: Int,
    item_cat: Int,
    rng: np.random.Generator,
) -> Samples:
    """The positives at ``pos`` plus ``k`` frequency-weighted negatives each (same history)."""
    user = np.repeat(beh.user[pos], k)
    neg = _sample_negatives(user, freq, seen, rng)
    position = np.concatenate([pos, np.repeat(pos, k)])
    item = np.concatenate([beh.item[pos], neg])
    category = np.concatenate([beh.category[pos], item_cat[neg]])
    label = np.concatenate([np.ones(pos.shape[0]), np.zeros(neg.shape[0])]).astype(np.float32)
    return Samples(position, item, category, label, beh.user[position])


def _sample_negatives(
    user: Int, freq: npt.NDArray[np.float64], seen: Int, rng: np.random.Generator, rounds: int = 100
) -> Int:
    """Items drawn with probability ∝ frequency, redrawn while the user's sequence has the item."""
    n_items = freq.shape[0]
    p = freq / freq.sum()
    out = np.zeros(user.shape[0], dtype=np.int64)
    todo = np.arange(user.shape[0])
    for _ in range(rounds):
        if todo.size == 0:
            return out
        draw = rng.choice(n_items, size=todo.size, p=p).astype(np.int64)
        keys = user[todo] * n_items + draw
        hit = np.searchsorted(seen, keys).clip(max=seen.size - 1)
        ok = seen[hit] != keys
        out[todo[ok]] = draw[ok]
        todo = todo[~ok]
    raise ValueError(f"{todo.size} negatives not found: users interacted with almost every item")


@dataclass(frozen=True)
class _Window:
    item: Int  # (B, W) rows, 0 = padding
    category: Int  # (B, W)
    session: Int  # (B, W)
    mask: npt.NDArray[np.bool_]  # (B, W)


def _gather(beh: Behaviours, position: Int, length: int) -> _Window:
    """The ``length`` behaviours before each target position, right-aligned and left-padded."""
    start = beh.user_start[beh.user[position]]  # (B,)
    idx = position[:, None] - length + np.arange(length)  # (B, W)
    mask = idx >= start[:, None]
    idx = np.where(mask, idx, 0)
    first = np.maximum(position - length, start)  # oldest behaviour in the window
    session = np.where(mask, beh.session[idx] - beh.session[first][:, None], 0)
    return _Window(
        np.where(mask, beh.item[idx], 0), np.where(mask, beh.category[idx], 0), session, mask
    )


@dataclass(frozen=True)
class _Clusters:
    item: Int  # (B, C) representative (most recent) item
    category: Int  # (B, C)
    size: npt.NDArray[np.float32]  # (B, C)
    mask: npt.NDArray[np.bool_]  # (B, C)


def _clusters(w: _Window, n_categories: int, max_clusters: int) -> _Clusters:
    """Group each window by category; right-aligned by each group's most recent member."""
    rows, cols = np.nonzero(w.mask)  # row-major: cols ascending within a row
    key = rows * n_categories + w.category[rows, cols]
    order = np.lexsort((cols, key))  # by group, then position
    key_sorted = key[order]
    last = np.flatnonzero(np.r_[key_sorted[1:] != key_sorted[:-1], True])  # newest member
    size = np.diff(np.r_[-1, last])
    r, c = rows[order][last], cols[order][last]
    by_recency = np.lexsort((c, r))
    r, c, size = r[by_recency], c[by_recency], size[by_recency]
    n_per_row = np.bincount(r, minlength=w.mask.shape[0])
    width = max(1, min(max_clusters, int(n_per_row.max(initial=0))))
    row_end = np.cumsum(n_per_row)[r]  # one past the row's last cluster
    slot = width - (row_end - np.arange(r.shape[0]))  # right-aligned slot
    keep = slot >= 0
    out = _Clusters(
        np.zeros((w.mask.shape[0], width), np.int64),
        np.zeros((w.mask.shape[0], width), np.int64),
        np.zeros((w.mask.shape[0], width), np.float32),
        np.zeros((w.mask.shape[0], width), bool),
    )
    r, c, s, slot = r[keep], c[keep], size[keep], slot[keep]
    out.item[r, slot], out.category[r, slot] = w.item[r, c], w.category[r, c]
    out.size[r, slot], out.mask[r, slot] = s, True
    return out


def _to_batch(s: Samples, h: _Window, c: _Clusters | ClusterArrays) -> Batch:
    b, length = h.item.shape
    t = torch.from_numpy
    return Batch(
        target_item=t(s.item),
        target_category=t(s.category),
        hist_item=t(h.item),
        hist_category=t(h.category),
        hist_mask=t(h.mask),
        hist_session=t(h.session),
        hist_age=torch.arange(length - 1, -1, -1).repeat(b, 1),
        hist_dense=torch.zeros(b, length, 0),
        cluster_item=t(c.item),
        cluster_category=t(c.category),
        cluster_size=t(c.size),
        cluster_mask=t(c.mask),
        cluster_dense=torch.zeros(b, c.item.shape[1], 0),
        target_dense=torch.zeros(b, 0),
        label=t(s.label),
        user=t(s.user),
    )
