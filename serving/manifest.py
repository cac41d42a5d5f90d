"""The snapshot manifest (``manifest.json``): format, version, model and configs, trained
offsets, metrics, the attention reference and the sha256 of every other file (``manifest.mac``
signs it where a key is set); and :class:`SnapshotError` with its closed set of reasons.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from models.base import ModelConfig
from serving.features import MapperConfig

FORMAT_VERSION = 1
MODEL_FILE, IDMAPS_FILE, OPTIMIZER_FILE, MANIFEST_FILE, MAC_FILE = (
    "model.safetensors",
    "idmaps.safetensors",
    "optimizer.safetensors",
    "manifest.json",
    "manifest.mac",  # hex HMAC of manifest.json (serving.signing), written when a key is set
)
MAX_MANIFEST_BYTES = 1 << 24
REQUIRED_FILES = (MODEL_FILE, IDMAPS_FILE)
Reason = Literal[
    "missing", "checksum", "format", "config", "corrupt", "unsafe", "signature", "timeout"
]
# unsafe: a symlink, special file, path outside the folder or file over its size bound;
# signature: no or a wrong HMAC where a key is set; timeout: a read slower than allowed
REASONS: tuple[Reason, ...] = (
    "missing",
    "checksum",
    "format",
    "config",
    "corrupt",
    "unsafe",
    "signature",
    "timeout",
)


class SnapshotError(Exception):
    """A snapshot that must not be used; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: Reason = reason
        self.detail = detail


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
