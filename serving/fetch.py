"""Fetching a checkpoint from the trainer over HTTP into the worker's own snapshot folder, for a
worker that shares no folder with the trainer (``TWINSTREAM_CHECKPOINT_URL``; the trainer side is
:mod:`trainer.checkpoint_server`).

The manifest comes first: bounded in size, checked against the trainer's HMAC where a key is set
(and against the announced sha256 when there is one) before anything else is fetched. Each file it
lists that a worker needs is then streamed into a temporary folder, hashed on the way and refused
when its sha256 or size differs or it takes longer than allowed; only a complete, verified copy is
renamed to ``vNNNNNNNN`` (the loader then verifies it again, as any snapshot).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from serving.manifest import (
    MAC_FILE,
    MANIFEST_FILE,
    MAX_MANIFEST_BYTES,
    REQUIRED_FILES,
    Manifest,
    SnapshotError,
    sha256_hex,
)
from serving.signing import Signer
from serving.snapshot import version_dir

CHUNK = 1 << 20


def latest_version(base_url: str, timeout_s: float = 10.0) -> int:
    """The newest checkpoint the trainer has (0: none, or the trainer does not answer)."""
    try:
        raw = _get(f"{base_url}/checkpoints/latest", 4096, timeout_s, time.monotonic() + timeout_s)
        version = json.loads(raw)["version"]
    except (SnapshotError, ValueError, KeyError, TypeError):
        return 0
    return version if isinstance(version, int) and version >= 0 else 0


def fetch_checkpoint(
    base_url: str,
    version: int,
    folder: Path,
    signer: Signer,
    max_file_bytes: int,
    timeout_s: float,
    manifest_sha256: str | None = None,
) -> Path:
    """Copy checkpoint ``version`` from the trainer into ``folder``; returns its path there.
    :class:`SnapshotError` ("missing", "signature", "checksum", "unsafe", "timeout") refuses."""
    final = version_dir(folder, version)
    if os.path.lexists(final):
        return final
    deadline = time.monotonic() + timeout_s
    url = f"{base_url}/checkpoints/{final.name}"
    raw = _get(f"{url}/{MANIFEST_FILE}", MAX_MANIFEST_BYTES, timeout_s, deadline)
    if manifest_sha256 is not None and sha256_hex(raw) != manifest_sha256:
        raise SnapshotError("checksum", "the fetched manifest is not the announced one")
    mac = None
    if signer.enabled:
        mac = _get(f"{url}/{MAC_FILE}", 256, timeout_s, deadline)
        if not signer.verify("manifest", raw, mac.decode(errors="replace").strip()):
            raise SnapshotError("signature", "the fetched manifest is not the trainer's")
    manifest = Manifest.from_json(raw)
    if manifest.version != version:
        raise SnapshotError("corrupt", f"manifest of v{manifest.version}, asked for v{version}")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".fetch-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for name in REQUIRED_FILES:
            sha = manifest.files.get(name)
            if sha is None:
                raise SnapshotError("corrupt", f"the manifest lists no {name}")
            _download(f"{url}/{name}", tmp / name, sha, max_file_bytes, timeout_s, deadline)
        (tmp / MANIFEST_FILE).write_bytes(raw)
        if mac is not None:
            (tmp / MAC_FILE).write_bytes(mac)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _open(url: str, timeout_s: float) -> Any:
    try:
        return urllib.request.urlopen(url, timeout=timeout_s)
    except urllib.error.HTTPError as err:
        raise SnapshotError("missing", f"{url}: HTTP {err.code}") from None
    except (urllib.error.URLError, OSError) as err:
        raise SnapshotError("missing", f"{url}: {err}") from None


def _get(url: str, limit: int, timeout_s: float, deadline: float) -> bytes:
    with _open(url, timeout_s) as resp:
        data: bytes = resp.read(limit + 1)
    if len(data) > limit:
        raise SnapshotError("unsafe", f"{url}: more than {limit} bytes")
    if time.monotonic() > deadline:
        raise SnapshotError("timeout", f"{url}: took longer than allowed")
    return data


def _download(
    url: str, path: Path, sha: str, limit: int, timeout_s: float, deadline: float
) -> None:
    digest, size = hashlib.sha256(), 0
    with _open(url, timeout_s) as resp, open(path, "wb") as out:
        while chunk := resp.read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise SnapshotError("unsafe", f"{url}: more than {limit} bytes")
            if time.monotonic() > deadline:
                raise SnapshotError("timeout", f"{url}: took longer than allowed")
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    if digest.hexdigest() != sha:
        raise SnapshotError("checksum", f"{url}: sha256 differs from the manifest")
