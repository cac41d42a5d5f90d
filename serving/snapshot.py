"""Versioned, verified model snapshots: written atomically by the trainer, loaded by the scorer.

Layout (ARCHITECTURE.md, "Snapshots")::

    DIR/v00000042/
        model.safetensors      model weights (state_dict)
        idmaps.safetensors     the FeatureMapper's item and category id maps
        optimizer.safetensors  optimizer moments (trainer resume only; optional)
        manifest.json          format, version, model, configs, offsets, metrics, attention
                               reference, sha256 of every other file

A snapshot is written into ``DIR/.tmp-v00000042-<random>/``, every file fsynced, then renamed to
``DIR/v00000042`` in one ``os.rename``: a reader sees a complete snapshot or none, and a crash
leaves at most a ``.tmp-*`` folder (removed by :func:`remove_stale_temps`).

Loading never unpickles: weights are safetensors, everything else JSON. :func:`load_snapshot`
refuses with :class:`SnapshotError` and one of ``REASONS``: ``missing`` (folder, manifest or a
listed file absent), ``checksum`` (a file's sha256 differs from the manifest, or the manifest's
from the one announced), ``format`` (written by a newer format), ``config`` (not the model or
configuration the caller expects), ``corrupt`` (unparseable or inconsistent content).
The manifest (:mod:`serving.manifest`) also carries the reference attention statistics
(:mod:`serving.attention`). Loading is in :mod:`serving.loading`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import struct
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from models.base import CTRModel
from serving.features import FeatureMapper
from serving.manifest import (
    IDMAPS_FILE,
    MAC_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    Manifest,
    SnapshotError,
    sha256_hex,
)
from serving.signing import Signer

_VERSION_DIR = re.compile(r"^v(\d{8,})$")


# ---------------------------------------------------------------- writing


@dataclass(frozen=True)
class SnapshotContent:
    """Everything a snapshot records besides its version and creation time."""

    model_name: str
    model: CTRModel
    mapper: FeatureMapper
    topic: str | None
    offsets: dict[int, int]
    step: int
    samples: int
    metrics: dict[str, float | None] = field(default_factory=dict)
    attention: dict[str, Any] | None = None
    optimizers: Sequence[torch.optim.Optimizer] = ()  # empty: no optimizer.safetensors


@dataclass(frozen=True)
class WrittenSnapshot:
    path: Path
    manifest: Manifest
    manifest_sha256: str


def version_dir(directory: Path, version: int) -> Path:
    return Path(directory) / f"v{version:08d}"


def write_snapshot(
    directory: Path, version: int, content: SnapshotContent, signer: Signer | None = None
) -> WrittenSnapshot:
    """Write snapshot ``version`` atomically (temp folder, fsync, rename); nothing partial stays
    behind on failure. Raises ``FileExistsError`` when that version exists already. With a
    ``signer`` that has a key, ``manifest.mac`` signs the manifest."""
    return write_payloads(directory, version, content, _payloads(content), signer)


def write_payloads(
    directory: Path,
    version: int,
    content: SnapshotContent,
    payloads: dict[str, bytes],
    signer: Signer | None = None,
) -> WrittenSnapshot:
    """:func:`write_snapshot` with the files' bytes already made."""
    writers = {name: _bytes_writer(data) for name, data in payloads.items()}
    return write_files(directory, version, content, writers, signer)


FileWriter = Callable[[Path], str]  # writes one file at the path, fsynced; returns its sha256


