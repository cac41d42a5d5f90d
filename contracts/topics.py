"""The deployment's Kafka topics: names (with the deployment prefix), partition counts, replicas
and the in-sync replicas a write needs.

>>> TopicNames(prefix="dev-").score_requests
'dev-score-requests'
>>> TopicNames(replication_factor=1, min_insync_replicas=2)
Traceback (most recent call last):
...
ValueError: need 1 <= min_insync_replicas <= replication_factor
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TopicNames:
    """Kafka topic names (with the deployment prefix applied) and partition counts."""

    prefix: str = ""
    events_partitions: int = 4
    replication_factor: int = 1
    min_insync_replicas: int = 1  # replicas that must have a write before acks=all returns

    def __post_init__(self) -> None:
        if not 1 <= self.min_insync_replicas <= self.replication_factor:
            raise ValueError("need 1 <= min_insync_replicas <= replication_factor")

    def _name(self, base: str) -> str:
        return f"{self.prefix}{base}"

    @property
    def events(self) -> str:
        return self._name("events")

    @property
    def events_dlq(self) -> str:
        return self._name("events-dlq")

    @property
    def samples(self) -> str:
        return self._name("samples")

    @property
    def score_requests(self) -> str:
        return self._name("score-requests")

    @property
    def scores(self) -> str:
        return self._name("scores")

    @property
    def model_updates(self) -> str:
        return self._name("model-updates")

    @property
    def state_changelog(self) -> str:
        """Compacted: the latest state per user plus an offset marker per partition."""
        return self._name("user-state-changelog")

    def all(self) -> dict[str, int]:
        """Every topic with its partition count; score-requests is co-partitioned with events."""
        n = self.events_partitions
        return {
            self.events: n,
            self.events_dlq: 1,
            self.samples: n,
            self.score_requests: n,
            self.scores: n,
            self.model_updates: 1,
            self.state_changelog: n,
        }
