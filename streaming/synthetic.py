"""A synthetic behaviour log with planted ground truth, for machines without data.

Users have a few interest categories that drift between sessions (and, with ``shift_at``, all
change abruptly at one moment). Sessions are separated by gaps over 30 minutes. Each behaviour
either continues a current interest or *revisits* the category of one earlier behaviour (its
planted source); the ground-truth file lists, for each revisit, the source and the positions of
the user's earlier behaviours in that category: the behaviours an attention model should find.

Revisits draw their source uniformly over the history, and most behaviours continue or revisit a
current interest, so a revisited category is nearly always in the recent window too. With
``return_prob`` > 0 a behaviour may instead *return* to a dormant interest: a category of the
user's not seen in the last ``dormant_after`` behaviours (the category of an earlier behaviour
drawn uniformly among those in dormant categories). Its truth record has ``"kind": "return"``;
its relevant positions (the category's 50 most recent) are then all older than ``dormant_after``,
out of any recent window shorter than that. Interests that come back after a long time are what
lifelong models are for. ``return_prob`` = 0 (the default) draws nothing for it: the log and its
truth are those of the generator without the option.

>>> cfg = GeneratorConfig(users=3, long_users=1, long_history=500, seed=1)
>>> log = generate(cfg)
>>> int((log.user == log.user[-1]).sum()) >= 0, bool((np.diff(log.ts) >= 0).all())
(True, True)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

SESSION_GAP_MIN_S = 31 * 60
BEHAVIOURS = np.array(["pv", "cart", "fav", "buy"])
BEHAVIOUR_P = np.array([0.90, 0.05, 0.03, 0.02])
MAX_RELEVANT = 50  # the most recent same-category positions kept in the truth file


@dataclass(frozen=True)
class GeneratorConfig:
    users: int = 200
    categories: int = 100
    items_per_category: int = 50
    interests_per_user: int = 4
    mean_sessions: float = 15.0
    mean_session_events: float = 6.0
    long_users: int = 2
    long_history: int = 100_000
    drift_per_session: float = 0.1
    revisit_prob: float = 0.6
    return_prob: float = 0.0  # a behaviour returns to a dormant interest (module docstring)
    dormant_after: int = 1_000  # behaviours without a category before it counts as dormant
    shift_at: float | None = None  # fraction of the time window where all interests change
    start_ts: float = 1_511_136_000.0  # 2017-11-20
    window_days: float = 14.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.shift_at is not None and not 0.0 < self.shift_at < 1.0:
            raise ValueError("shift_at must be in (0, 1)")
        if not 0.0 <= self.return_prob <= 1.0 or self.dormant_after < 1:
            raise ValueError("return_prob must be in [0, 1] and dormant_after >= 1")
        if self.categories < 2 * self.interests_per_user:
            raise ValueError("need at least 2 × interests_per_user categories")


@dataclass(frozen=True)
class SyntheticLog:
    """Columns in event-time order plus the planted truth (one dict per revisit)."""

    user: np.ndarray  # (N,) int64
    item: np.ndarray  # (N,) int64
    category: np.ndarray  # (N,) int64
    behaviour: np.ndarray  # (N,) str
    ts: np.ndarray  # (N,) int64 seconds
    truth: list[dict[str, object]] = field(default_factory=list)

    def write(self, path: str | Path) -> Path:
        """Write the Taobao-format CSV and ``<path>.truth.jsonl``; returns the truth path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as fh:
            for row in zip(
                self.user, self.item, self.category, self.behaviour, self.ts, strict=True
            ):
                fh.write("{},{},{},{},{}\n".format(*row))
        truth_path = path.with_name(path.name + ".truth.jsonl")
        with open(truth_path, "wb") as fh:
            for record in self.truth:
                fh.write(orjson.dumps(record) + b"\n")
        return truth_path


def generate(cfg: GeneratorConfig) -> SyntheticLog:
    rng = np.random.default_rng(cfg.seed)
    window = (cfg.start_ts, cfg.start_ts + cfg.window_days * 86_400)
    shift_ts = None if cfg.shift_at is None else window[0] + cfg.shift_at * (window[1] - window[0])
    parts = [
        _user_events(cfg, rng, user, long=user <= cfg.long_users, window=window, shift_ts=shift_ts)
        for user in range(1, cfg.users + cfg.long_users + 1)
    ]
    columns = [np.concatenate([p[i] for p in parts]) for i in range(5)]
    order = np.lexsort((columns[0], columns[4]))  # by ts, then user: deterministic
    truth = [record for p in parts for record in p[5]]
    user, item, category, behaviour, ts = (c[order] for c in columns)
    return SyntheticLog(user, item, category, behaviour, ts, truth)


def _session_starts(rng: np.random.Generator, n: int, window: tuple[float, float]) -> np.ndarray:
    span = window[1] - window[0]
    gaps = SESSION_GAP_MIN_S + 3600 + rng.exponential(span / max(n, 1), size=n)
    starts = np.cumsum(gaps)
    # the user's history ends inside the window; long histories reach back before it
    end = window[0] + rng.uniform(0.8, 1.0) * span
    return starts - starts[-1] + end - 3600


