"""Snapshots: identical outputs after a round trip, every refusal reason, no unpickling ever,
retention, atomic writes, optimizer state, and the reference attention statistics."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch

import models
from feature_store.cluster_leaves import cluster_dtype
from feature_store.sample_format import SampleArrays, decode_samples, encode_sample, make_targets
from feature_store.state_format import behaviour_dtype
from models import ModelConfig
from serving.attention import STAT_NAMES, AttentionWindow, attention_stats
from serving.features import FeatureMapper, MapperConfig
from serving.loading import load_snapshot
from serving.manifest import (
    FORMAT_VERSION,
    IDMAPS_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    SnapshotError,
    sha256_hex,
)
from serving.snapshot import (
    SnapshotContent,
    latest_snapshot,
    list_snapshots,
    load_optimizer_state,
    prune_snapshots,
    remove_stale_temps,
    write_snapshot,
)
from trainer.loop import Learner, LearnerConfig

CFG = ModelConfig(n_items=64, n_categories=8, dim=4, seq_len=6, topk=3)


def arrays(n: int = 6, seed: int = 0) -> SampleArrays:
    rng = np.random.default_rng(seed)
    blobs = []
    for user in range(n):
        recent = np.zeros(int(rng.integers(1, 8)), behaviour_dtype(0))
        recent["item"] = rng.integers(100, 140, recent.shape[0])
        recent["category"] = recent["item"] % 5
        clusters = np.zeros(2, cluster_dtype(0))
        clusters["item"], clusters["category"], clusters["size"] = [101, 102], [1, 2], [3, 1]
        items = rng.integers(100, 140, 3)
        targets = make_targets(items, items % 5, labels=[1.0, 0.0, 0.0])
        blobs.append(
            encode_sample(user=user, ts=1e9, targets=targets, recent=recent, clusters=clusters)
        )
    return decode_samples(blobs, recent_length=CFG.seq_len)


def trained(name: str = "dare") -> tuple[Learner, FeatureMapper]:
    torch.manual_seed(0)
    learner = Learner(models.build_model(name, CFG), LearnerConfig(device="cpu"))
    mapper = FeatureMapper(MapperConfig.for_model(CFG))
    for seed in range(3):
        learner.learn_many(mapper.to_batch(arrays(seed=seed), learn=True))
    return learner, mapper


def content(learner: Learner, mapper: FeatureMapper, optimizers: bool = True) -> SnapshotContent:
    return SnapshotContent(
        model_name=learner.model.name,
        model=learner.model,
        mapper=mapper,
        topic="t-samples",
        offsets={0: 41, 3: 7},
        step=learner.steps,
        samples=54,
        metrics={"auc": 0.61, "logloss": float("nan")},
        attention=None,
        optimizers=learner.optimizers if optimizers else (),
    )


@pytest.fixture()
def snap(tmp_path: Path) -> Path:
    learner, mapper = trained()
    return write_snapshot(tmp_path, 1, content(learner, mapper)).path


def rewrite_manifest(folder: Path, **changes: object) -> None:
    doc = json.loads((folder / MANIFEST_FILE).read_bytes())
    doc.update(changes)
    (folder / MANIFEST_FILE).write_text(json.dumps(doc))


def replace_file(folder: Path, name: str, data: bytes) -> None:
    """Swap a file and fix its checksum in the manifest (what a careful attacker would do)."""
    (folder / name).write_bytes(data)
    doc = json.loads((folder / MANIFEST_FILE).read_bytes())
    doc["files"][name] = sha256_hex(data)
    (folder / MANIFEST_FILE).write_text(json.dumps(doc))


def reason(path: Path, **kw: Any) -> str:
    with pytest.raises(SnapshotError) as err:
        load_snapshot(path, **kw)
    return err.value.reason


# ---------------------------------------------------------------- round trip


@pytest.mark.parametrize("name", ["dare", "twin_v2", "din"])
def test_round_trip_scores_exactly_like_the_trained_model(tmp_path: Path, name: str) -> None:
    learner, mapper = trained(name)
    written = write_snapshot(tmp_path, 3, content(learner, mapper))
    loaded = load_snapshot(written.path, CFG, expect_model=name)
    data = arrays(seed=9)
    expected = learner.predict(mapper.to_batch(data, learn=False))
    got = loaded.score(data)
    assert torch.equal(got.logits, expected.logits)
    assert expected.attention is not None and got.attention is not None
    assert torch.equal(got.attention, expected.attention)
    assert not loaded.model.training
    assert loaded.version == 3 and loaded.config == CFG and loaded.model_name == name
    assert loaded.manifest_sha256 == written.manifest_sha256


def test_manifest_records_offsets_metrics_and_the_sha256_of_every_file(snap: Path) -> None:
    doc = json.loads((snap / MANIFEST_FILE).read_bytes())
    assert doc["format_version"] == FORMAT_VERSION and doc["version"] == 1
    assert doc["offsets"] == {"0": 41, "3": 7} and doc["topic"] == "t-samples"
    assert doc["metrics"] == {"auc": 0.61, "logloss": None}  # NaN is not JSON: null
    assert doc["config"] == CFG.to_dict() and doc["model"] == "dare"
    assert set(doc["files"]) == {MODEL_FILE, IDMAPS_FILE, OPTIMIZER_FILE}
    for name, sha in doc["files"].items():
        assert sha256_hex((snap / name).read_bytes()) == sha
    manifest = load_snapshot(snap).manifest
    assert manifest.offsets == {0: 41, 3: 7} and manifest.metrics["logloss"] is None


def test_optimizer_state_round_trip_continues_training_identically(tmp_path: Path) -> None:
    learner, mapper = trained()
    written = write_snapshot(tmp_path, 1, content(learner, mapper))
    loaded = load_snapshot(written.path)
    twin = Learner(loaded.model.train(), LearnerConfig(device="cpu"))
    blob = loaded.optimizer_bytes()
    assert blob is not None
    load_optimizer_state(blob, twin.optimizers)
    batch = loaded.mapper.to_batch(arrays(seed=5), learn=True)
    mapper.to_batch(arrays(seed=5), learn=True)
    learner.learn_many(batch)
    twin.learn_many(batch)
    for (k, a), b in zip(
        learner.model.state_dict().items(), twin.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k


def test_snapshots_without_optimizer_state_have_no_optimizer_file(tmp_path: Path) -> None:
    learner, mapper = trained()
    written = write_snapshot(tmp_path, 1, content(learner, mapper, optimizers=False))
    assert not (written.path / OPTIMIZER_FILE).exists()
    assert load_snapshot(written.path).optimizer_bytes() is None


# ---------------------------------------------------------------- refusals


def test_a_paced_load_gives_the_same_private_weights(snap: Path, monkeypatch: Any) -> None:
    """The scorer's reload (duty < 1, small chunks) equals a plain load, in memory of its own."""
    monkeypatch.setattr("serving.files.CHUNK_BYTES", 4096)  # many chunks, each paced
    plain, paced = load_snapshot(snap), load_snapshot(snap, duty=0.25)
    ours = paced.model.state_dict()
    (snap / MODEL_FILE).write_bytes(b"\0" * (snap / MODEL_FILE).stat().st_size)  # not a file view
    for name, a in plain.model.state_dict().items():
        b = ours[name]
        assert torch.equal(a, b), name
    with pytest.raises(ValueError):
        load_snapshot(snap, duty=0.0)