def write_files(
    directory: Path,
    version: int,
    content: SnapshotContent,
    writers: dict[str, FileWriter],
    signer: Signer | None = None,
    created: float | None = None,
) -> WrittenSnapshot:
    """Write snapshot ``version`` atomically, each file by its writer (e.g. streamed from live
    memory by :class:`SafetensorsWriter`), then the manifest (``created``: default now)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = version_dir(directory, version)
    if final.exists():
        raise FileExistsError(f"snapshot {final} exists already")
    tmp = directory / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        files = {name: write(tmp / name) for name, write in writers.items()}
        manifest = _manifest(version, content, files, created)
        raw = manifest.to_json()
        _write(tmp / MANIFEST_FILE, raw)
        mac = None if signer is None else signer.sign("manifest", raw)
        if mac is not None:
            _write(tmp / MAC_FILE, mac.encode())
        _fsync_dir(tmp)
        os.rename(tmp, final)
        _fsync_dir(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return WrittenSnapshot(final, manifest, sha256_hex(raw))


def _bytes_writer(data: bytes) -> FileWriter:
    return lambda path: _write(path, data)


_DTYPE_NAMES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


class SafetensorsWriter:
    """A safetensors file streamed to disk tensor by tensor, chunk by chunk, hashed on the way
    (no copy of the whole file in memory). ``tensors`` are (name, dtype, shape, chunks) in file
    order, ``chunks`` a callable yielding the tensor's bytes as contiguous tensors."""

    def __init__(
        self,
        tensors: Sequence[
            tuple[str, torch.dtype, tuple[int, ...], Callable[[], Iterable[torch.Tensor]]]
        ],
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.tensors, self.metadata = list(tensors), metadata

    def header(self) -> bytes:
        doc: dict[str, Any] = {}
        if self.metadata:
            doc["__metadata__"] = self.metadata
        at = 0
        for name, dtype, shape, _ in self.tensors:
            size = math.prod(shape) * dtype.itemsize
            doc[name] = {
                "dtype": _DTYPE_NAMES[dtype],
                "shape": list(shape),
                "data_offsets": [at, at + size],
            }
            at += size
        raw = json.dumps(doc, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        return struct.pack("<Q", len(raw)) + raw

    def __call__(self, path: Path) -> str:
        digest = hashlib.sha256()
        with open(path, "wb") as fh:
            head = self.header()
            fh.write(head)
            digest.update(head)
            for name, dtype, shape, chunks in self.tensors:
                expected = math.prod(shape) * dtype.itemsize
                written = 0
                for chunk in chunks():
                    flat = chunk.detach().cpu().flatten()
                    if flat.numel() == 0:
                        continue
                    if flat.stride(0) != 1:
                        flat = flat.clone()
                    data = flat.view(torch.uint8).numpy()
                    fh.write(data.data)
                    digest.update(data.data)
                    written += data.size
                if written != expected:
                    raise ValueError(f"{name}: {written} bytes written, {expected} expected")
            fh.flush()
            os.fsync(fh.fileno())
        return digest.hexdigest()


def snapshot_payloads(content: SnapshotContent) -> dict[str, bytes]:
    """The files of a snapshot of ``content`` as bytes (weights, id maps, optimizer state)."""
    return _payloads(content)


def _payloads(content: SnapshotContent) -> dict[str, bytes]:
    weights = {k: v.detach().cpu().contiguous() for k, v in content.model.state_dict().items()}
    out = {
        MODEL_FILE: safetensors.torch.save(weights),
        IDMAPS_FILE: safetensors.torch.save(content.mapper.state_dict()),
    }
    if content.optimizers:
        out[OPTIMIZER_FILE] = _optimizer_bytes(content.optimizers)
    return out


def _manifest(
    version: int, content: SnapshotContent, files: dict[str, str], created: float | None = None
) -> Manifest:
    return Manifest(
        version=version,
        created=time.time() if created is None else created,
        model=content.model_name,
        config=content.model.config,
        mapper=content.mapper.config,
        topic=content.topic,
        offsets=dict(content.offsets),
        step=content.step,
        samples=content.samples,
        metrics=dict(content.metrics),
        attention=content.attention,
        files=files,
    )


def _write(path: Path, data: bytes) -> str:
    """Write and fsync ``data``; returns its sha256."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return sha256_hex(data)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- optimizer state


def _optimizer_bytes(optimizers: Sequence[torch.optim.Optimizer]) -> bytes:
    """Tensors of every optimizer's state as safetensors; plain numbers (e.g. an ``int``
    step) in the header's metadata as JSON. Keys: ``{optimizer}.{param}.{name}``."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, float | int] = {}
    for i, opt in enumerate(optimizers):
        for j, entry in opt.state_dict()["state"].items():
            for name, value in entry.items():
                key = f"{i}.{j}.{name}"
                if isinstance(value, torch.Tensor):
                    tensors[key] = value.detach().cpu().contiguous()
                else:
                    scalars[key] = value
    meta = {"optimizers": str(len(optimizers)), "scalars": json.dumps(scalars)}
    return safetensors.torch.save(tensors, metadata=meta)


def load_optimizer_state(data: bytes, optimizers: Sequence[torch.optim.Optimizer]) -> None:
    """Restore what :func:`_optimizer_bytes` wrote into optimizers built the same way."""
    meta = _safetensors_metadata(data)
    if int(meta.get("optimizers", "-1")) != len(optimizers):
        raise SnapshotError("config", "optimizer state is for a different set of optimizers")
    scalars: dict[str, Any] = json.loads(meta.get("scalars", "{}"))
    tensors = safetensors.torch.load(data)
    for i, opt in enumerate(optimizers):
        state: dict[int, dict[str, Any]] = {}
        for key, value in [*tensors.items(), *scalars.items()]:
            o, j, name = key.split(".", 2)
            if int(o) == i:
                state.setdefault(int(j), {})[name] = value
        opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob (8-byte header length, then a JSON header)."""
    (n,) = struct.unpack_from("<Q", data)
    header = json.loads(data[8 : 8 + n])
    meta: dict[str, str] = header.get("__metadata__", {})
    return meta


# ---------------------------------------------------------------- finding and pruning


def list_snapshots(directory: Path) -> list[Path]:
    """Complete snapshot folders (``v########``), oldest version first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _VERSION_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_snapshot(directory: Path) -> Path | None:
    """The snapshot folder with the highest version, or ``None`` (not verified: load it)."""
    snaps = list_snapshots(directory)
    return snaps[-1] if snaps else None


def snapshot_version(path: Path) -> int:
    m = _VERSION_DIR.match(Path(path).name)
    if m is None:
        raise ValueError(f"{path} is not a snapshot folder (v########)")
    return int(m.group(1))


def prune_snapshots(directory: Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest snapshots; returns the deleted folders."""
    if keep < 1:
        raise ValueError("keep must be >= 1")
    doomed = list_snapshots(directory)[:-keep]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def remove_stale_temps(directory: Path) -> list[Path]:
    """Remove ``.tmp-*`` folders a crashed writer left (call while no writer runs)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.iterdir() if p.name.startswith(".tmp-v") and p.is_dir()]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale
