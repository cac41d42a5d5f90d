"""Versioned, verified model snapshots: written atomically by the trainer, loaded by the scorer.

Layout (DESIGN.md sections 6 and 7)::

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

The manifest also carries the reference attention statistics (:class:`AttentionWindow`): per
scored row, the normalised entropy of the attention, the mass of its ``TOP_MASS_K`` largest
weights, the mass per recency bucket and the mass on behaviours of the target's category, as
histograms over ``BINS`` equal bins of [0, 1]. The scorer builds the same histograms over live
traffic with the same class and compares them (:func:`js_divergence`, :func:`psi`).
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import safetensors.torch
import torch

from feature_store.samples import SampleArrays
from models.base import CTRModel, ModelConfig, ModelOutput
from models.batch import Batch
from models.registry import build_model
from trainer.features import FeatureMapper, MapperConfig

FORMAT_VERSION = 1
MODEL_FILE, IDMAPS_FILE, OPTIMIZER_FILE, MANIFEST_FILE = (
    "model.safetensors",
    "idmaps.safetensors",
    "optimizer.safetensors",
    "manifest.json",
)
REQUIRED_FILES = (MODEL_FILE, IDMAPS_FILE)
Reason = Literal["missing", "checksum", "format", "config", "corrupt"]
REASONS: tuple[Reason, ...] = ("missing", "checksum", "format", "config", "corrupt")
_VERSION_DIR = re.compile(r"^v(\d{8,})$")


class SnapshotError(Exception):
    """A snapshot that must not be used; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: Reason = reason
        self.detail = detail


# ---------------------------------------------------------------- reference attention statistics

BINS = 20
TOP_MASS_K = 5
RECENCY_BUCKETS = ((0, 9), (10, 49), (50, 199), (200, None))  # positions from the newest
STAT_NAMES = (
    "entropy",
    "top_mass",
    "recency_0_9",
    "recency_10_49",
    "recency_50_199",
    "recency_200_plus",
    "same_category",
)


def attended_sequence(batch: Batch, attends: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, category rows) of the sequence a model's ``ModelOutput.attention`` covers."""
    if attends == "cluster":
        return batch.cluster_mask, batch.cluster_category
    return batch.hist_mask, batch.hist_category


@torch.no_grad()
def attention_stats(
    attention: torch.Tensor,  # (B, S) weights, right-aligned sequence
    mask: torch.Tensor,  # (B, S) bool
    category: torch.Tensor,  # (B, S) category rows of the sequence
    target_category: torch.Tensor,  # (B,)
) -> npt.NDArray[np.float64]:
    """(R, len(STAT_NAMES)) statistics of the rows that put any weight on a real position.

    Weights are normalised per row first (DIN's are not softmax-normalised), so every
    statistic lies in [0, 1]. Entropy is divided by ln(real positions) (0 for one position).
    """
    w = attention.float() * mask  # (B, S)
    total = w.sum(1)  # (B,)
    keep = total > 0
    w, mask, category = w[keep], mask[keep], category[keep]
    p = w / total[keep].unsqueeze(1)  # (R, S)
    n = mask.sum(1).float()  # (R,)
    entropy = -(p * p.clamp_min(1e-30).log()).sum(1) / n.log().clamp_min(1e-12)
    entropy = torch.where(n > 1, entropy, torch.zeros_like(entropy))
    top = p.topk(min(TOP_MASS_K, p.shape[1]), dim=1).values.sum(1)
    age = torch.arange(p.shape[1] - 1, -1, -1, device=p.device)  # (S,) 0 = newest position
    buckets = [
        p[:, (age >= lo) & (age <= (hi if hi is not None else age.max()))].sum(1)
        for lo, hi in RECENCY_BUCKETS
    ]
    same = (p * (category == target_category[keep].unsqueeze(1))).sum(1)
    stats = torch.stack([entropy, top, *buckets, same], dim=1).clamp(0.0, 1.0)  # (R, 7)
    return stats.double().cpu().numpy()


