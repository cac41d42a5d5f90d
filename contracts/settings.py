"""Typed, frozen settings read from the environment.

Every knob has one home here. Environment variables carry the ``TWINSTREAM_`` prefix, except the
Kafka bootstrap address, which also honours the conventional ``KAFKA_BOOTSTRAP_SERVERS``.

>>> s = Settings.from_env({"TWINSTREAM_TOPIC_PREFIX": "dev-", "TWINSTREAM_EVENTS_PARTITIONS": "8"})
>>> s.topics.events, s.topics.events_partitions
('dev-events', 8)
>>> Settings.from_env({}).bootstrap_servers
'127.0.0.1:19092'
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from contracts.security import KafkaSecurity
from contracts.topics import TopicNames

ENV_PREFIX = "TWINSTREAM_"
DEFAULT_BOOTSTRAP = "127.0.0.1:19092"
# Behaviour defaults every part shares, in their one home (ARCHITECTURE.md, "Sessions and state")
SESSION_GAP_S = 30 * 60  # a gap longer than this (event time) starts a new session
ALLOWED_LATENESS_S = 5 * 60  # events older than the user's watermark minus this are late
RECENT_LENGTH = 200  # L: the recent sequence the models attend to
LIFELONG_CAP = 100_000  # behaviours kept per user in the lifelong log


@dataclass(frozen=True)
class Settings:
    """Deployment settings. ``None`` means unset; there are no magic negative values."""

    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    topics: TopicNames = field(default_factory=TopicNames)
    max_event_bytes: int = 64 * 1024
    min_event_ts: float = 946_684_800.0  # 2000-01-01; lower it to replay older logs (MovieLens)
    session_gap_s: float = SESSION_GAP_S
    allowed_lateness_s: float = ALLOWED_LATENESS_S
    recent_length: int = RECENT_LENGTH
    lifelong_cap: int = LIFELONG_CAP
    # TWIN-V2: a user whose lifelong log holds at most this many behaviours is attended raw, one
    # slot per behaviour as TWIN would, and clustered once it grows past it (ClusterConfig.
    # raw_until; trainer/RESULTS-offline.md, ninth round); 0: every log clustered, as the paper
    cluster_raw_until: int = RECENT_LENGTH
    state_dir: str = "./twinstream-state"
    sample_mode: str = "implicit"  # "implicit" (clicks + sampled negatives) or "explicit"
    worker_compression: str = "none"  # the worker's records (samples...): none/gzip/lz4/zstd
    # a worker applies the next batch while the broker acknowledges the last one's records
    # (streaming.pipeline); off: each batch is durable before the next is read
    ingest_overlap: bool = True
    snapshot_dir: str = "./twinstream-snapshots"
    # Model sync (serving.signing, serving.reload, serving.delta): the HMAC key that signs
    # manifests, announcements and deltas (unset: nothing is signed or checked), the bounds of a
    # snapshot read, where a worker without the trainer's folder fetches checkpoints (the
    # trainer's checkpoint server, e.g. http://10.0.0.5:8765) and the port the trainer serves
    # them on (on http_host), and the size of one delta message on model-updates.
    model_hmac_key: str | None = field(default=None, repr=False)
    model_read_timeout_s: float = 600.0
    model_max_file_bytes: int = 1 << 36
    checkpoint_url: str | None = None
    checkpoint_http_port: int | None = None
    delta_chunk_bytes: int = 512 * 1024
    # a worker keeps a second copy of the model's weights to write deltas into, so that requests
    # never wait for a delta (twice the model's memory); off: deltas are written under the lock
    delta_twin: bool = True
    # the share of the interpreter lock a worker's watcher may take while it decodes and prepares
    # a delta (serving/gil_share.py) while requests are being scored: they keep their speed
    # (between requests it takes 0.8); 1.0: no limit. At 4M items, dim 64, scoring p99 while
    # deltas applied was 1.09-1.24x quiet at 0.1, 1.33-1.49x at 0.2 (BENCHMARKS.md, model sync)
    delta_gil_share: float = 0.1
    # ... except for a delta made longer ago than this (trainer's clock): a worker catching up
    delta_catch_up_after_s: float = 2.0
    # model-updates keeps deltas this long (each several MiB at full size, one every few seconds);
    # it must exceed the trainer's checkpoint interval, from whose time workers replay deltas
    model_updates_retention_s: float = 3600.0
    http_host: str = "127.0.0.1"  # the worker's HTTP binds here; other hosts only when told
    # a connection without a whole request head this long after opening or its last response is
    # closed (idle or half-sent); a request body not whole this long after its head gets 408
    http_idle_timeout_s: float = 15.0
    http_body_timeout_s: float = 10.0
    security: KafkaSecurity = field(default_factory=KafkaSecurity)  # TLS and SASL
    # attention drift (serving/drift.py; README "Attention drift"): the live window's rows, age,
    # and what it needs before drift is claimed; the baseline's learning horizon, its roll-over
    # (None: only `twinstream drift-ack` rolls it) and its file ("": STATE_DIR/drift-baseline.json)
    drift_window: int = 5_000
    drift_min_rows: int = 500
    drift_rows_per_request: int = 32
    drift_window_age_s: float = 120.0
    drift_min_users: int = 50
    drift_min_stratum_users: int = 10
    drift_baseline_s: float = 3_600.0
    drift_baseline_roll_s: float | None = None
    drift_baseline_path: str = ""
    drift_baseline_users: int = 100_000  # users whose own statistics a baseline keeps

    def __post_init__(self) -> None:
        if self.max_event_bytes <= 0:
            raise ValueError("max_event_bytes must be positive")
        if self.session_gap_s <= 0:
            raise ValueError("session_gap_s must be positive")
        if self.recent_length <= 0 or self.lifelong_cap < self.recent_length:
            raise ValueError("need 0 < recent_length <= lifelong_cap")
        if not 0 <= self.cluster_raw_until < self.lifelong_cap:
            raise ValueError("need 0 <= cluster_raw_until < lifelong_cap")
        if self.sample_mode not in ("implicit", "explicit"):
            raise ValueError("sample_mode must be 'implicit' or 'explicit'")
        if self.worker_compression not in ("none", "gzip", "lz4", "zstd"):
            raise ValueError("worker_compression must be none, gzip, lz4 or zstd")
        if self.http_idle_timeout_s <= 0 or self.http_body_timeout_s <= 0:
            raise ValueError("http_idle_timeout_s and http_body_timeout_s must be positive")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``env`` (default: ``os.environ``); unknown keys are ignored."""
        env = os.environ if env is None else env
        topics = TopicNames(
            prefix=env.get(f"{ENV_PREFIX}TOPIC_PREFIX", ""),
            events_partitions=int(env.get(f"{ENV_PREFIX}EVENTS_PARTITIONS", "4")),
            replication_factor=int(env.get(f"{ENV_PREFIX}REPLICATION_FACTOR", "1")),
            min_insync_replicas=int(env.get(f"{ENV_PREFIX}MIN_INSYNC_REPLICAS", "1")),
        )
        values: dict[str, object] = {"topics": topics, "security": KafkaSecurity.from_env(env)}
        bootstrap = env.get(f"{ENV_PREFIX}BOOTSTRAP_SERVERS") or env.get("KAFKA_BOOTSTRAP_SERVERS")
        if bootstrap:
            values["bootstrap_servers"] = bootstrap
        for f in fields(cls):
            key = f"{ENV_PREFIX}{f.name.upper()}"
            if f.name in values or key not in env:
                continue
            values[f.name] = _coerce(env[key], f.type)
        return cls(**values)  # type: ignore[arg-type]

    def kafka_config(self) -> dict[str, Any]:
        """Where and how every Kafka client connects: bootstrap servers, TLS and SASL."""
        return {"bootstrap_servers": self.bootstrap_servers, **self.security.client_config()}

    def librdkafka_config(self) -> dict[str, str]:
        """The same for a librdkafka client (confluent-kafka): its property names."""
        return {"bootstrap.servers": self.bootstrap_servers, **self.security.librdkafka_config()}


def _coerce(raw: str, annotation: object) -> object:
    kind = str(annotation)
    if "bool" in kind:
        if raw.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ValueError(f"not a yes/no value: {raw!r}")
        return raw.lower() in ("1", "true", "yes", "on")
    if "int" in kind:
        return int(raw)
    if "float" in kind:
        return float(raw)
    return raw
