"""The one batch format every model reads (ARCHITECTURE.md section 5).

Ids are embedding *rows* (int64), already mapped from raw ids by :class:`models.embedding.IdMap`;
row 0 is the shared padding / unknown row. Sequences are right-aligned: the most recent behaviour
is the last position, padding sits on the left, and ``*_mask`` is True on real behaviours.

Shapes: B = batch, L = recent-sequence length, C = cluster-sequence length, F = dense side features.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

SEQUENCE_PREFIXES = ("hist_", "cluster_")


@dataclass(frozen=True)
class Batch:
    # target
    target_item: torch.Tensor  # (B,) int64 rows
    target_category: torch.Tensor  # (B,) int64 rows
    # recent sequence
    hist_item: torch.Tensor  # (B, L) int64 rows, 0 = padding
    hist_category: torch.Tensor  # (B, L) int64 rows
    hist_mask: torch.Tensor  # (B, L) bool, True = real behaviour
    hist_session: torch.Tensor  # (B, L) int64 session index, 0 = oldest session of the window
    hist_age: torch.Tensor  # (B, L) int64 relative position: 0 = most recent behaviour
    hist_dense: torch.Tensor  # (B, L, F) float cross features of each behaviour (F may be 0)
    # clustered lifelong sequence (TWIN-V2)
    cluster_item: torch.Tensor  # (B, C) int64 rows of each cluster's representative item
    cluster_category: torch.Tensor  # (B, C) int64
    cluster_size: torch.Tensor  # (B, C) float, members per cluster (0 on padding)
    cluster_mask: torch.Tensor  # (B, C) bool
    cluster_dense: torch.Tensor  # (B, C, F) float, mean of members' numerical features
    # target side features and labels
    target_dense: torch.Tensor  # (B, F) float
    label: torch.Tensor | None = None  # (B,) float in {0, 1}
    user: torch.Tensor | None = None  # (B,) int64 raw user key (for GAUC), not a model input

    @property
    def size(self) -> int:
        return int(self.target_item.shape[0])

    def expand_history(self, size: int) -> Batch:
        """Row 0's sequences as stride-0 views over ``size`` rows (the scorer's one user, many
        candidates); models detect the broadcast and do the target-independent work once."""
        changes = {
            f.name: getattr(self, f.name)[:1].expand(size, *getattr(self, f.name).shape[1:])
            for f in fields(self)
            if f.name.startswith(SEQUENCE_PREFIXES)
        }
        return replace(self, **changes)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        moved = {
            f.name: (v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v)
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }
        return replace(self, **moved)