class AttentionWindow:
    """The statistics of the last ``window`` scored rows, summarised as histograms.

    >>> w = AttentionWindow(window=4)
    >>> att = torch.tensor([[0.0, 0.5, 0.5], [0.0, 0.0, 1.0]])
    >>> mask = torch.tensor([[False, True, True], [False, True, True]])
    >>> cat = torch.tensor([[0, 3, 4], [0, 3, 4]])
    >>> w.update(attention_stats(att, mask, cat, torch.tensor([3, 3])))
    >>> ref = w.reference("recent")
    >>> ref["rows"], ref["histograms"]["entropy"][-1], ref["histograms"]["same_category"][0]
    (2, 1, 1)
    """

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self.window = window
        self._stats = np.zeros((window, len(STAT_NAMES)), dtype=np.float64)
        self._next = 0

    def __len__(self) -> int:
        return min(self._next, self.window)

    def update(self, stats: npt.NDArray[np.float64]) -> None:
        stats = stats[-self.window :]
        slots = (self._next + np.arange(stats.shape[0])) % self.window
        self._stats[slots] = stats
        self._next += stats.shape[0]

    def counts(self) -> npt.NDArray[np.int64]:
        """(len(STAT_NAMES), BINS) histogram counts of the window (1.0 falls in the last bin)."""
        values = self._stats[: len(self)]
        idx = np.minimum((values * BINS).astype(np.int64), BINS - 1)  # (R, 7)
        out = np.zeros((len(STAT_NAMES), BINS), dtype=np.int64)
        for j in range(len(STAT_NAMES)):
            out[j] = np.bincount(idx[:, j], minlength=BINS)
        return out

    def reference(
        self, sequence: str, counts: npt.NDArray[np.int64] | None = None
    ) -> dict[str, Any]:
        """The JSON-ready reference distribution (``counts`` overrides, e.g. summed over ranks)."""
        c = self.counts() if counts is None else counts
        return reference_dict(sequence, c)


def reference_dict(sequence: str, counts: npt.NDArray[np.int64]) -> dict[str, Any]:
    return {
        "sequence": sequence,
        "rows": int(counts[0].sum()),
        "bin_edges": np.linspace(0.0, 1.0, BINS + 1).round(6).tolist(),
        "top_mass_k": TOP_MASS_K,
        "recency_buckets": [list(b) for b in RECENCY_BUCKETS],
        "histograms": {name: counts[j].tolist() for j, name in enumerate(STAT_NAMES)},
    }


def _distribution(counts: Sequence[float], eps: float) -> npt.NDArray[np.float64]:
    c = np.asarray(counts, dtype=np.float64) + eps
    return c / c.sum()


