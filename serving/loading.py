"""Loading a snapshot to serve or resume: every file verified against the manifest's sha256,
weights read with safetensors (never unpickled), optionally paced (:class:`Pacer`) so that a
reload beside live scoring takes a bounded share of a core.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import safetensors.torch
import torch

from feature_store.sample_format import SampleArrays
from models.base import CTRModel, ModelConfig, ModelOutput
from models.batch import Batch
from models.registry import build_model
from serving.features import FeatureMapper, MapperConfig
from serving.manifest import (
    IDMAPS_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    REQUIRED_FILES,
    Manifest,
    SnapshotError,
    sha256_hex,
)


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
