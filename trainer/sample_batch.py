"""One step's sample messages, decoded into the labelled rows the online trainer learns from.

The messages of a batch are decoded together
(:func:`feature_store.sample_format.decode_samples`); when that fails, each is tried alone and the
undecodable ones are dropped and counted, so one malformed message costs itself, not its batch.
Unlabelled rows (impressions whose label is still pending) are left out.

>>> batch = decode_batch([], seq_len=20, max_clusters=None)
>>> (batch.rows, batch.bad)
(0, 0)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from feature_store.sample_format import SampleArrays, decode_samples
from serving.features import select_rows
from trainer.source import SampleRecord

log = logging.getLogger("twinstream.trainer")


@dataclass(frozen=True)
class DecodedBatch:
    """The sample messages of one step, decoded (``arrays`` None: no labelled rows)."""

    records: Sequence[SampleRecord]
    arrays: SampleArrays | None
    bad: int  # undecodable messages skipped

    @property
    def rows(self) -> int:
        return 0 if self.arrays is None else self.arrays.size


def decode_batch(
    records: Sequence[SampleRecord], seq_len: int, max_clusters: int | None
) -> DecodedBatch:
    """The labelled rows of ``records`` (recent sequences of ``seq_len``, cluster sequences of
    ``max_clusters``, None: the longest in the batch)."""
    blobs = [r.value for r in records if r.value is not None]
    arrays, bad = _decode(blobs, seq_len, max_clusters)
    if arrays is not None:
        arrays = labelled(arrays)
        arrays = arrays if arrays.size else None
    return DecodedBatch(records, arrays, bad)


def labelled(arrays: SampleArrays) -> SampleArrays:
    """The rows with a label (impressions still waiting for theirs are NaN)."""
    return select_rows(arrays, ~np.isnan(arrays.label))


def _decode(
    blobs: list[bytes], seq_len: int, max_clusters: int | None
) -> tuple[SampleArrays | None, int]:
    """Decode a batch; when some messages are malformed, drop those and count them."""
    if not blobs:
        return None, 0
    try:
        return decode_samples(blobs, seq_len, max_clusters), 0
    except ValueError:
        good = [b for b in blobs if _decodes(b)]
        log.warning("skipped %d undecodable sample messages", len(blobs) - len(good))
        arrays = decode_samples(good, seq_len, max_clusters) if good else None
        return arrays, len(blobs) - len(good)


def _decodes(blob: bytes) -> bool:
    try:
        decode_samples([blob], recent_length=1)
    except ValueError:
        return False
    return True