def js_divergence(p_counts: Sequence[float], q_counts: Sequence[float]) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) between two histograms of counts.

    >>> js_divergence([5, 5], [5, 5]), round(js_divergence([10, 0], [0, 10]), 3)
    (0.0, 1.0)
    """
    p, q = _distribution(p_counts, 1e-12), _distribution(q_counts, 1e-12)
    m = 0.5 * (p + q)
    return max(0.0, 0.5 * _kl(p, m) + 0.5 * _kl(q, m))


def _kl(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> float:
    return float(np.sum(a * np.log2(a / b)))


def psi(reference: Sequence[float], live: Sequence[float], eps: float = 1e-4) -> float:
    """Population stability index of ``live`` against ``reference`` (0 = same distribution).

    >>> psi([1, 1], [1, 1])
    0.0
    """
    r, q = _distribution(reference, eps), _distribution(live, eps)
    return float(np.sum((q - r) * np.log(q / r)))


# ---------------------------------------------------------------- manifest


@dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` holds (``files``: name → sha256 hex of every other file)."""

    version: int
    created: float  # Unix seconds
    model: str
    config: ModelConfig
    mapper: MapperConfig
    topic: str | None  # the samples topic the offsets belong to
    offsets: dict[int, int]  # partition → last offset trained (resume at + 1)
    step: int  # optimizer steps so far
    samples: int  # target rows trained so far
    metrics: dict[str, float | None] = field(default_factory=dict)
    attention: dict[str, Any] | None = None
    files: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> bytes:
        doc = {
            "format_version": self.format_version,
            "version": self.version,
            "created": self.created,
            "model": self.model,
            "config": self.config.to_dict(),
            "mapper": self.mapper.to_dict(),
            "topic": self.topic,
            "offsets": {str(p): o for p, o in sorted(self.offsets.items())},
            "step": self.step,
            "samples": self.samples,
            "metrics": {k: _finite(v) for k, v in self.metrics.items()},
            "attention": self.attention,
            "files": dict(sorted(self.files.items())),
        }
        return json.dumps(doc, indent=1, allow_nan=False).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        """Parse and check ``manifest.json``; :class:`SnapshotError` ("format"/"corrupt")."""
        try:
            doc = json.loads(raw)
            fmt = doc["format_version"]
        except (ValueError, KeyError, TypeError) as err:
            raise SnapshotError("corrupt", f"manifest is not valid JSON: {err}") from None
        if not isinstance(fmt, int):
            raise SnapshotError("corrupt", f"format_version {fmt!r} is not an integer")
        if fmt > FORMAT_VERSION:
            raise SnapshotError("format", f"format {fmt} is newer than {FORMAT_VERSION}")
        try:
            return cls._from_doc(doc)
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise SnapshotError("corrupt", f"manifest fields: {err!r}") from None

    @classmethod
    def _from_doc(cls, doc: dict[str, Any]) -> Manifest:
        files = {str(k): str(v) for k, v in doc["files"].items()}
        if any("/" in k or k.startswith(".") for k in files):
            raise ValueError(f"file names must be plain: {sorted(files)}")
        return cls(
            version=int(doc["version"]),
            created=float(doc["created"]),
            model=str(doc["model"]),
            config=ModelConfig.from_dict(doc["config"]),
            mapper=MapperConfig.from_dict(doc["mapper"]),
            topic=None if doc["topic"] is None else str(doc["topic"]),
            offsets={int(p): int(o) for p, o in doc["offsets"].items()},
            step=int(doc["step"]),
            samples=int(doc["samples"]),
            metrics={str(k): None if v is None else float(v) for k, v in doc["metrics"].items()},
            attention=doc["attention"],
            files=files,
            format_version=int(doc["format_version"]),
        )


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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


def write_snapshot(directory: Path, version: int, content: SnapshotContent) -> WrittenSnapshot:
    """Write snapshot ``version`` atomically (temp folder, fsync, rename); nothing partial stays
    behind on failure. Raises ``FileExistsError`` when that version exists already."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = version_dir(directory, version)
    if final.exists():
        raise FileExistsError(f"snapshot {final} exists already")
    tmp = directory / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        files = {name: _write(tmp / name, data) for name, data in _payloads(content).items()}
        manifest = _manifest(version, content, files)
        raw = manifest.to_json()
        _write(tmp / MANIFEST_FILE, raw)
        _fsync_dir(tmp)
        os.rename(tmp, final)
        _fsync_dir(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return WrittenSnapshot(final, manifest, sha256_hex(raw))


def _payloads(content: SnapshotContent) -> dict[str, bytes]:
    weights = {k: v.detach().cpu().contiguous() for k, v in content.model.state_dict().items()}
    out = {
        MODEL_FILE: safetensors.torch.save(weights),
        IDMAPS_FILE: safetensors.torch.save(content.mapper.state_dict()),
    }
    if content.optimizers:
        out[OPTIMIZER_FILE] = _optimizer_bytes(content.optimizers)
    return out


def _manifest(version: int, content: SnapshotContent, files: dict[str, str]) -> Manifest:
    return Manifest(
        version=version,
        created=time.time(),
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


# ---------------------------------------------------------------- loading


@dataclass
class LoadedSnapshot:
    """A verified snapshot, ready to score: the model is in eval mode on ``device``."""

    path: Path
    manifest: Manifest
    manifest_sha256: str
    model: CTRModel
    mapper: FeatureMapper
    device: torch.device
    version: int = field(init=False)  # = manifest.version
    config: ModelConfig = field(init=False)  # = manifest.config
    model_name: str = field(init=False)  # = manifest.model

    def __post_init__(self) -> None:
        self.version = self.manifest.version
        self.config = self.manifest.config
        self.model_name = self.manifest.model

    def batch(self, arrays: SampleArrays) -> Batch:
        """Arrays → a model batch on the device (lookup only: unknown ids read row 0)."""
        return self.mapper.to_batch(arrays, learn=False).to(self.device)

    @torch.inference_mode()
    def score(self, arrays: SampleArrays) -> ModelOutput:
        """The model's output (logits, attention) for decoded samples or requests."""
        out: ModelOutput = self.model(self.batch(arrays))
        return out

    def predict_proba(self, arrays: SampleArrays) -> npt.NDArray[np.float32]:
        return torch.sigmoid(self.score(arrays).logits).float().cpu().numpy()

    def optimizer_bytes(self) -> bytes | None:
        """The verified optimizer state (trainer resume), if the snapshot has one."""
        if OPTIMIZER_FILE not in self.manifest.files:
            return None
        return _read_verified(self.path, OPTIMIZER_FILE, self.manifest.files[OPTIMIZER_FILE])


