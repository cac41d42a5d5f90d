"""New id rows start fresh: a random embedding and zero optimizer moments.

When the id maps hand out a row (to a new id, or reusing an expired id's row), every item (or
category) table of the model draws that row afresh, and every optimizer forgets its moments for
it, so nothing of the row's previous owner leaks into the new id. The draw is seeded by the caller
(the online trainer: its seed and the id maps' step), so every rank draws the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from models.base import CTRModel
from models.embedding import EmbeddingTable
from serving.features import NewRows


@dataclass(frozen=True)
class EmbeddingTables:
    """A model's item tables and category tables (by attribute name: ``*item``, ``*category``)."""

    items: list[EmbeddingTable]
    categories: list[EmbeddingTable]

    @classmethod
    def of(cls, model: CTRModel) -> EmbeddingTables:
        items, categories = [], []
        for name, module in model.named_modules():
            if not isinstance(module, EmbeddingTable):
                continue
            leaf = name.rsplit(".", 1)[-1]
            if leaf.endswith("item"):
                items.append(module)
            elif leaf.endswith("category"):
                categories.append(module)
            else:
                raise ValueError(
                    f"embedding table {name!r} is neither an item nor a category table"
                )
        return cls(items, categories)

    @torch.no_grad()
    def reset_rows(
        self,
        new: NewRows,
        optimizers: Sequence[torch.optim.Optimizer],
        seed: int,
        device: torch.device,
    ) -> None:
        """Fresh random rows (drawn under ``seed``, the global RNG left as it was) and zero
        optimizer moments for the rows the id maps just handed out."""
        if len(new) == 0:
            return
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for tables, rows in ((self.items, new.items), (self.categories, new.categories)):
                for table in tables:
                    table.reset_rows(rows)
                    _zero_moments(optimizers, table.weight, rows.to(table.weight.device))


def _zero_moments(
    optimizers: Sequence[torch.optim.Optimizer], weight: torch.Tensor, rows: torch.Tensor
) -> None:
    for opt in optimizers:
        for value in opt.state.get(weight, {}).values():
            if isinstance(value, torch.Tensor) and value.shape == weight.shape:
                value[rows] = 0
