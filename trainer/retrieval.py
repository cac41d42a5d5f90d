"""Retrieval quality of a two-stage model's search stage (GSU): NDCG@k of its top-k.

A two-stage model (TWIN, TWIN-V2, DARE) keeps the top-k behaviours of its search stage
(``ModelOutput.attended_index``, (B, K) positions in the sequence, best first) and attends only to
those. Its retrieval is measured against graded relevance over the S sequence positions:

(a) the **exact target attention** of the same model (the weights it would give every behaviour
    with an unlimited top-k), and
(b) **planted ground truth** from ``streaming.synthetic`` (a JSON-lines file: per target event
    ``{"user_id", "position", "relevant": [positions]}``, positions counted in the user's own
    behaviour sequence), binary relevance. The generator lists the 50 most recent behaviours of
    the revisited category, which a recent window mostly holds already; :func:`same_category` is
    a second truth for the same revisits, every earlier behaviour of that category, so that a
    search over the whole history can find what a recent window cannot.

>>> relevance = np.array([[0.0, 0.1, 0.6, 0.3]])
>>> ndcg_at_k(np.array([[2, 3]]), relevance).round(3).tolist()  # the ideal top-2
[1.0]
>>> ndcg_at_k(np.array([[3, 2]]), relevance).round(3).tolist()  # right set, wrong order
[0.86]
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson

from trainer.dataset import OfflineDataset, Samples

TruthKey = tuple[str, int]  # (user id as str, target position in the user's sequence)


class TruthIndex(dict[TruthKey, npt.NDArray[np.int64]]):
    """Planted relevance, ``key -> relevant positions``; ``returns`` holds the keys of the records
    of kind ``"return"`` (an interest back after ``--dormant-after`` behaviours without it)."""

    returns: frozenset[TruthKey] = frozenset()


def ndcg_at_k(
    retrieved: npt.ArrayLike, relevance: npt.ArrayLike, k: int | None = None
) -> npt.NDArray[np.float64]:
    """Per-row NDCG@k of ranked positions ``retrieved`` (B, K) against ``relevance`` (B, S).

    Positions outside ``[0, S)`` (padding) and repeated positions gain nothing. Rows without any
    relevant position have no ideal ranking and give ``nan``.

    >>> ndcg_at_k(np.array([[0, -1]]), np.array([[0.0, 1.0]])).tolist()
    [0.0]
    >>> ndcg_at_k(np.array([[0]]), np.array([[0.0, 0.0]])).tolist()
    [nan]
    """
    ret = np.asarray(retrieved, dtype=np.int64)
    rel = np.asarray(relevance, dtype=np.float64)
    k = ret.shape[1] if k is None else min(k, ret.shape[1])
    ret = ret[:, :k]
    inside = (ret >= 0) & (ret < rel.shape[1])
    gains = np.where(inside, np.take_along_axis(rel, np.where(inside, ret, 0), axis=1), 0.0)
    gains = np.where(_repeated(ret), 0.0, gains)
    discount = 1.0 / np.log2(np.arange(k) + 2.0)  # (K,)
    dcg = gains @ discount
    ideal = -np.sort(-rel, axis=1)[:, :k]
    idcg = ideal @ discount[: ideal.shape[1]]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(idcg > 0, dcg / idcg, np.nan)


def _repeated(ret: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """True where a position already appeared earlier in its row."""
    order = np.argsort(ret, axis=1, kind="stable")
    s = np.take_along_axis(ret, order, axis=1)
    dup_sorted = np.zeros_like(s, dtype=bool)
    dup_sorted[:, 1:] = s[:, 1:] == s[:, :-1]
    out = np.zeros_like(dup_sorted)
    np.put_along_axis(out, order, dup_sorted, axis=1)
    return out


def load_truth(path: str | Path) -> TruthIndex:
    """Planted relevance: ``(user_id as str, target position) -> relevant positions``, and which
    records are returns."""
    with open(path, "rb") as fh:
        return truth_index(orjson.loads(line) for line in fh if line.strip())


def truth_index(records: Iterable[dict[str, object]]) -> TruthIndex:
    out, returns = TruthIndex(), []
    for r in records:
        key = (str(r["user_id"]), int(r["position"]))  # type: ignore[call-overload]
        out[key] = np.asarray(r["relevant"], dtype=np.int64)
        if r.get("kind") == "return":
            returns.append(key)
    out.returns = frozenset(returns)
    return out


def window_relevance(
    ds: OfflineDataset, samples: Samples, truth: TruthIndex, length: int | None = None
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Binary relevance (B, L) over each sample's right-aligned history window, and which rows
    have planted truth. Positions count the user's kept behaviours, so build the dataset with
    every behaviour type of the generator (``behaviour_types=("click", "cart", "fav", "buy")``).
    """
    length = length or ds.config.seq_len
    b = ds.behaviours
    local = samples.position - b.user_start[samples.user]  # target position within its user
    rel = np.zeros((len(samples), length))
    has = np.zeros(len(samples), dtype=bool)
    for i, (u, k) in enumerate(zip(samples.user, local, strict=True)):  # one per sample
        relevant = truth.get((str(ds.users[u]), int(k)))
        if relevant is None:
            continue
        slot = length - (int(k) - relevant)  # behaviour k-1 sits at slot length-1
        slot = slot[(slot >= 0) & (slot < length)]
        rel[i, slot] = 1.0
        has[i] = slot.size > 0
    return rel, has


def history_ndcg(
    retrieved: list[list[npt.NDArray[np.int64]]],
    relevant: list[npt.NDArray[np.int64]],
    k: int,
) -> npt.NDArray[np.float64]:
    """NDCG@k of retrieved *units* against planted truth over the user's whole history.

    ``retrieved[i]``: the top-k units of sample i, best first, each the positions (in the user's
    behaviour sequence) it stands for: one behaviour for TWIN, a cluster's members for TWIN-V2. A
    unit gains the share of its members that are relevant; the ideal is ``min(k, |relevant|)``
    units that are wholly relevant. So a model that only sees a recent window, or a cluster that
    mixes relevant with other behaviours, scores below one on the same scale.

    >>> history_ndcg([[np.array([5]), np.array([1, 2])]], [np.array([1, 5])], k=2).round(3)
    array([0.807])
    """
    discount = 1.0 / np.log2(np.arange(k) + 2.0)
    out = np.full(len(retrieved), np.nan)
    for i, (units, rel) in enumerate(zip(retrieved, relevant, strict=True)):
        if not rel.size:
            continue
        gains = [np.isin(u, rel).mean() if u.size else 0.0 for u in units[:k]]
        ideal = discount[: min(k, rel.size)].sum()
        out[i] = float(np.dot(gains, discount[: len(gains)])) / ideal
    return out


def same_category(
    ds: OfflineDataset, samples: Samples, planted: list[bool]
) -> list[npt.NDArray[np.int64]]:
    """For each sample with ``planted`` truth (a revisit: its target's category is the source's),
    every earlier position of the user in the target's category; nothing for the others."""
    local = samples.position - ds.behaviours.user_start[samples.user]
    out = []
    for u, k, has in zip(samples.user, local, planted, strict=True):
        category = ds.logs[u]["category"]
        hits = np.flatnonzero(category[:k] == category[k]) if has else np.zeros(0, np.int64)
        out.append(hits.astype(np.int64))
    return out