def load_snapshot(
    path: Path,
    expect: ModelConfig | None = None,
    *,
    expect_model: str | None = None,
    manifest_sha256: str | None = None,
    device: str | torch.device = "cpu",
    duty: float = 1.0,
) -> LoadedSnapshot:
    """Verify and load a snapshot folder; :class:`SnapshotError` says why one is refused.

    Checks, in order: the manifest exists and parses (its sha256 equals ``manifest_sha256``
    when given, e.g. the one announced on model-updates), its format is not newer than this
    code's, the model and config are the expected ones, the weights and id maps exist with their
    sha256 (the optimizer file is verified when :meth:`LoadedSnapshot.optimizer_bytes` reads
    it), and they fit the model the manifest describes.
    """
    path = Path(path)
    raw = _read(path / MANIFEST_FILE)
    digest = sha256_hex(raw)
    if manifest_sha256 is not None and digest != manifest_sha256:
        raise SnapshotError("checksum", f"manifest sha256 {digest} != {manifest_sha256}")
    manifest = Manifest.from_json(raw)
    _check_expected(manifest, expect, expect_model)
    missing = [name for name in REQUIRED_FILES if name not in manifest.files]
    if missing:
        raise SnapshotError("corrupt", f"manifest lists no {missing}")
    pace = Pacer(duty)
    files = {name: _verified(path, name, manifest.files[name], pace) for name in REQUIRED_FILES}
    model = _load_model(manifest, files[MODEL_FILE], torch.device(device), pace)
    mapper = _load_mapper(manifest.mapper, manifest.config, files[IDMAPS_FILE], pace)
    return LoadedSnapshot(path, manifest, digest, model, mapper, torch.device(device))


def _check_expected(manifest: Manifest, expect: ModelConfig | None, name: str | None) -> None:
    if name is not None and manifest.model != name:
        raise SnapshotError("config", f"snapshot holds {manifest.model!r}, expected {name!r}")
    if expect is not None and manifest.config != expect:
        diff = {
            k: (v, expect.to_dict()[k])
            for k, v in manifest.config.to_dict().items()
            if v != expect.to_dict()[k]
        }
        raise SnapshotError("config", f"config differs (snapshot, expected): {diff}")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SnapshotError("missing", f"{path} does not exist") from None
    except OSError as err:
        raise SnapshotError("missing", f"{path}: {err}") from None


def _read_verified(folder: Path, name: str, sha: str) -> bytes:
    data = _read(folder / name)
    if sha256_hex(data) != sha:
        raise SnapshotError("checksum", f"{name}: sha256 differs from the manifest")
    return data


