"""The in-memory sample source: offsets per partition, resuming after the trainer's offsets,
nothing handed out once stopping. (The Kafka source runs against the broker in
``tests/integration/test_trainer.py``.)"""

from __future__ import annotations

from trainer.source import MemorySampleSource, SampleMessage


def never() -> bool:
    return False


def nothing() -> dict[int, int]:
    return {}


def test_each_partition_is_numbered_from_offset_zero() -> None:
    source = MemorySampleSource.from_partitions({1: [b"c"], 0: [b"a", b"b"]}, timestamp_ms=7)
    source.start(consumed=nothing)
    batch = source.next_batch(10, max_wait_s=0.01, stopping=never)
    assert batch == [
        SampleMessage(0, 0, 7, b"a"),
        SampleMessage(0, 1, 7, b"b"),
        SampleMessage(1, 0, 7, b"c"),
    ]


def test_it_resumes_after_the_offsets_consumed() -> None:
    source = MemorySampleSource.from_partitions({0: [b"a", b"b", b"c"], 1: [b"d", b"e"]})
    source.start(consumed=lambda: {0: 1, 1: 1})
    assert [m.value for m in source.next_batch(10, 0.01, never)] == [b"c"]


def test_batches_hold_at_most_the_messages_asked_for() -> None:
    source = MemorySampleSource.from_partitions({0: [b"a", b"b", b"c"]})
    source.start(consumed=nothing)
    sizes = [len(source.next_batch(2, 0.01, never)) for _ in range(3)]
    assert sizes == [2, 1, 0]


def test_nothing_is_handed_out_once_stopping() -> None:
    source = MemorySampleSource.from_partitions({0: [b"a"]})
    source.start(consumed=nothing)
    assert source.next_batch(10, 0.01, stopping=lambda: True) == []
    assert [m.value for m in source.next_batch(10, 0.01, never)] == [b"a"]
