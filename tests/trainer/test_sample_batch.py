"""Decoding one step's sample messages: malformed messages are dropped and counted, unlabelled
rows left out, and the records kept for their offsets."""

from __future__ import annotations

import numpy as np

from feature_store.sample_format import with_label
from tests.support.events import sample_messages, synthetic_events
from trainer.sample_batch import decode_batch
from trainer.source import SampleMessage

SEQ_LEN = 20


def messages(blobs: list[bytes]) -> list[SampleMessage]:
    return [SampleMessage(0, offset, 0, blob) for offset, blob in enumerate(blobs)]


def good_blobs(n: int) -> list[bytes]:
    return sample_messages(synthetic_events(users=20), partitions=1)[0][:n]


def test_a_malformed_message_costs_itself_not_its_batch() -> None:
    good = good_blobs(6)
    whole = decode_batch(messages(good), SEQ_LEN, None)
    batch = decode_batch(messages([*good[:3], b"not a sample", *good[3:]]), SEQ_LEN, None)
    assert batch.bad == 1 and len(batch.records) == 7
    assert batch.rows == whole.rows > 0 and whole.bad == 0


def test_only_labelled_rows_are_kept() -> None:
    good = good_blobs(4)
    pending = [with_label(blob, float("nan")) for blob in good[:2]]
    batch = decode_batch(messages([*pending, *good[2:]]), SEQ_LEN, None)
    assert batch.arrays is not None and not np.isnan(batch.arrays.label).any()
    assert batch.rows == decode_batch(messages(good[2:]), SEQ_LEN, None).rows
    none_labelled = decode_batch(messages(pending), SEQ_LEN, None)
    assert none_labelled.arrays is None and none_labelled.rows == 0 and none_labelled.bad == 0