CHUNK_BYTES = 1 << 20


class Pacer:
    """Spreads long work over time: called after each chunk with the chunk's start time, it
    sleeps so that the work takes ``duty`` of the wall time (1.0: no pauses). A scorer's reload
    thread loads at a duty below 1, so its memory traffic leaves room for the requests."""

    def __init__(self, duty: float = 1.0) -> None:
        if not 0.0 < duty <= 1.0:
            raise ValueError("duty must be in (0, 1]")
        self.duty = duty

    def __call__(self, started: float) -> None:
        if self.duty < 1.0:
            time.sleep((time.perf_counter() - started) * (1.0 - self.duty) / self.duty)


def _verified(folder: Path, name: str, sha: str, pace: Pacer) -> Path:
    """``folder/name`` once its sha256 equals the manifest's (hashed in chunks, without the
    GIL and without holding the whole file in memory)."""
    path = folder / name
    try:
        digest = hashlib.sha256()
        with path.open("rb") as file:
            while True:
                started = time.perf_counter()
                if not (chunk := file.read(CHUNK_BYTES)):
                    break
                digest.update(chunk)
                pace(started)
        digest_hex = digest.hexdigest()
    except FileNotFoundError:
        raise SnapshotError("missing", f"{path} does not exist") from None
    except OSError as err:
        raise SnapshotError("missing", f"{path}: {err}") from None
    if digest_hex != sha:
        raise SnapshotError("checksum", f"{name}: sha256 differs from the manifest")
    return path


def _tensors(path: Path, pace: Pacer) -> dict[str, torch.Tensor]:
    """The tensors of a verified safetensors file, copied into private memory.

    ``load_file`` maps the file lazily (no long copy under the GIL, which would pause the
    scoring threads); :func:`_copy` then copies it with the GIL released, so the serving model
    never depends on the file (a snapshot pruned or truncated later cannot fault it).
    """
    try:
        mapped = safetensors.torch.load_file(path)
    except Exception as err:  # safetensors raises its own error types
        raise SnapshotError(
            "corrupt", f"{path.name} is not a valid safetensors file: {err}"
        ) from None
    return {name: _copy(tensor, pace) for name, tensor in mapped.items()}


def _copy(tensor: torch.Tensor, pace: Pacer) -> torch.Tensor:
    """A private copy, made in chunks of ``CHUNK_BYTES`` (torch copies without the GIL)."""
    out = torch.empty_like(tensor, memory_format=torch.contiguous_format)
    src, dst = tensor.reshape(-1), out.view(-1)
    step = max(1, CHUNK_BYTES // max(1, tensor.element_size()))
    for start in range(0, src.numel(), step):
        began = time.perf_counter()
        dst[start : start + step].copy_(src[start : start + step])
        pace(began)
    return out


def _load_model(manifest: Manifest, path: Path, device: torch.device, pace: Pacer) -> CTRModel:
    try:
        with torch.device("meta"):  # no random init: the weights replace every tensor
            model = build_model(manifest.model, manifest.config)
    except ValueError as err:
        raise SnapshotError("corrupt", str(err)) from None
    try:
        model.load_state_dict(_tensors(path, pace), strict=True, assign=True)
    except RuntimeError as err:
        raise SnapshotError("corrupt", f"weights do not fit the model: {err}") from None
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise SnapshotError("corrupt", "the weights leave some model tensors unset")
    return model.to(device).eval()


def _load_mapper(
    config: MapperConfig, model: ModelConfig, path: Path, pace: Pacer
) -> FeatureMapper:
    if (config.n_items, config.n_categories) != (model.n_items, model.n_categories):
        raise SnapshotError("corrupt", "id-map capacities differ from the embedding tables")
    mapper = FeatureMapper(config)
    try:
        mapper.load_state_dict(_tensors(path, pace))
    except (KeyError, ValueError) as err:
        raise SnapshotError("corrupt", f"id maps: {err!r}") from None
    return mapper