def _user_events(
    cfg: GeneratorConfig,
    rng: np.random.Generator,
    user: int,
    long: bool,
    window: tuple[float, float],
    shift_ts: float | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict[str, object]]]:
    n_events = cfg.long_history if long else None
    n_sessions = (
        int(np.ceil(cfg.long_history / cfg.mean_session_events))
        if long
        else 1 + rng.poisson(cfg.mean_sessions - 1)
    )
    sizes = 1 + rng.poisson(cfg.mean_session_events - 1, size=n_sessions)
    if n_events is not None:
        sizes = _fit_sizes(sizes, n_events)
    ts = _timestamps(rng, _session_starts(rng, n_sessions, window), sizes)
    session_of = np.repeat(np.arange(sizes.size), sizes)
    categories, truth = _plant(cfg, rng, user, ts, session_of, shift_ts)
    ranks = np.minimum(rng.zipf(1.6, size=ts.size) - 1, cfg.items_per_category - 1)
    items = categories * cfg.items_per_category + ranks + 1
    behaviour = rng.choice(BEHAVIOURS, size=ts.size, p=BEHAVIOUR_P)
    users = np.full(ts.size, user, dtype=np.int64)
    return users, items.astype(np.int64), categories + 1, behaviour, ts, truth


def _fit_sizes(sizes: np.ndarray, total: int) -> np.ndarray:
    cum = np.cumsum(sizes)
    keep = int(np.searchsorted(cum, total)) + 1
    sizes = sizes[:keep].copy()
    sizes[-1] -= int(sizes.sum()) - total
    return sizes[sizes > 0]


def _timestamps(rng: np.random.Generator, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    starts = starts[: sizes.size]
    inner = rng.uniform(5, 600, size=int(sizes.sum()))
    first = np.cumsum(sizes) - sizes
    inner[first] = 0.0
    session_of = np.repeat(np.arange(sizes.size), sizes)
    offsets = np.cumsum(inner) - np.repeat(np.cumsum(inner)[first], sizes)
    return (starts[session_of] + offsets).astype(np.int64)


def _plant(
    cfg: GeneratorConfig,
    rng: np.random.Generator,
    user: int,
    ts: np.ndarray,
    session_of: np.ndarray,
    shift_ts: float | None,
) -> tuple[np.ndarray, list[dict[str, object]]]:
    pools = _category_pools(cfg, shift_ts is not None)
    interests = rng.choice(pools[0], size=cfg.interests_per_user, replace=False)
    shifted = False
    categories = np.empty(ts.size, dtype=np.int64)
    by_category: dict[int, list[int]] = {}
    truth: list[dict[str, object]] = []
    draws = rng.random(ts.size)
    returns = rng.random(ts.size) if cfg.return_prob > 0 else None  # no draw without the option
    last_seen: dict[int, int] = {}
    for i in range(ts.size):
        if shift_ts is not None and not shifted and ts[i] >= shift_ts:
            interests, shifted = (
                rng.choice(pools[1], size=cfg.interests_per_user, replace=False),
                True,
            )
        elif i > 0 and session_of[i] != session_of[i - 1] and rng.random() < cfg.drift_per_session:
            interests[rng.integers(interests.size)] = rng.choice(pools[1 if shifted else 0])
        dormant = None
        if returns is not None and returns[i] < cfg.return_prob:
            dormant = _dormant_source(rng, by_category, last_seen, i - cfg.dormant_after)
        if dormant is not None:
            category = int(categories[dormant])
            relevant = by_category[category][-MAX_RELEVANT:]
            record = {"user_id": user, "position": i, "source": dormant, "relevant": relevant}
            truth.append(record | {"kind": "return"})
        elif i > 0 and draws[i] < cfg.revisit_prob:
            source = int(rng.integers(i))
            category = int(categories[source])
            relevant = by_category[category][-MAX_RELEVANT:]
            truth.append({"user_id": user, "position": i, "source": source, "relevant": relevant})
        else:
            category = int(rng.choice(interests))
        categories[i] = category
        by_category.setdefault(category, []).append(i)
        last_seen[category] = i
    return categories, truth


def _dormant_source(
    rng: np.random.Generator,
    by_category: dict[int, list[int]],
    last_seen: dict[int, int],
    before: int,
) -> int | None:
    """An earlier position drawn uniformly among those whose category was last seen before
    position ``before``; None when no category is dormant."""
    dormant = [c for c, last in last_seen.items() if last < before]
    if not dormant:
        return None
    sizes = np.array([len(by_category[c]) for c in dormant], dtype=np.float64)
    category = dormant[int(rng.choice(len(dormant), p=sizes / sizes.sum()))]
    members = by_category[category]
    return members[int(rng.integers(len(members)))]


def _category_pools(cfg: GeneratorConfig, split: bool) -> tuple[np.ndarray, np.ndarray]:
    everything = np.arange(cfg.categories)
    if not split:
        return everything, everything
    half = cfg.categories // 2
    return everything[:half], everything[half:]


def iter_truth(path: str | Path) -> Iterator[dict[str, object]]:
    with open(path, "rb") as fh:
        for line in fh:
            yield orjson.loads(line)
