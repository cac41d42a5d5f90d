"""A pinned drift baseline kept on disk, so that a restarted worker goes on with it.

A pinned :class:`~serving.drift_baseline.Baseline` is only meaningful with the *anchor* model it
was scored with, so both are written together, once per pinned baseline, into
``<folder>/epoch-<E>/`` beside the acknowledgement file (``drift-baseline.json`` in the state
folder): ``baseline.npz`` (numeric arrays only, read back with ``allow_pickle=False``),
``baseline.json`` (epoch, when, the sequence, the anchor's version and the arrays' sha256) and
the anchor as a snapshot (``anchor/v<version>/``, written and verified by
:mod:`serving.snapshot` / :mod:`serving.loading`: checksums, no pickle). The folder is written
under a temporary name and renamed, so a reader sees all of it or nothing; the first worker
process to pin an epoch writes it, the others keep theirs in memory. A worker that starts while
the acknowledgement file's epoch has such a folder loads it instead of learning a new baseline;
an acknowledgement (a higher epoch) makes it learn one, as before.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from serving.drift_baseline import Baseline
from serving.loading import LoadedSnapshot, load_snapshot
from serving.snapshot import SnapshotContent, version_dir, write_snapshot

log = logging.getLogger(__name__)
FORMAT = 1
ARRAYS = ("weights", "dists", "user_keys", "user_dists")


def epoch_dir(folder: Path, epoch: int) -> Path:
    return folder / f"epoch-{epoch:06d}"


def save_pinned(folder: Path, baseline: Baseline, anchor: Any) -> Path | None:
    """Write ``baseline`` and its ``anchor`` (a served snapshot: model, mapper, manifest) as
    ``epoch_dir(folder, baseline.epoch)``; None when another process wrote that epoch first or
    the anchor is not a snapshot. Older epochs' folders are removed."""
    final = epoch_dir(folder, baseline.epoch)
    manifest = getattr(anchor, "manifest", None)
    if final.exists() or getattr(anchor, "mapper", None) is None or manifest is None:
        return None
    tmp = folder / f".{final.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    arrays = {name: getattr(baseline, name) for name in ARRAYS}
    if baseline.reference is not None:
        arrays["reference"] = baseline.reference
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    (tmp / "baseline.npz").write_bytes(buffer.getvalue())
    content = SnapshotContent(
        model_name=manifest.model,
        model=anchor.model,
        mapper=anchor.mapper,
        topic=None,
        offsets={},
        step=manifest.step,
        samples=manifest.samples,
        attention=manifest.attention,
    )
    write_snapshot(tmp / "anchor", anchor.version, content)
    meta = {
        "format": FORMAT,
        "epoch": baseline.epoch,
        "pinned_at": baseline.pinned_at,
        "users": baseline.users,
        "sequence": baseline.sequence,
        "anchor_version": anchor.version,
        "npz_sha256": hashlib.sha256(buffer.getvalue()).hexdigest(),
    }
    (tmp / "baseline.json").write_text(json.dumps(meta))
    try:
        os.rename(tmp, final)
    except OSError:  # another process renamed its folder first
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    for old in folder.glob("epoch-*"):
        if old != final and old.name < final.name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_pinned(folder: Path, epoch: int) -> tuple[Baseline, LoadedSnapshot] | None:
    """The baseline pinned under ``epoch`` and its anchor, verified; None when there is none
    or it does not verify (then a new baseline is learnt, and the reason logged)."""
    where = epoch_dir(folder, epoch)
    if not (where / "baseline.json").is_file():
        return None
    try:
        meta = json.loads((where / "baseline.json").read_text())
        raw = (where / "baseline.npz").read_bytes()
        if meta.get("format") != FORMAT or hashlib.sha256(raw).hexdigest() != meta["npz_sha256"]:
            raise ValueError("format or sha256 differs")
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        anchor = load_snapshot(version_dir(where / "anchor", int(meta["anchor_version"])))
    except Exception as err:  # any failure means: learn a new baseline
        log.warning("drift baseline in %s not loaded (%s); learning a new one", where, err)
        return None
    baseline = Baseline(
        epoch=int(meta["epoch"]),
        pinned_at=float(meta["pinned_at"]),
        weights=arrays["weights"],
        dists=arrays["dists"],
        users=float(meta["users"]),
        reference=arrays.get("reference"),
        sequence=meta["sequence"],
        user_keys=arrays["user_keys"],
        user_dists=arrays["user_dists"],
    )
    return baseline, anchor
