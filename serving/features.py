"""Decoded samples (raw ``stable_id`` keys) → :class:`models.Batch` (embedding rows).

A :class:`FeatureMapper` owns the item and the category :class:`models.IdMap` of one model. The
trainer calls ``to_batch(arrays, learn=True)``: every real id of the batch (targets, behaviours,
clusters; never padding) is counted as a sighting first, so new ids get rows; the rows handed out
are kept in :attr:`FeatureMapper.new_rows` until the trainer re-initialises them
(:meth:`drain_new_rows`). The scorer and progressive validation call ``to_batch(arrays,
learn=False)``: lookup only, ids without a row read row 0 (the zero padding row).

Everything is vectorised: one ``IdMap.lookup`` per table over every id of the batch.

>>> import numpy as np
>>> from feature_store.sample_format import decode_samples, encode_sample, make_targets
>>> from feature_store.state_format import behaviour_dtype
>>> from feature_store.cluster_leaves import cluster_dtype
>>> recent = np.zeros(2, behaviour_dtype(0)); recent["item"] = [70, 80]; recent["category"] = 5
>>> blob = encode_sample(user=1, ts=1e9, targets=make_targets([90], [6], labels=[1.0]),
...                      recent=recent, clusters=np.zeros(0, cluster_dtype(0)))
>>> arrays = decode_samples([blob], recent_length=3)
>>> mapper = FeatureMapper(MapperConfig(n_items=10, n_categories=4, seq_len=3))
>>> mapper.to_batch(arrays, learn=False).hist_item.tolist()  # nothing admitted yet
[[0, 0, 0]]
>>> batch = mapper.to_batch(arrays, learn=True)
>>> batch.target_item.tolist(), batch.hist_item.tolist(), mapper.drain_new_rows().items.tolist()
([3], [[0, 1, 2]], [1, 2, 3])
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from feature_store.sample_format import SampleArrays
from models.base import ModelConfig
from models.batch import Batch
from models.embedding import IdMap

I64 = npt.NDArray[np.int64]
# Batch / SampleArrays id fields: (field, id map attribute, mask of the real positions)
_ID_FIELDS = (
    ("target_item", "items", None),
    ("hist_item", "items", "hist_mask"),
    ("cluster_item", "items", "cluster_mask"),
    ("target_category", "categories", None),
    ("hist_category", "categories", "hist_mask"),
    ("cluster_category", "categories", "cluster_mask"),
)


@dataclass(frozen=True)
class MapperConfig:
    """Id-map capacities and policy, and the batch shape the model expects.

    ``n_items`` / ``n_categories`` are the table sizes (row 0 included); ``min_count`` and ``ttl``
    are :class:`models.IdMap`'s frequency filter and expiry (``None``: ids never expire).
    """

    n_items: int
    n_categories: int
    seq_len: int = 200  # longest recent sequence the model takes (older behaviours are cut)
    dense_features: int = 0  # F, must match the samples
    min_count: int = 1
    ttl: int | None = None

    @classmethod
    def for_model(
        cls, config: ModelConfig, min_count: int = 1, ttl: int | None = None
    ) -> MapperConfig:
        return cls(
            n_items=config.n_items,
            n_categories=config.n_categories,
            seq_len=config.seq_len,
            dense_features=config.dense_features,
            min_count=min_count,
            ttl=ttl,
        )

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MapperConfig:
        return cls(**data)


@dataclass(frozen=True)
class NewRows:
    """Rows handed out by the id maps (fresh or recycled): re-initialise them before use."""

    items: torch.Tensor  # (n,) int64
    categories: torch.Tensor  # (m,) int64

    @classmethod
    def empty(cls) -> NewRows:
        return cls(torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))

    def __add__(self, other: NewRows) -> NewRows:
        return NewRows(
            torch.cat([self.items, other.items]), torch.cat([self.categories, other.categories])
        )

    def __len__(self) -> int:
        return int(self.items.numel() + self.categories.numel())


@dataclass(frozen=True)
class RawIds:
    """The real (non-padding) raw ids of a batch, one flat array per table."""

    items: I64
    categories: I64


def select_rows(arrays: SampleArrays, keep: npt.NDArray[np.bool_]) -> SampleArrays:
    """The target rows of ``arrays`` where ``keep`` is True (e.g. the labelled ones)."""
    return SampleArrays(**{f.name: getattr(arrays, f.name)[keep] for f in fields(arrays)})


def raw_ids(arrays: SampleArrays) -> RawIds:
    """Every real id a batch uses: targets, behaviours under ``hist_mask``, clusters under
    ``cluster_mask`` (each occurrence once, padding never)."""
    hm, cm = arrays.hist_mask, arrays.cluster_mask
    items = [arrays.target_item, arrays.hist_item[hm], arrays.cluster_item[cm]]
    cats = [arrays.target_category, arrays.hist_category[hm], arrays.cluster_category[cm]]
    return RawIds(np.concatenate(items), np.concatenate(cats))


class FeatureMapper:
    """Raw ids → embedding rows for one model; vectorised; saved with its snapshot."""

    def __init__(self, config: MapperConfig) -> None:
        self.config = config
        self.items = IdMap(config.n_items, config.min_count, config.ttl)
        self.categories = IdMap(config.n_categories, config.min_count, config.ttl)
        self.new_rows = NewRows.empty()

    def observe(self, ids: RawIds) -> NewRows:
        """Count sightings (admitting ids, expiring stale ones); returns the rows handed out,
        which are also added to :attr:`new_rows`."""
        new = NewRows(self.items.observe(ids.items), self.categories.observe(ids.categories))
        self.new_rows = self.new_rows + new
        return new

    def drain_new_rows(self) -> NewRows:
        """The rows handed out since the last call (for ``EmbeddingTable.reset_rows``)."""
        rows, self.new_rows = self.new_rows, NewRows.empty()
        return rows

    def raw_ids(self, arrays: SampleArrays) -> RawIds:
        """The real ids :meth:`to_batch` would observe (after cutting to ``seq_len``)."""
        return raw_ids(self._fit(arrays))

    def to_batch(self, arrays: SampleArrays, learn: bool) -> Batch:
        """A model batch; ``learn=True`` observes the ids first, ``False`` only looks them up."""
        arrays = self._fit(arrays)
        if learn:
            self.observe(raw_ids(arrays))
        return self._batch(arrays)

    def _fit(self, arrays: SampleArrays) -> SampleArrays:
        """Check the dense width; keep the newest ``seq_len`` behaviours."""
        width = arrays.target_dense.shape[1]
        if width != self.config.dense_features:
            raise ValueError(
                f"samples carry {width} dense features, the model takes "
                f"{self.config.dense_features}"
            )
        if arrays.hist_item.shape[1] <= self.config.seq_len:
            return arrays
        return _cut_history(arrays, self.config.seq_len)

    def _batch(self, a: SampleArrays) -> Batch:
        item = _rows(self.items, [a.target_item, a.hist_item, a.cluster_item])
        cat = _rows(self.categories, [a.target_category, a.hist_category, a.cluster_category])
        t = _tensor
        label = None if np.isnan(a.label).all() else t(a.label)
        return Batch(
            target_item=item[0],
            target_category=cat[0],
            hist_item=item[1] * t(a.hist_mask),
            hist_category=cat[1] * t(a.hist_mask),
            hist_mask=t(a.hist_mask),
            hist_session=t(a.hist_session),
            hist_age=t(a.hist_age),
            hist_dense=t(a.hist_dense),
            cluster_item=item[2] * t(a.cluster_mask),
            cluster_category=cat[2] * t(a.cluster_mask),
            cluster_size=t(a.cluster_size),
            cluster_mask=t(a.cluster_mask),
            cluster_dense=t(a.cluster_dense),
            target_dense=t(a.target_dense),
            label=label,
            user=t(a.user),
        )

    def refresh(self, batch: Batch, arrays: SampleArrays) -> Batch:
        """``batch`` (from ``to_batch(arrays, learn=False)``) after :meth:`observe`: only the ids
        that read row 0 are looked up again. Ids that had a row keep it, because an id observed
        in a call cannot expire in that call. Equal to a fresh ``to_batch(arrays, learn=False)``
        at a fraction of the cost (most ids of a batch are known)."""
        a = self._fit(arrays)
        fresh = {
            name: _fill_unknown(
                getattr(self, table),
                getattr(batch, name),
                getattr(a, name),
                None if mask is None else getattr(a, mask),
            )
            for name, table, mask in _ID_FIELDS
        }
        return replace(batch, **fresh)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Both id maps as int64 tensors, keys prefixed ``item.`` and ``category.``."""
        out = {f"item.{k}": v for k, v in self.items.state_dict().items()}
        out.update({f"category.{k}": v for k, v in self.categories.state_dict().items()})
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for prefix, idmap in (("item.", self.items), ("category.", self.categories)):
            idmap.load_state_dict(
                {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            )
        self.new_rows = NewRows.empty()


def _tensor(x: np.ndarray) -> torch.Tensor:
    """``torch.from_numpy`` without copying, except for the odd strides that numpy leaves on
    one-row views of packed records (torch refuses strides that are not whole elements)."""
    if any(s % x.itemsize for s in x.strides):
        x = x.copy()
    return torch.from_numpy(x)


def _fill_unknown(
    idmap: IdMap, rows: torch.Tensor, raw: I64, mask: npt.NDArray[np.bool_] | None
) -> torch.Tensor:
    """``rows`` with the real positions that read row 0 looked up again."""
    unknown = rows.numpy() == 0
    if mask is not None:
        unknown &= mask
    if not unknown.any():
        return rows
    out = rows.clone()
    out[torch.from_numpy(unknown)] = idmap.lookup(raw[unknown])
    return out


def _rows(idmap: IdMap, parts: list[I64]) -> list[torch.Tensor]:
    """One lookup over every part; split back into tensors of each part's shape."""
    flat = idmap.lookup(np.concatenate([p.reshape(-1) for p in parts]))
    sizes = [int(p.size) for p in parts]
    return [chunk.reshape(p.shape) for chunk, p in zip(flat.split(sizes), parts, strict=True)]


def _cut_history(a: SampleArrays, length: int) -> SampleArrays:
    """Keep the newest ``length`` positions of the right-aligned history; sessions re-based."""
    cut = {
        name: getattr(a, name)[:, -length:]
        for name in (
            "hist_item",
            "hist_category",
            "hist_type",
            "hist_ts",
            "hist_session",
            "hist_age",
            "hist_dense",
            "hist_mask",
        )
    }
    mask, session = cut["hist_mask"], cut["hist_session"]
    first = np.where(mask, session, np.iinfo(np.int64).max).min(axis=1, keepdims=True)
    cut["hist_session"] = np.where(mask, session - first, 0)
    return replace(a, **cut)
