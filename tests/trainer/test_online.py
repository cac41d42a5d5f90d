"""The online trainer without Kafka (``learn_arrays`` / ``snapshot``, ``run`` over a list of
messages): progressive validation, row resets, determinism, snapshots with the offsets trained,
and resuming from the newest valid snapshot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from contracts.settings import Settings
from contracts.topics import TopicNames
from feature_store import decode_samples
from feature_store.sample_format import SampleArrays
from models import ModelConfig
from serving.features import NewRows, select_rows
from serving.manifest import MANIFEST_FILE, Manifest, SnapshotError
from serving.snapshot import list_snapshots
from tests.support.events import sample_messages, synthetic_events
from trainer.config import RunReport, TrainerConfig
from trainer.online import OnlineTrainer
from trainer.source import MemorySampleSource

SETTINGS = Settings(topics=TopicNames(prefix="unit-"))  # never connects: run() over lists only
CFG = ModelConfig(n_items=2048, n_categories=64, dim=8, seq_len=20, topk=5)
IDLE_S = 2.0  # run() over a list stops this long after the last step (longer than any step)


@pytest.fixture(scope="module")
def per_partition() -> dict[int, list[bytes]]:
    return sample_messages(synthetic_events())


@pytest.fixture(scope="module")
def blobs(per_partition: dict[int, list[bytes]]) -> list[bytes]:
    return [b for p in sorted(per_partition) for b in per_partition[p]]


def batches(blobs: list[bytes], size: int = 64) -> list[SampleArrays]:
    return [decode_samples(blobs[i : i + size], CFG.seq_len) for i in range(0, len(blobs), size)]


def manifest(snapshot: Path) -> Manifest:
    return Manifest.from_json((snapshot / MANIFEST_FILE).read_bytes())


def config(tmp_path: Path, **kw: object) -> TrainerConfig:
    defaults: dict[str, object] = {
        "model_config": CFG,
        "snapshot_dir": tmp_path / "snaps",
        "model": "dare",
        "device": "cpu",
        "metrics_window": 2000,
    }
    return TrainerConfig(**(defaults | kw))  # type: ignore[arg-type]


def test_progressive_validation_learns_a_learnable_stream(
    tmp_path: Path, blobs: list[bytes]
) -> None:
    trainer = OnlineTrainer(SETTINGS, config(tmp_path))
    for arrays in batches(blobs):
        trainer.learn_arrays(arrays)
    assert trainer.step == len(batches(blobs))
    assert trainer.rows_total == sum(a.size for a in batches(blobs))
    assert trainer.metrics.auc > 0.6  # scored before learning each batch
    assert len(trainer.attention) > 0


def test_unlabelled_rows_are_not_trained(tmp_path: Path, blobs: list[bytes]) -> None:
    trainer = OnlineTrainer(SETTINGS, config(tmp_path))
    arrays = batches(blobs)[0]
    arrays.label[:] = np.nan
    trainer.learn_arrays(arrays)
    assert trainer.step == 0 and trainer.rows_total == 0


def test_same_seed_and_data_give_bit_identical_weights(tmp_path: Path, blobs: list[bytes]) -> None:
    a = OnlineTrainer(SETTINGS, config(tmp_path / "a", ttl=3))
    b = OnlineTrainer(SETTINGS, config(tmp_path / "b", ttl=3))
    for arrays in batches(blobs)[:6]:
        a.learn_arrays(arrays)
        b.learn_arrays(arrays)
    assert a.mapper.items.step == 6
    for (name, x), y in zip(
        a.model.state_dict().items(), b.model.state_dict().values(), strict=True
    ):
        assert torch.equal(x, y), name


def test_new_rows_get_fresh_weights_and_zero_optimizer_moments(
    tmp_path: Path, blobs: list[bytes]
) -> None:
    trainer = OnlineTrainer(SETTINGS, config(tmp_path))
    for arrays in batches(blobs)[:3]:
        trainer.learn_arrays(arrays)
    rows = torch.tensor([1, 2, 3])
    weight = trainer.model.attn_item.weight
    moments = trainer.learner.optimizers[0].state[weight]
    assert moments["exp_avg"][rows].abs().sum() > 0
    before = weight[rows].detach().clone()
    trainer._reset_rows(NewRows(rows, torch.zeros(0, dtype=torch.int64)))
    assert not torch.equal(weight[rows], before)
    assert (
        moments["exp_avg"][rows].abs().sum() == 0 and moments["exp_avg_sq"][rows].abs().sum() == 0
    )
    assert weight[0].abs().sum() == 0  # padding row untouched


@pytest.mark.parametrize("model", ["dare", "bst"])  # bst: a third optimizer, its encoder's
def test_a_restart_resumes_weights_id_maps_optimizer_and_counters(
    tmp_path: Path, blobs: list[bytes], model: str
) -> None:
    first = OnlineTrainer(SETTINGS, config(tmp_path, model=model))
    for arrays in batches(blobs)[:4]:
        first.learn_arrays(arrays)
    first.offsets = {0: 17, 2: 5}
    written = first.snapshot()
    assert written is not None and written.manifest.offsets == {0: 17, 2: 5}

    second = OnlineTrainer(SETTINGS, config(tmp_path, model=model))
    assert (second.step, second.rows_total, second.version) == (first.step, first.rows_total, 1)
    assert second.offsets == {0: 17, 2: 5}
    for (name, x), y in zip(
        first.model.state_dict().items(), second.model.state_dict().values(), strict=True
    ):
        assert torch.equal(x, y), name
    assert torch.equal(
        second.mapper.items.lookup(np.arange(5000)), first.mapper.items.lookup(np.arange(5000))
    )
    for arrays in batches(blobs)[4:6]:  # and both continue identically (Adam moments restored)
        first.learn_arrays(arrays)
        second.learn_arrays(arrays)
    assert torch.equal(first.model.item.weight, second.model.item.weight)
    assert second.snapshot() is not None and second.version == 2


def test_moments_of_an_older_optimizer_layout_are_dropped_and_the_weights_kept(
    tmp_path: Path, blobs: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """A BST snapshot written before its encoder had an optimizer of its own (two, not three)."""
    first = OnlineTrainer(SETTINGS, config(tmp_path, model="bst"))
    first.learn_arrays(batches(blobs)[0])
    first.learner.optimizers = first.learner.optimizers[:2]
    first.snapshot()
    second = OnlineTrainer(SETTINGS, config(tmp_path, model="bst"))
    assert "optimizer moments not restored" in caplog.text
    assert len(second.learner.optimizers) == 3 and second.step == first.step
    for (name, x), y in zip(
        first.model.state_dict().items(), second.model.state_dict().values(), strict=True
    ):
        assert torch.equal(x, y), name
    second.learn_arrays(batches(blobs)[1])
    assert second.step == first.step + 1


def test_a_snapshot_of_another_config_stops_the_trainer(tmp_path: Path, blobs: list[bytes]) -> None:
    first = OnlineTrainer(SETTINGS, config(tmp_path))
    first.learn_arrays(batches(blobs)[0])
    first.snapshot()
    other = ModelConfig(n_items=2048, n_categories=64, dim=16, seq_len=20, topk=5)
    with pytest.raises(SnapshotError) as err:
        OnlineTrainer(SETTINGS, config(tmp_path, model_config=other))
    assert err.value.reason == "config"


def test_a_corrupt_newest_snapshot_falls_back_to_the_one_before(
    tmp_path: Path, blobs: list[bytes]
) -> None:
    trainer = OnlineTrainer(SETTINGS, config(tmp_path, keep=3))
    for arrays in batches(blobs)[:2]:
        trainer.learn_arrays(arrays)
        trainer.snapshot()
    newest = list_snapshots(tmp_path / "snaps")[-1]
    (newest / "model.safetensors").write_bytes(b"truncated")
    resumed = OnlineTrainer(SETTINGS, config(tmp_path, keep=3))
    assert resumed.step == 1  # the state of v1
    assert json.loads((newest / MANIFEST_FILE).read_bytes())["step"] == 2
    resumed.learn_arrays(batches(blobs)[2])
    written = resumed.snapshot()  # numbered past the refused v2, which is left for inspection
    assert written is not None and written.path.name == "v00000003"


@pytest.mark.parametrize(
    "bad",
    [
        {"batch_size": 0},
        {"snapshot_every_steps": 0},
        {"snapshot_every_s": 0.0},
        {"keep": 0},
        {"model": "resnet"},
        {"max_wait_s": 0.0},
    ],
)
def test_invalid_configs_are_refused(tmp_path: Path, bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        config(tmp_path, **bad)


def test_a_failed_periodic_snapshot_is_logged_and_training_goes_on(
    tmp_path: Path, blobs: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = OnlineTrainer(SETTINGS, config(tmp_path))
    trainer.learn_arrays(batches(blobs)[0])

    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("trainer.online.write_snapshot", disk_full)
    trainer._snapshot(RunReport())  # periodic: logged, not raised
    assert trainer.last_snapshot is None
    with pytest.raises(OSError):
        trainer.snapshot()  # final: raised
    monkeypatch.undo()
    trainer.learn_arrays(batches(blobs)[1])
    written = trainer.snapshot()
    assert written is not None and written.manifest.step == 2


def test_a_one_row_step_is_scored_but_not_learnt(tmp_path: Path, blobs: list[bytes]) -> None:
    """The stream's first click has no negatives yet: one row, which BatchNorm cannot train on."""
    trainer = OnlineTrainer(SETTINGS, config(tmp_path))
    one = select_rows(batches(blobs)[0], np.arange(batches(blobs)[0].size) == 0)
    trainer.learn_arrays(one)  # raised "Expected more than 1 value per channel" before
    assert trainer.rows_total == 1 and len(trainer.metrics) == 1
    assert trainer.learner.steps == 0  # no optimizer step on a single row


