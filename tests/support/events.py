"""Events, event logs and sample messages for tests, made in memory."""

from __future__ import annotations

import zlib

import numpy as np
import orjson

from contracts.schema import Event, EventType
from feature_store import MemoryStore, PartitionWorker
from streaming.ingest import RawMessage
from streaming.sources import EventLog
from streaming.synthetic import GeneratorConfig, generate

T0 = 1_511_539_200.0  # 2017-11-24, inside the Taobao log's range
TYPES = {"pv": EventType.CLICK, "cart": EventType.CART, "fav": EventType.FAV, "buy": EventType.BUY}


def event(
    ts: float,
    item: str = "1",
    *,
    user: str = "u1",
    category: str = "10",
    kind: EventType = EventType.CLICK,
    event_id: str | None = None,
    request_id: str | None = None,
    features: dict[str, float | str] | None = None,
) -> Event:
    """An event at ``T0 + ts`` seconds."""
    return Event(
        user_id=user,
        item_id=item,
        type=kind,
        ts=T0 + ts,
        category_id=category,
        event_id=event_id,
        request_id=request_id,
        features=features or {},
    )


def synthetic_log(
    n_users: int = 12, n_events: int = 600, n_items: int = 60, seed: int = 0
) -> EventLog:
    """Users prefer a few categories (item i has category i % 6); bursts of events make sessions."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, n_users, n_events)
    favourite = rng.integers(0, 6, n_users)
    item = rng.integers(0, n_items // 6, n_events) * 6 + favourite[user]
    item = np.where(rng.random(n_events) < 0.3, rng.integers(0, n_items, n_events), item)
    ts = np.cumsum(rng.choice([10.0, 4000.0], size=n_events, p=[0.9, 0.1])) + 1.6e9
    kind = rng.choice(["click", "click", "click", "cart", "impression"], size=n_events)
    as_str = np.vectorize(str, otypes=[object])
    return EventLog(
        user_id=as_str(user + 1000),
        item_id=as_str(item * 7 + 100),
        category_id=as_str(item % 6),
        type=kind.astype(object),
        ts=ts,
    )


def synthetic_events(users: int = 60, seed: int = 3) -> list[Event]:
    """A small generated log (users with a few drifting interest categories) as events."""
    cfg = GeneratorConfig(
        users=users, long_users=0, categories=30, items_per_category=20, mean_sessions=8, seed=seed
    )
    return generated_events(cfg)


def generated_events(cfg: GeneratorConfig, *, event_ids: bool = False) -> list[Event]:
    """The log ``cfg`` generates, as events in its order (with ids ``e0``, ``e1``, ... or none)."""
    log = generate(cfg)
    rows = zip(log.user, log.item, log.category, log.behaviour, log.ts, strict=True)
    return [
        Event(str(u), str(i), TYPES[str(b)], float(t), str(c), f"e{n}" if event_ids else None)
        for n, (u, i, c, b, t) in enumerate(rows)
    ]


def sample_messages(events: list[Event], partitions: int = 4) -> dict[int, list[bytes]]:
    """Point-in-time sample messages per partition, as the ingest worker would emit them."""
    by_partition: dict[int, list[tuple[int, Event]]] = {p: [] for p in range(partitions)}
    for e in events:
        part = by_partition[zlib.crc32(e.user_id.encode()) % partitions]
        part.append((len(part), e))
    out = {}
    for p, records in by_partition.items():
        worker = PartitionWorker(MemoryStore(), p)
        out[p] = worker.process(records).samples
    return out


def raw_click(
    partition: int, offset: int, ts: float, user: str = "u1", **fields: str
) -> RawMessage:
    """A click message at ``T0 + ts`` as the ingest agent hands it over (``fields`` replace the
    event's)."""
    body = {"user_id": user, "item_id": "i1", "category_id": "c1", "type": "click"} | fields
    return RawMessage(partition, offset, orjson.dumps(body | {"ts": T0 + ts}), T0 + ts)