def test_a_missing_folder_or_file_is_refused_as_missing(snap: Path, tmp_path: Path) -> None:
    assert reason(tmp_path / "v00000099") == "missing"
    (snap / IDMAPS_FILE).unlink()
    assert reason(snap) == "missing"


def test_a_flipped_byte_or_a_truncated_file_is_refused_as_checksum(snap: Path) -> None:
    data = bytearray((snap / MODEL_FILE).read_bytes())
    data[-1] ^= 0xFF
    (snap / MODEL_FILE).write_bytes(bytes(data))
    assert reason(snap) == "checksum"


def test_truncated_id_maps_are_refused_as_checksum(snap: Path) -> None:
    data = (snap / IDMAPS_FILE).read_bytes()
    (snap / IDMAPS_FILE).write_bytes(data[: len(data) // 2])
    assert reason(snap) == "checksum"


def test_a_manifest_other_than_the_announced_one_is_refused(snap: Path) -> None:
    assert reason(snap, manifest_sha256="0" * 64) == "checksum"
    good = sha256_hex((snap / MANIFEST_FILE).read_bytes())
    assert load_snapshot(snap, manifest_sha256=good).version == 1


def test_a_newer_format_is_refused_as_format(snap: Path) -> None:
    rewrite_manifest(snap, format_version=FORMAT_VERSION + 1)
    assert reason(snap) == "format"


def test_another_config_or_model_is_refused_as_config(snap: Path) -> None:
    other = ModelConfig(n_items=64, n_categories=8, dim=8, seq_len=6, topk=3)
    assert reason(snap, expect=other) == "config"
    assert reason(snap, expect_model="din") == "config"
    assert load_snapshot(snap, expect=CFG, expect_model="dare").version == 1


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda f: (f / MANIFEST_FILE).write_bytes(b"{not json"), id="bad-json"),
        pytest.param(lambda f: rewrite_manifest(f, config={"dim": 4}), id="bad-config"),
        pytest.param(lambda f: rewrite_manifest(f, model="no-such-model"), id="bad-model"),
        pytest.param(lambda f: rewrite_manifest(f, format_version="1"), id="bad-format-type"),
        pytest.param(lambda f: replace_file(f, MODEL_FILE, b"\x00" * 64), id="garbage-weights"),
        pytest.param(
            lambda f: replace_file(
                f, MODEL_FILE, safetensors.torch.save({"item.embedding.weight": torch.zeros(2)})
            ),
            id="weights-of-another-model",
        ),
        pytest.param(
            lambda f: replace_file(f, IDMAPS_FILE, safetensors.torch.save({"x": torch.zeros(1)})),
            id="idmaps-without-keys",
        ),
        pytest.param(
            lambda f: rewrite_manifest(f, files={"../model.safetensors": "0" * 64}),
            id="path-outside-the-folder",
        ),
    ],
)
def test_unparseable_or_inconsistent_content_is_refused_as_corrupt(
    snap: Path, damage: Callable[[Path], object]
) -> None:
    damage(snap)
    assert reason(snap) == "corrupt"


