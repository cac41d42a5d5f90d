"""Loading a snapshot to serve or resume: every file read safely (:mod:`serving.files`: no
symlinks or special files, bounded in size and time) and verified against the manifest's sha256,
the manifest against its HMAC where a key is set (:mod:`serving.signing`), weights read as
safetensors (never unpickled), optionally paced (:class:`Pacer`) so that a reload beside live
scoring takes a bounded share of a core.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from feature_store.sample_format import SampleArrays
from models.base import CTRModel, ModelConfig, ModelOutput
from models.batch import Batch
from models.registry import build_model
from serving.features import FeatureMapper, MapperConfig
from serving.files import Limits, read_private, read_safetensors
from serving.manifest import (
    IDMAPS_FILE,
    MAC_FILE,
    MANIFEST_FILE,
    MAX_MANIFEST_BYTES,
    MODEL_FILE,
    OPTIMIZER_FILE,
    REQUIRED_FILES,
    Manifest,
    SnapshotError,
    sha256_hex,
)
from serving.signing import Signer


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
        private = read_private(self.path, OPTIMIZER_FILE, Limits(DEFAULT_MAX_FILE_BYTES))
        if private.sha256 != self.manifest.files[OPTIMIZER_FILE]:
            raise SnapshotError("checksum", f"{OPTIMIZER_FILE}: sha256 differs from the manifest")
        return private.bytes()


DEFAULT_MAX_FILE_BYTES = 1 << 36  # 64 GiB: no single snapshot file is larger


def load_snapshot(
    path: Path,
    expect: ModelConfig | None = None,
    *,
    expect_model: str | None = None,
    manifest_sha256: str | None = None,
    device: str | torch.device = "cpu",
    duty: float = 1.0,
    signer: Signer | None = None,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    timeout_s: float | None = None,
) -> LoadedSnapshot:
    """Verify and load a snapshot folder; :class:`SnapshotError` says why one is refused.

    Checks, in order: the folder is a folder (not a symlink), the manifest is a regular file that
    parses (its sha256 equals ``manifest_sha256`` when given, e.g. the one announced on
    model-updates; ``manifest.mac`` signs it when ``signer`` has a key), its format is not newer
    than this code's, the model and config are the expected ones, the weights and id maps are
    regular files of at most ``max_file_bytes`` with their sha256 (the optimizer file is verified
    when :meth:`LoadedSnapshot.optimizer_bytes` reads it), and they fit the model the manifest
    describes. Reading everything takes at most ``timeout_s`` ("timeout").
    """
    path = Path(path)
    deadline = time.monotonic() + (float("inf") if timeout_s is None else timeout_s)
    raw = read_private(path, MANIFEST_FILE, Limits(MAX_MANIFEST_BYTES, deadline)).bytes()
    digest = sha256_hex(raw)
    if manifest_sha256 is not None and digest != manifest_sha256:
        raise SnapshotError("checksum", f"manifest sha256 {digest} != {manifest_sha256}")
    _check_signature(path, raw, signer, deadline)
    manifest = Manifest.from_json(raw)
    _check_expected(manifest, expect, expect_model)
    missing = [name for name in REQUIRED_FILES if name not in manifest.files]
    if missing:
        raise SnapshotError("corrupt", f"manifest lists no {missing}")
    pace, limits = Pacer(duty), Limits(max_file_bytes, deadline)
    files = {
        name: _verified(path, name, manifest.files[name], limits, pace) for name in REQUIRED_FILES
    }
    model = _load_model(manifest, files[MODEL_FILE], torch.device(device))
    mapper = _load_mapper(manifest.mapper, manifest.config, files[IDMAPS_FILE])
    return LoadedSnapshot(path, manifest, digest, model, mapper, torch.device(device))


def _check_signature(path: Path, raw: bytes, signer: Signer | None, deadline: float) -> None:
    """Where ``signer`` has a key, ``manifest.mac`` must sign ``raw`` ("signature")."""
    if signer is None or not signer.enabled:
        return
    try:
        mac = read_private(path, MAC_FILE, Limits(256, deadline)).bytes().decode().strip()
    except SnapshotError as err:
        raise SnapshotError("signature", f"no readable {MAC_FILE}: {err}") from None
    except UnicodeDecodeError:
        mac = ""
    if not signer.verify("manifest", raw, mac):
        raise SnapshotError("signature", f"{MAC_FILE} does not sign the manifest")


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


def _verified(
    folder: Path, name: str, sha: str, limits: Limits, pace: Pacer
) -> dict[str, torch.Tensor]:
    """The tensors of ``folder/name``, read once into private memory (in chunks, paced, the GIL
    released while reading and hashing) once their sha256 equals the manifest's. The serving
    model never depends on the file: a snapshot pruned, truncated or rewritten later cannot
    change or fault it."""
    return read_safetensors(folder, name, sha, limits, pace)


def _load_model(
    manifest: Manifest, tensors: dict[str, torch.Tensor], device: torch.device
) -> CTRModel:
    try:
        with torch.device("meta"):  # no random init: the weights replace every tensor
            model = build_model(manifest.model, manifest.config)
    except ValueError as err:
        raise SnapshotError("corrupt", str(err)) from None
    try:
        model.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as err:
        raise SnapshotError("corrupt", f"weights do not fit the model: {err}") from None
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise SnapshotError("corrupt", "the weights leave some model tensors unset")
    return model.to(device).eval()


def _load_mapper(
    config: MapperConfig, model: ModelConfig, tensors: dict[str, torch.Tensor]
) -> FeatureMapper:
    if (config.n_items, config.n_categories) != (model.n_items, model.n_categories):
        raise SnapshotError("corrupt", "id-map capacities differ from the embedding tables")
    mapper = FeatureMapper(config)
    try:
        mapper.load_state_dict(tensors)
    except (KeyError, ValueError) as err:
        raise SnapshotError("corrupt", f"id maps: {err!r}") from None
    return mapper
