"""Model deltas: what changed in the trainer's model since its last delta, and applying it to a
serving model in place (Monolith's parameter-sync, ARCHITECTURE.md section 7).

A delta holds the embedding rows touched since the previous delta (row numbers and their new
values, per table), every dense tensor (MLPs, norms: small), and the id-map changes (ids given a
row, ids that lost theirs). It carries its ``version`` and the version it applies on (``prev``):
a scorer applies it only on exactly that version, so what it serves is always a version the
trainer had. Checkpoints share the counter: a checkpoint written with version V holds the state
of delta V, and the deltas after it apply on V.

On ``model-updates`` a delta travels in chunks under the broker's message size; each chunk is
``<u32 header length><header JSON><bytes>`` with the whole delta's size and sha256 in the header,
and (where a key is set) an HMAC of the chunk in the ``mac`` Kafka header. The body is a
safetensors blob (never unpickled).

>>> import torch
>>> d = Delta(DeltaHeader(version=5, prev=4, checkpoint=3, created=0.0, model="dare"),
...           rows={"t": (torch.tensor([2]), torch.ones(1, 2))}, dense={}, idmaps={})
>>> Delta.from_bytes(d.to_bytes()).header.prev
4
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import safetensors.torch
import torch

from models.embedding import IdMap
from models.followed_idmap import FollowedIdMap
from serving.files import safetensors_views
from serving.manifest import SnapshotError
from serving.signing import Signer

I64 = np.ndarray
MAX_HEADER = 4096


@dataclass(frozen=True)
class DeltaHeader:
    version: int  # this delta's version
    prev: int  # the version it applies on
    checkpoint: int  # the newest checkpoint of its chain (where a scorer can start)
    created: float  # Unix seconds: when the trainer cut it
    model: str
    offsets: dict[int, int] = field(default_factory=dict)  # samples trained (partition → last)


@dataclass(frozen=True)
class IdMapChange:
    """Ids given a row (sorted keys, their rows) and ids that lost theirs (sorted keys)."""

    keys: I64
    rows: I64
    removed: I64

    def __len__(self) -> int:
        return int(self.keys.size + self.removed.size)


@dataclass(frozen=True)
class Delta:
    header: DeltaHeader
    rows: dict[str, tuple[torch.Tensor, torch.Tensor]]  # table → (rows (n,), values (n, D))
    dense: dict[str, torch.Tensor]  # state_dict name → tensor
    idmaps: dict[str, IdMapChange]  # "item", "category"

    def to_bytes(self) -> bytes:
        tensors: dict[str, torch.Tensor] = {}
        for name, (rows, values) in self.rows.items():
            tensors[f"rows/{name}"], tensors[f"values/{name}"] = rows, values
        for name, value in self.dense.items():
            tensors[f"dense/{name}"] = value
        for name, change in self.idmaps.items():
            for part in ("keys", "rows", "removed"):
                tensors[f"idmap/{name}/{part}"] = torch.from_numpy(getattr(change, part))
        contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        meta = {"header": json.dumps(asdict(self.header))}
        return safetensors.torch.save(contiguous, metadata=meta)

    @classmethod
    def from_bytes(cls, data: bytes) -> Delta:
        """Parse a delta body; :class:`SnapshotError` "corrupt" when it is not one."""
        return cls.from_blob(torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy()))

    @classmethod
    def from_blob(cls, blob: torch.Tensor) -> Delta:
        """Parse a delta body held in ``blob`` (uint8): its tensors are views of that memory."""
        meta, tensors = safetensors_views(blob)
        try:
            fields = json.loads(meta["header"])
            fields["offsets"] = {int(p): int(o) for p, o in fields.get("offsets", {}).items()}
            return cls._of(DeltaHeader(**fields), tensors)
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise SnapshotError("corrupt", f"not a delta: {err!r}") from None

    @classmethod
    def _of(cls, header: DeltaHeader, tensors: dict[str, torch.Tensor]) -> Delta:
        rows = {
            k.split("/", 1)[1]: (v, tensors["values/" + k.split("/", 1)[1]])
            for k, v in tensors.items()
            if k.startswith("rows/")
        }
        dense = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("dense/")}
        names = {k.split("/")[1] for k in tensors if k.startswith("idmap/")}
        idmaps = {
            n: IdMapChange(*(tensors[f"idmap/{n}/{p}"].numpy().astype(np.int64) for p in _PARTS))
            for n in names
        }
        return cls(header, rows, dense, idmaps)


_PARTS = ("keys", "rows", "removed")


# ---------------------------------------------------------------- chunks on the wire


def chunk_messages(
    delta: Delta, signer: Signer, chunk_bytes: int
) -> list[tuple[bytes, list[tuple[str, bytes]]]]:
    """(value, Kafka headers) of every chunk of ``delta``, in order."""
    body = delta.to_bytes()
    sha = hashlib.sha256(body).hexdigest()
    count = max(1, -(-len(body) // chunk_bytes))
    h = delta.header
    out = []
    for index in range(count):
        part = body[index * chunk_bytes : (index + 1) * chunk_bytes]
        head = {
            "version": h.version,
            "prev": h.prev,
            "index": index,
            "count": count,
            "size": len(body),
            "sha256": sha,
            "created": h.created,
            "offsets": h.offsets,  # what it covers, readable without the body (benchmarks)
        }
        raw = json.dumps(head).encode()
        value = struct.pack("<I", len(raw)) + raw + part
        mac = signer.sign("delta", value)
        headers = [("kind", b"delta")] + ([] if mac is None else [("mac", mac.encode())])
        out.append((value, headers))
    return out


@dataclass
class _Pending:
    size: int
    sha256: str
    count: int
    parts: dict[int, bytes]
    started: float


class DeltaAssembler:
    """Chunks in, whole verified deltas out. Each chunk's HMAC is checked before anything of it
    is kept (where a key is set); a delta's size is bounded (``max_bytes``); at most
    ``max_pending`` deltas are assembled at once and an incomplete one is dropped after
    ``timeout_s``. :meth:`add` raises :class:`SnapshotError` for a refused chunk."""

    def __init__(
        self, signer: Signer, max_bytes: int, max_pending: int = 4, timeout_s: float = 60.0
    ):
        self.signer, self.max_bytes = signer, max_bytes
        self.max_pending, self.timeout_s = max_pending, timeout_s
        self._pending: dict[int, _Pending] = {}

    @staticmethod
    def peek(value: bytes) -> dict[str, Any]:
        """The (unverified) header of a chunk: cheap, to skip chunks of old versions."""
        if len(value) < 4:
            raise SnapshotError("corrupt", "a delta chunk shorter than its header")
        (n,) = struct.unpack_from("<I", value)
        if n > MAX_HEADER or 4 + n > len(value):
            raise SnapshotError("corrupt", f"a delta chunk header of {n} bytes")
        try:
            head = json.loads(value[4 : 4 + n])
            fields = ("version", "prev", "index", "count", "size")
            if not isinstance(head, dict) or not all(isinstance(head[f], int) for f in fields):
                raise TypeError("fields")
        except (ValueError, KeyError, TypeError) as err:
            raise SnapshotError("corrupt", f"a delta chunk header: {err!r}") from None
        head["body"] = 4 + n
        return head

    def add(self, value: bytes, mac: str | None) -> Delta | None:
        if not self.signer.verify("delta", value, mac):
            raise SnapshotError("signature", "a delta chunk without the trainer's HMAC")
        head = self.peek(value)
        if not 0 < head["size"] <= self.max_bytes or not 0 <= head["index"] < head["count"]:
            raise SnapshotError("unsafe", f"delta v{head['version']}: size {head['size']}")
        self._expire()
        version = head["version"]
        pending = self._pending.get(version)
        if pending is None:
            if len(self._pending) >= self.max_pending:
                self._pending.pop(min(self._pending))
            pending = _Pending(head["size"], str(head["sha256"]), head["count"], {}, time.time())
            self._pending[version] = pending
        if (pending.size, pending.count) != (head["size"], head["count"]):
            raise SnapshotError("corrupt", f"delta v{version}: chunks disagree on its size")
        pending.parts[head["index"]] = value[head["body"] :]
        if len(pending.parts) < pending.count:
            return None
        del self._pending[version]
        body = _joined([pending.parts[i] for i in range(pending.count)], pending.size)
        if body is None or hashlib.sha256(body.numpy().data).hexdigest() != pending.sha256:
            raise SnapshotError("checksum", f"delta v{version}: sha256 or size differs")
        delta = Delta.from_blob(body)
        if (delta.header.version, delta.header.prev) != (version, head["prev"]):
            raise SnapshotError("corrupt", f"delta v{version}: header and body disagree")
        return delta

    def _expire(self) -> None:
        old = time.time() - self.timeout_s
        for version in [v for v, p in self._pending.items() if p.started < old]:
            del self._pending[version]


def _joined(parts: list[bytes], size: int) -> torch.Tensor | None:
    """The chunks' bodies in one uint8 tensor (None when they do not add up to ``size``),
    copied a chunk at a time, so the GIL is never held for a pass over the whole delta."""
    if sum(len(p) for p in parts) != size:
        return None
    body = torch.empty(size, dtype=torch.uint8)
    out, at = body.numpy(), 0
    for part in parts:
        out[at : at + len(part)] = np.frombuffer(part, dtype=np.uint8)
        at += len(part)
    return body


# ---------------------------------------------------------------- applying


@dataclass(frozen=True)
class PreparedDelta:
    """A delta checked against the serving model, id maps already rebuilt (off the lock)."""

    delta: Delta
    tables: list[tuple[str, torch.Tensor, torch.Tensor]]  # (tensor name, rows, values)
    dense: list[tuple[str, torch.Tensor]]  # (tensor name, new value)
    mapper: Any  # a FeatureMapper with the new id maps


def prepare(serving: Any, delta: Delta) -> PreparedDelta:
    """Check every part of ``delta`` against ``serving`` (a loaded snapshot) before anything
    changes ("config" when it does not fit) and build its new id maps."""
    state = serving.model.state_dict()
    tables = []
    for name, (rows, values) in delta.rows.items():
        live = state.get(name)
        rows = rows.to(torch.int64)
        if live is None or values.shape != (rows.numel(), *live.shape[1:]):
            raise SnapshotError("config", f"delta rows of {name!r} do not fit the model")
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= live.shape[0]):
            raise SnapshotError("config", f"delta rows of {name!r} outside the table")
        tables.append((name, rows.to(live.device), values.to(live.device, live.dtype)))
    dense = []
    for name, value in delta.dense.items():
        live = state.get(name)
        if live is None or live.shape != value.shape or name in delta.rows:
            raise SnapshotError("config", f"delta tensor {name!r} does not fit the model")
        dense.append((name, value.to(live.device, live.dtype)))
    return PreparedDelta(delta, tables, dense, _new_mapper(serving.mapper, delta.idmaps))


def _new_mapper(mapper: Any, changes: dict[str, IdMapChange]) -> Any:
    if not any(len(c) for c in changes.values()):
        return mapper
    new = type(mapper)(mapper.config)
    new.items = _changed(mapper.items, changes.get("item"))
    new.categories = _changed(mapper.categories, changes.get("category"))
    return new


def _changed(idmap: IdMap | FollowedIdMap, change: IdMapChange | None) -> IdMap | FollowedIdMap:
    """``idmap`` with ``change`` applied, in O(changes) (:class:`FollowedIdMap`)."""
    if change is None or len(change) == 0:
        return idmap
    if change.rows.size and (change.rows.min() < 1 or change.rows.max() >= idmap.capacity):
        raise SnapshotError("config", "delta id-map rows outside the table")
    followed = idmap if isinstance(idmap, FollowedIdMap) else FollowedIdMap(idmap)
    try:
        return followed.changed(change.keys, change.rows, change.removed)
    except ValueError as err:
        raise SnapshotError("corrupt", f"delta id-map change: {err}") from err


@torch.no_grad()
def apply_prepared(serving: Any, prepared: PreparedDelta) -> None:
    """Write a prepared delta into ``serving`` (the model it was prepared for, or a copy of it
    with the same weights) while no request reads it: under the model holder's lock, or into
    the off-duty twin (:class:`serving.delta_follow.DeltaFollower`)."""
    state = serving.model.state_dict()
    for name, rows, values in prepared.tables:
        state[name].index_copy_(0, rows, values)
    for name, value in prepared.dense:
        state[name].copy_(value)
    serving.mapper = prepared.mapper
    serving.version = prepared.delta.header.version
