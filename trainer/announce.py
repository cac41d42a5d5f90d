"""Announcing a written snapshot on ``model-updates``, where every worker's reload thread
(:mod:`serving.reload`) hears of it.

One message per snapshot, keyed by the model name: ``{"version", "path", "model", "created",
"manifest_sha256"}``; where a key is set (``TWINSTREAM_MODEL_HMAC_KEY``) its HMAC in the
``mac`` header. Workers read the version from their own folder: ``path`` is for people. An
announcement that fails is logged, never raised: the snapshot on disk stays valid and the next
one is announced again.
"""

from __future__ import annotations

import json
import logging

from kafka import KafkaProducer

from contracts.settings import Settings
from serving.signing import Signer
from serving.snapshot import WrittenSnapshot

log = logging.getLogger("twinstream.trainer")


class SnapshotAnnouncer:
    """A producer to ``model-updates`` (the online trainer's rank 0 holds one while it runs)."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topics.model_updates
        self.signer = Signer.of(settings.model_hmac_key)
        self.producer = KafkaProducer(
            **settings.kafka_config(), acks="all", max_request_size=4 * settings.delta_chunk_bytes
        )

    def announce(self, written: WrittenSnapshot) -> None:
        announce(self.producer, self.topic, written, self.signer)

    def close(self) -> None:
        self.producer.close(timeout=10)


def announce(
    producer: KafkaProducer, topic: str, written: WrittenSnapshot, signer: Signer | None = None
) -> None:
    """Send ``{"version", "path", "model", "created", "manifest_sha256"}`` (signed by ``signer``
    where it has a key) to ``model-updates`` and wait for the broker; a failure is logged (the
    snapshot on disk stays valid)."""
    m = written.manifest
    message = {
        "version": m.version,
        "path": str(written.path.resolve()),
        "model": m.model,
        "created": m.created,
        "manifest_sha256": written.manifest_sha256,
    }
    value = json.dumps(message).encode()
    mac = None if signer is None else signer.sign("announcement", value)
    headers = [("kind", b"checkpoint")] + ([] if mac is None else [("mac", mac.encode())])
    try:
        producer.send(topic, key=m.model.encode(), value=value, headers=headers).get(30)
    except Exception as err:  # kafka-python raises many error types; the snapshot is written
        log.error("could not announce snapshot v%d on %s: %r", m.version, topic, err)
