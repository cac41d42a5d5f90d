"""Replay throughput against a plain kafka-python producer, measured in the same run.

    python -m ops.bench.bench_replay [--data PATH] [--rounds 3]

Baseline: a bare ``KafkaProducer`` sending the same pre-encoded (key, value) messages with the
same producer settings. Replay: ``streaming.replay`` sending validated events (JSON encoding per
event included), and end to end with reading and validating the file too. Rounds alternate and
the median is reported. Needs a broker (``twinstream broker start`` or KAFKA_BOOTSTRAP_SERVERS).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from pathlib import Path

from kafka import KafkaProducer

from contracts.schema import Event
from contracts.settings import Settings
from streaming.admin import delete_topics, ensure_topics
from streaming.producer import PRODUCER_DEFAULTS, EventProducer
from streaming.replay import replay
from streaming.sources import read_events
from streaming.synthetic import GeneratorConfig, generate

SHARED = Path(__file__).resolve().parents[3] / "shared/data/taobao_stream/UserBehavior.csv"


def raw_producer_seconds(
    settings: Settings, topic: str, messages: list[tuple[bytes, bytes]]
) -> float:
    producer = KafkaProducer(**settings.kafka_config(), **PRODUCER_DEFAULTS)
    start = time.perf_counter()
    for key, value in messages:
        producer.send(topic, key=key, value=value)
    producer.flush()
    took = time.perf_counter() - start
    producer.close()
    return took


def replay_seconds(settings: Settings, topic: str, events: list[Event]) -> float:
    with EventProducer(settings) as producer:
        return replay(events, producer, progress=False, topic=topic).seconds


def end_to_end_seconds(settings: Settings, topic: str, path: Path) -> float:
    start = time.perf_counter()
    events, _ = read_events(path, "taobao")
    with EventProducer(settings) as producer:
        replay(events, producer, progress=False, topic=topic)
    return time.perf_counter() - start


def data_path(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    if SHARED.exists():
        return SHARED
    out = Path("twinstream-out/bench/UserBehavior.csv")
    if not out.exists():
        generate(GeneratorConfig(users=20_000, long_users=0, mean_sessions=1.0)).write(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    path = data_path(args.data)
    settings = Settings.from_env(
        {
            **dict(__import__("os").environ),
            "TWINSTREAM_TOPIC_PREFIX": f"bench-{uuid.uuid4().hex[:6]}-",
        }
    )
    events, report = read_events(path, "taobao")
    messages = [(e.key, e.to_json()) for e in events]
    print(f"data: {path} ({report.summary()})")
    topic = settings.topics.events
    ensure_topics(settings)
    raw, rep, e2e = [], [], []
    for _ in range(args.rounds):
        raw.append(raw_producer_seconds(settings, topic, messages))
        rep.append(replay_seconds(settings, topic, events))
        e2e.append(end_to_end_seconds(settings, topic, path))
    n = len(events)
    rates = {
        name: n / statistics.median(s)
        for name, s in (
            ("raw kafka-python producer", raw),
            ("twinstream replay", rep),
            ("replay incl. file read+validate", e2e),
        )
    }
    base = rates["raw kafka-python producer"]
    for name, rate in rates.items():
        print(f"{name:34s} {rate:10,.0f} events/s   ratio vs raw {rate / base:5.2f}x")
    delete_topics(settings, list(settings.topics.all()))


if __name__ == "__main__":
    main()