def test_a_run_over_a_list_learns_and_snapshots_the_offsets_it_trained(
    tmp_path: Path, per_partition: dict[int, list[bytes]]
) -> None:
    cfg = config(tmp_path, batch_size=64, max_wait_s=0.01, snapshot_every_steps=5, keep=100)
    trainer = OnlineTrainer(SETTINGS, cfg)
    report = trainer.run(
        idle_timeout_s=IDLE_S, source=MemorySampleSource.from_partitions(per_partition)
    )

    messages = sum(map(len, per_partition.values()))
    assert report.stopped_by == "idle" and report.messages == messages
    assert report.steps == -(-messages // 64) and report.rows == trainer.rows_total
    assert trainer.metrics.auc > 0.6  # scored before learning each batch
    every_fifth = list(range(5, report.steps + 1, 5))
    final = [report.steps] if report.steps % 5 else []
    assert [manifest(path).step for path in report.snapshots] == every_fifth + final
    last = manifest(report.snapshots[-1])
    assert last.topic == SETTINGS.topics.samples and last.samples == report.rows
    assert last.offsets == {p: len(blobs) - 1 for p, blobs in per_partition.items()}


def test_a_run_resumes_after_the_offsets_of_the_last_snapshot(
    tmp_path: Path, per_partition: dict[int, list[bytes]]
) -> None:
    cfg = config(tmp_path, batch_size=64, max_wait_s=0.01, snapshot_every_steps=None)
    first = OnlineTrainer(SETTINGS, cfg)
    report = first.run(max_steps=3, source=MemorySampleSource.from_partitions(per_partition))
    assert report.stopped_by == "max_steps" and report.messages == 3 * 64
    assert len(report.snapshots) == 1  # the final one
    ahead = first.offsets.copy()

    second = OnlineTrainer(SETTINGS, cfg)
    assert second.offsets == ahead and second.step == 3
    rest = second.run(
        idle_timeout_s=IDLE_S, source=MemorySampleSource.from_partitions(per_partition)
    )
    assert rest.messages == sum(map(len, per_partition.values())) - 3 * 64  # none trained twice
    assert second.rows_total == report.rows + rest.rows
    assert second.last_snapshot is not None
    assert second.last_snapshot.manifest.offsets == {
        p: len(blobs) - 1 for p, blobs in per_partition.items()
    }
