"""How the online trainer runs (:class:`TrainerConfig`) and what one run did (:class:`RunReport`).

Every default of the online trainer lives here; ``twinstream train`` derives its flags from these
fields (:mod:`ops.train_cli`). The model's own hyper-parameters are :class:`models.ModelConfig`'s;
:data:`ONLINE_MODEL_SIZES` are the sizes the online deployment gives it.

>>> RunReport(rows=600, busy_seconds=2.0).rows_per_s
300.0
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from models.base import ModelConfig
from models.registry import MODEL_NAMES
from serving.features import MapperConfig

# The online trainer's model sizes where ``twinstream train`` is not told otherwise: id-map
# capacities (rows of the item and category tables) and the embedding width (DARE's d_R).
ONLINE_MODEL_SIZES: dict[str, int] = {"n_items": 1 << 20, "n_categories": 1 << 14, "dim": 32}


@dataclass(frozen=True)
class TrainerConfig:
    """How the online trainer runs. ``None`` disables an option; there are no magic values."""

    model_config: ModelConfig
    snapshot_dir: Path
    model: str = "dare"
    batch_size: int = 512  # sample messages per step (each holds a positive and its negatives)
    snapshot_every_steps: int | None = 50
    snapshot_every_s: float | None = 30.0
    # deltas of the touched rows on model-updates every this many seconds (trainer.deltas);
    # None: none, workers reload whole snapshots. One process only (not under torchrun).
    delta_every_s: float | None = None
    keep: int = 5  # newest snapshots kept on disk
    metrics_window: int = 10_000  # target rows in the sliding AUC / GAUC / logloss window
    device: str = "auto"  # "auto": CUDA when available, else CPU
    lr: float = 0.01
    encoder_lr: float = 0.001  # the model's sequence encoder, if it has one (trainer.loop)
    l2: float = 1e-6
    min_count: int = 1  # IdMap frequency filter
    ttl: int | None = None  # IdMap expiry (observe calls); None: ids never expire
    max_clusters: int | None = None  # cluster-sequence length; None: longest in the batch
    max_wait_s: float = 0.5  # longest wait to fill a batch
    log_every_s: float = 10.0
    save_optimizer: bool = True  # optimizer moments in the snapshot (exact resume)
    audit_log: Path | None = None  # JSON lines of the offsets trained per step (".rank{r}" added)
    group_id: str | None = None  # None: "{prefix}trainer"
    session_timeout_s: float = 10.0  # consumer-group session (a killed trainer's partitions)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.model not in MODEL_NAMES:
            raise ValueError(f"unknown model {self.model!r}; choose one of {MODEL_NAMES}")
        object.__setattr__(self, "snapshot_dir", Path(self.snapshot_dir))
        checks = {
            "batch_size must be >= 1": self.batch_size >= 1,
            "snapshot_every_steps must be >= 1 or None": self.snapshot_every_steps is None
            or self.snapshot_every_steps >= 1,
            "snapshot_every_s must be > 0 or None": self.snapshot_every_s is None
            or self.snapshot_every_s > 0,
            "keep must be >= 1": self.keep >= 1,
            "metrics_window must be >= 1": self.metrics_window >= 1,
            "max_wait_s must be > 0": self.max_wait_s > 0,
            "delta_every_s must be > 0 or None": self.delta_every_s is None
            or self.delta_every_s > 0,
        }
        problems = [message for message, ok in checks.items() if not ok]
        if problems:
            raise ValueError("invalid TrainerConfig: " + "; ".join(problems))

    @property
    def mapper_config(self) -> MapperConfig:
        return MapperConfig.for_model(self.model_config, self.min_count, self.ttl)


@dataclass
class RunReport:
    """What one :meth:`trainer.online.OnlineTrainer.run` did."""

    steps: int = 0  # optimizer steps in this run
    rows: int = 0  # target rows trained in this run (all ranks)
    messages: int = 0  # sample messages consumed by this rank
    bad_messages: int = 0  # undecodable messages skipped by this rank
    snapshots: list[Path] = field(default_factory=list)
    stopped_by: str = ""  # "max_steps", "idle", "signal"
    seconds: float = 0.0  # wall time of the run
    busy_seconds: float = 0.0  # wall time of the steps that trained (poll, decode, learn)

    @property
    def rows_per_s(self) -> float:
        """Training throughput: rows over the time of the steps that had data."""
        return self.rows / self.busy_seconds if self.busy_seconds > 0 else 0.0