# ---------------------------------------------------------------- never unpickle


class _Payload:
    """Unpickling this creates the marker file (a stand-in for arbitrary code execution)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


@pytest.fixture()
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if anything reaches pickle or torch.load while the test runs."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("snapshot loading reached an unpickler")

    for target, name in (
        (pickle, "loads"),
        (pickle, "load"),
        (pickle, "Unpickler"),
        (torch, "load"),
    ):
        monkeypatch.setattr(target, name, forbidden)


def test_the_payload_is_live_when_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_Payload(marker))).close()
    assert marker.exists()  # so the refusals below prove something


@pytest.mark.parametrize("target", [MODEL_FILE, IDMAPS_FILE, MANIFEST_FILE])
@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_a_malicious_pickle_is_refused_and_never_runs(
    snap: Path, tmp_path: Path, target: str, kind: str, no_unpickling: None
) -> None:
    marker = tmp_path / "pwned"
    payload_path = tmp_path / "payload.bin"
    if kind == "pickle":
        payload_path.write_bytes(pickle.dumps(_Payload(marker)))
    else:
        torch.save({"weights": _Payload(marker)}, payload_path)
    payload = payload_path.read_bytes()
    if target == MANIFEST_FILE:
        (snap / MANIFEST_FILE).write_bytes(payload)
    else:
        replace_file(snap, target, payload)  # checksum fixed: only the format check stands
    assert reason(snap) == "corrupt"
    assert not marker.exists()


# ---------------------------------------------------------------- layout, retention, atomicity


def test_versions_are_listed_in_order_and_the_latest_is_found(tmp_path: Path) -> None:
    learner, mapper = trained()
    for version in (2, 10, 1):
        write_snapshot(tmp_path, version, content(learner, mapper, optimizers=False))
    (tmp_path / "notes").mkdir()
    (tmp_path / ".tmp-v00000011-abcd").mkdir()
    assert [p.name for p in list_snapshots(tmp_path)] == ["v00000001", "v00000002", "v00000010"]
    assert latest_snapshot(tmp_path) == tmp_path / "v00000010"
    assert latest_snapshot(tmp_path / "absent") is None


def test_retention_keeps_the_newest(tmp_path: Path) -> None:
    learner, mapper = trained()
    for version in range(1, 6):
        write_snapshot(tmp_path, version, content(learner, mapper, optimizers=False))
    deleted = prune_snapshots(tmp_path, keep=2)
    assert [p.name for p in deleted] == ["v00000001", "v00000002", "v00000003"]
    assert [p.name for p in list_snapshots(tmp_path)] == ["v00000004", "v00000005"]


def test_a_failed_write_leaves_no_partial_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    learner, mapper = trained()

    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("serving.snapshot.os.rename", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_snapshot(tmp_path, 1, content(learner, mapper))
    assert list(tmp_path.iterdir()) == []


def test_an_existing_version_is_never_overwritten(snap: Path) -> None:
    learner, mapper = trained()
    before = (snap / MANIFEST_FILE).read_bytes()
    with pytest.raises(FileExistsError):
        write_snapshot(snap.parent, 1, content(learner, mapper))
    assert (snap / MANIFEST_FILE).read_bytes() == before
    assert [p.name for p in snap.parent.iterdir()] == [snap.name]


def test_stale_temp_folders_of_a_crashed_writer_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".tmp-v00000003-dead").mkdir()
    (tmp_path / ".tmp-v00000003-dead" / MODEL_FILE).write_bytes(b"half")
    assert [p.name for p in remove_stale_temps(tmp_path)] == [".tmp-v00000003-dead"]
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- attention statistics


def stats(
    att: list[list[float]], mask: list[list[bool]], cat: list[list[int]], target: list[int]
) -> np.ndarray:
    return attention_stats(
        torch.tensor(att), torch.tensor(mask), torch.tensor(cat), torch.tensor(target)
    )


def col(name: str) -> int:
    return STAT_NAMES.index(name)


def test_uniform_attention_has_entropy_one_and_one_hot_zero() -> None:
    s = stats(
        [[0.0, 0.25, 0.25, 0.25, 0.25], [0.0, 0.0, 0.0, 1.0, 0.0]],
        [[False, True, True, True, True], [False, True, True, True, True]],
        [[0, 1, 1, 2, 2], [0, 1, 1, 2, 2]],
        [2, 2],
    )
    assert s[:, col("entropy")] == pytest.approx([1.0, 0.0])
    assert s[:, col("same_category")] == pytest.approx([0.5, 1.0])
    assert s[:, col("top_mass")] == pytest.approx([1.0, 1.0])  # four positions, top-5 mass


def test_unnormalised_weights_are_normalised_and_rows_without_weight_dropped() -> None:
    s = stats(
        [[0.0, 2.0, 2.0], [0.0, 0.0, 0.0]], [[False, True, True]] * 2, [[0, 1, 1]] * 2, [1, 1]
    )
    assert s.shape == (1, len(STAT_NAMES))
    assert s[0, col("entropy")] == pytest.approx(1.0)


def test_recency_buckets_split_the_mass_by_distance_from_the_newest() -> None:
    length = 260
    att = torch.zeros(1, length)
    att[0, -1], att[0, -20], att[0, -100], att[0, -250] = 0.1, 0.2, 0.3, 0.4
    s = attention_stats(
        att, torch.ones(1, length, dtype=torch.bool), torch.zeros(1, length), torch.zeros(1)
    )
    buckets = [
        col(n) for n in ("recency_0_9", "recency_10_49", "recency_50_199", "recency_200_plus")
    ]
    assert s[0, buckets] == pytest.approx([0.1, 0.2, 0.3, 0.4])


def test_the_window_keeps_the_newest_rows_and_histograms_count_them() -> None:
    w = AttentionWindow(window=3)
    row = np.full((1, len(STAT_NAMES)), 0.5)
    w.update(np.zeros((5, len(STAT_NAMES))))
    w.update(row)
    counts = w.counts()
    assert len(w) == 3 and counts.sum(axis=1).tolist() == [3] * len(STAT_NAMES)
    assert counts[0, 0] == 2 and counts[0, 10] == 1
    ref = w.reference("cluster")
    assert ref["sequence"] == "cluster" and ref["rows"] == 3
    assert len(ref["bin_edges"]) == len(ref["histograms"]["entropy"]) + 1
