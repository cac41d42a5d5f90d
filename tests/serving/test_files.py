"""Safe snapshot reads: regular files inside the folder only, bounded in size and time, read once
into private memory; and the HMAC that says the trainer wrote what is read."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch

from serving.files import Limits, read_private, read_safetensors
from serving.manifest import SnapshotError, sha256_hex
from serving.signing import Signer


def reason(call: object) -> str:
    with pytest.raises(SnapshotError) as err:
        call()  # type: ignore[operator]
    return err.value.reason


def test_symlinks_fifos_devices_and_folders_are_refused_at_once(tmp_path: Path) -> None:
    (tmp_path / "zero").symlink_to("/dev/zero")
    (tmp_path / "real").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "sub").mkdir()
    began = time.monotonic()
    for name in ("zero", "link", "fifo", "sub"):
        assert reason(lambda n=name: read_private(tmp_path, n, Limits(1 << 20))) == "unsafe"
    (tmp_path.parent / "linked-folder").symlink_to(tmp_path)
    assert reason(lambda: read_private(tmp_path.parent / "linked-folder", "real", Limits(9)))
    assert reason(lambda: read_private(tmp_path, "../real", Limits(9))) == "unsafe"
    assert time.monotonic() - began < 5  # nothing waited on a FIFO or read /dev/zero


def test_a_file_over_its_bound_is_refused_before_it_is_read(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"y" * 1000)
    assert reason(lambda: read_private(tmp_path, "big", Limits(max_bytes=999))) == "unsafe"
    assert read_private(tmp_path, "big", Limits(max_bytes=1000)).sha256 == sha256_hex(b"y" * 1000)


def test_a_read_past_its_deadline_is_refused_as_timeout(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("serving.files.CHUNK_BYTES", 10)
    (tmp_path / "slow").write_bytes(b"z" * 100)
    slow = Limits(1 << 20, deadline=time.monotonic() + 0.2)
    assert reason(lambda: read_private(tmp_path, "slow", slow, pace=lambda s: time.sleep(0.05)))
    assert (
        reason(lambda: read_private(tmp_path, "slow", slow, pace=lambda s: time.sleep(0.05)))
        == "timeout"
    )


def test_safetensors_are_read_into_tensors_of_their_own(tmp_path: Path) -> None:
    tensors = {"a": torch.randn(5, 3), "b": torch.arange(7), "c": torch.zeros(0, 4)}
    data = safetensors.torch.save(tensors)
    (tmp_path / "t").write_bytes(data)
    got = read_safetensors(tmp_path, "t", sha256_hex(data), Limits(1 << 20))
    assert set(got) == set(tensors) and all(torch.equal(got[k], v) for k, v in tensors.items())
    (tmp_path / "t").write_bytes(b"\0" * len(data))  # private memory: the file no longer matters
    assert torch.equal(got["a"], tensors["a"])
    assert reason(lambda: read_safetensors(tmp_path, "t", sha256_hex(data), Limits(1 << 20))) == (
        "checksum"
    )
    bad = b"\x10" + b"\0" * 7 + b'{"a":{"dtype":"F32","shape":[9],"data_offsets":[0,4]}}'
    (tmp_path / "bad").write_bytes(bad)
    assert reason(lambda: read_safetensors(tmp_path, "bad", sha256_hex(bad), Limits(99))) in (
        "corrupt"
    )


def test_a_file_growing_while_read_is_refused(tmp_path: Path) -> None:
    (tmp_path / "g").write_bytes(b"a" * (4 << 20))

    def grow(started: float) -> None:  # called after each chunk read
        with open(tmp_path / "g", "ab") as fh:
            fh.write(b"b")

    assert reason(lambda: read_private(tmp_path, "g", Limits(1 << 30), grow)) == "checksum"


def test_each_context_and_key_signs_differently() -> None:
    trainer, other = Signer.of("k1"), Signer.of("k2")
    mac = trainer.sign("delta", b"payload")
    assert trainer.verify("delta", b"payload", mac)
    assert not trainer.verify("delta", b"payload!", mac)
    assert not trainer.verify("announcement", b"payload", mac)
    assert not other.verify("delta", b"payload", mac)
    assert not trainer.verify("delta", b"payload", None) and not trainer.verify("delta", b"p", 7)
    assert Signer.of("").sign("delta", b"x") is None and Signer.of(None).verify("delta", b"", "")
