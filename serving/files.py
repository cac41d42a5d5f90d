"""Reading a snapshot's files safely: only regular files inside the snapshot folder, never through
a symlink, each read bounded in size and time, and hashed as it is read into private memory.

A file is opened relative to its folder's descriptor with ``O_NOFOLLOW`` (a symlink, e.g. to
``/dev/zero``, fails at once) and ``O_NONBLOCK`` (a FIFO does not wait for a writer); ``fstat``
must then say "regular file" no larger than the caller's bound. The bytes are read once into a
buffer of their own and hashed on the way, so what is verified is exactly what is used: a file
changed after the check cannot change the loaded model. Safetensors files are read straight
into tensors of their own (:func:`read_safetensors`), never unpickled.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "a").write_bytes(b"abc")
>>> (folder / "b").symlink_to("/dev/zero")
>>> read_private(folder, "a", Limits(max_bytes=10)).bytes()
b'abc'
>>> read_private(folder, "b", Limits(max_bytes=10))
Traceback (most recent call last):
...
serving.manifest.SnapshotError: unsafe: b: not a regular file inside its folder (symlink?)
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from serving.manifest import SnapshotError

CHUNK_BYTES = 1 << 20
MAX_HEADER_BYTES = 1 << 26  # a safetensors JSON header (names, shapes, offsets)
_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class Limits:
    """How much one file may hold and until when (``time.monotonic()``) reading it may go on."""

    max_bytes: int
    deadline: float = field(default=float("inf"))

    def check_time(self, name: str) -> None:
        if time.monotonic() > self.deadline:
            raise SnapshotError("timeout", f"{name}: reading took longer than allowed")


@dataclass(frozen=True)
class PrivateFile:
    """A file's bytes in memory of their own, with their sha256."""

    data: torch.Tensor  # uint8 (size,)
    sha256: str

    def bytes(self) -> bytes:
        return self.data.numpy().tobytes()


def open_folder(folder: Path) -> int:
    """A descriptor of ``folder``, which must be a directory and not a symlink."""
    try:
        return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise SnapshotError("missing", f"{folder} does not exist") from None
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise SnapshotError("unsafe", f"{folder} is not a folder (symlink?)") from None
        raise SnapshotError("missing", f"{folder}: {err}") from None


def read_private(
    folder: Path,
    name: str,
    limits: Limits,
    pace: Callable[[float], None] = lambda started: None,
) -> PrivateFile:
    """``folder/name`` read into a private buffer and hashed; refused when it is a symlink or
    not a regular file ("unsafe"), missing ("missing"), too large ("unsafe") or slow
    ("timeout"). ``pace`` is called after each chunk with the chunk's start time."""
    fd = _open_in(folder, name)
    try:
        size = _bounded_size(fd, name, limits)
        return _read_hashing(fd, name, size, limits, pace)
    finally:
        os.close(fd)


def _open_in(folder: Path, name: str) -> int:
    """A descriptor of the regular file ``name`` directly inside ``folder`` (no symlink on the
    way, no path in ``name``); refused as "unsafe" or "missing"."""
    if "/" in name or name.startswith("."):
        raise SnapshotError("unsafe", f"{name!r} is not a plain file name")
    dir_fd = open_folder(folder)
    try:
        return _open_regular(name, dir_fd)
    finally:
        os.close(dir_fd)


def _bounded_size(fd: int, name: str, limits: Limits) -> int:
    size = os.fstat(fd).st_size
    if size > limits.max_bytes:
        raise SnapshotError("unsafe", f"{name}: {size} bytes, more than {limits.max_bytes}")
    return size


def _open_regular(name: str, dir_fd: int) -> int:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        raise SnapshotError("missing", f"{name} does not exist") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise SnapshotError(
                "unsafe", f"{name}: not a regular file inside its folder (symlink?)"
            ) from None
        raise SnapshotError("missing", f"{name}: {err}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SnapshotError("unsafe", f"{name}: not a regular file (device, FIFO, folder)")
    return fd


def _read_hashing(
    fd: int, name: str, size: int, limits: Limits, pace: Callable[[float], None]
) -> PrivateFile:
    """Read exactly ``size`` bytes (the size ``fstat`` gave) in chunks, hashing each."""
    buffer = torch.empty(size, dtype=torch.uint8)
    with _Stream(fd, name, limits, pace) as stream:
        stream.read_into(buffer)
        stream.end()
        return PrivateFile(buffer, stream.digest.hexdigest())


class _Stream:
    """A file read front to back in chunks into caller buffers, hashed, timed and paced."""

    def __init__(self, fd: int, name: str, limits: Limits, pace: Callable[[float], None]):
        self.file = os.fdopen(os.dup(fd), "rb", buffering=0)
        self.name, self.limits, self.pace = name, limits, pace
        self.digest = hashlib.sha256()

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()

    def read_into(self, target: torch.Tensor) -> None:
        """Fill ``target`` (contiguous) with the next ``target.nbytes`` bytes."""
        flat = target.reshape(-1).view(torch.uint8)
        view = flat.numpy().data if target.nbytes else None
        done, size = 0, target.nbytes
        while view is not None and done < size:
            self.limits.check_time(self.name)
            started = time.perf_counter()
            got = self.file.readinto(view[done : min(size, done + CHUNK_BYTES)])
            if not got:
                raise SnapshotError("checksum", f"{self.name}: shorter than its size while read")
            self.digest.update(view[done : done + got])
            done += got
            self.pace(started)

    def drain(self) -> None:
        """Hash the rest of the file (bounded by the file's size at open)."""
        scratch = torch.empty(CHUNK_BYTES, dtype=torch.uint8)
        left = self.limits.max_bytes
        while left > 0:
            self.limits.check_time(self.name)
            got = self.file.readinto(scratch.numpy().data[: min(left, CHUNK_BYTES)])
            if not got:
                return
            self.digest.update(scratch.numpy().data[:got])
            left -= got

    def end(self) -> None:
        if self.file.read(1):
            raise SnapshotError("checksum", f"{self.name}: grew while read")


def read_safetensors(
    folder: Path,
    name: str,
    sha256: str,
    limits: Limits,
    pace: Callable[[float], None] = lambda started: None,
) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file ``folder/name``, read in one pass straight into
    tensors of their own (aligned as torch allocates them, so results are bit-identical to the
    trainer's) and hashed on the way; refused as :func:`read_private` refuses, "checksum" when
    the file's sha256 is not ``sha256``, "corrupt" when it is but the header is invalid or its
    entries do not tile the file."""
    fd = _open_in(folder, name)
    try:
        size = _bounded_size(fd, name, limits)
        with _Stream(fd, name, limits, pace) as stream:
            try:
                tensors = _read_tensors(stream, size)
            except SnapshotError as err:
                if err.reason != "corrupt":
                    raise
                stream.drain()  # an altered file is a checksum error, not a corrupt one
                _check_digest(stream, sha256)
                raise
            stream.end()
            _check_digest(stream, sha256)
            return tensors
    finally:
        os.close(fd)


def _check_digest(stream: _Stream, sha256: str) -> None:
    if stream.digest.hexdigest() != sha256:
        raise SnapshotError("checksum", f"{stream.name}: sha256 differs from the manifest")


def _read_tensors(stream: _Stream, size: int) -> dict[str, torch.Tensor]:
    prefix = torch.empty(8, dtype=torch.uint8)
    if size < 8:
        raise SnapshotError("corrupt", f"{stream.name}: {size} bytes, no safetensors header")
    stream.read_into(prefix)
    (n,) = struct.unpack("<Q", prefix.numpy().tobytes())
    if n > min(MAX_HEADER_BYTES, size - 8):
        raise SnapshotError("corrupt", f"{stream.name}: header of {n} bytes in {size}")
    header = torch.empty(n, dtype=torch.uint8)
    stream.read_into(header)
    try:
        entries = _entries(json.loads(header.numpy().tobytes()), size - 8 - n)
    except (ValueError, KeyError, TypeError) as err:
        raise SnapshotError(
            "corrupt", f"{stream.name}: not a valid safetensors file: {err}"
        ) from None
    out: dict[str, torch.Tensor] = {}
    for key, dtype, shape, _ in entries:  # in file order, tiling the data
        out[key] = torch.empty(shape, dtype=dtype)
        stream.read_into(out[key])
    return out


def _entries(header: object, body: int) -> list[tuple[str, torch.dtype, list[int], int]]:
    """(name, dtype, shape, begin) of every tensor, in file order; they must tile ``body``."""
    if not isinstance(header, dict):
        raise TypeError("the header is not an object")
    found = []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        dtype = _DTYPES[entry["dtype"]]
        shape = [int(d) for d in entry["shape"]]
        if any(d < 0 for d in shape):
            raise ValueError(f"{key}: negative dimension")
        begin, end = (int(x) for x in entry["data_offsets"])
        if end - begin != _count(shape) * dtype.itemsize:
            raise ValueError(f"{key}: data offsets {begin}..{end} do not fit its shape")
        found.append((str(key), dtype, shape, begin, end))
    found.sort(key=lambda e: e[3])
    at = 0
    for key, _, _, begin, end in found:
        if begin != at:
            raise ValueError(f"{key}: starts at {begin}, expected {at}")
        at = end
    if at != body:
        raise ValueError(f"tensors cover {at} of {body} data bytes")
    return [(k, d, s, b) for k, d, s, b, _ in found]


def safetensors_views(blob: torch.Tensor) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The metadata and tensors of the safetensors blob in ``blob`` (uint8, one dimension),
    checked as :func:`read_safetensors` checks a file ("corrupt" otherwise). The tensors are views
    of ``blob``'s memory (a copy where an offset does not suit the dtype): no pass over the data
    holds the GIL, unlike ``safetensors.torch.load``, which copies megabytes while it holds it."""
    size = int(blob.numel())
    (n,) = struct.unpack("<Q", blob[:8].numpy().tobytes()) if size >= 8 else (size,)
    if n > min(MAX_HEADER_BYTES, size - 8):
        raise SnapshotError("corrupt", f"safetensors blob of {size} bytes, header {n}")
    try:
        header = json.loads(blob[8 : 8 + n].numpy().tobytes())
        entries = _entries(header, size - 8 - n)
        meta = {str(k): str(v) for k, v in header.get("__metadata__", {}).items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise SnapshotError("corrupt", f"not a valid safetensors blob: {err}") from None
    out: dict[str, torch.Tensor] = {}
    for key, dtype, shape, begin in entries:
        itemsize = dtype.itemsize
        at = 8 + n + begin
        raw = blob[at : at + itemsize * _count(shape)]
        if at % itemsize:
            raw = raw.clone()
        out[key] = raw.view(dtype).reshape(shape)
    return meta, out


def _count(shape: list[int]) -> int:
    count = 1
    for d in shape:
        count *= d
    return count


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob (8-byte header length, then a JSON header)."""
    (n,) = struct.unpack_from("<Q", data)
    if n > MAX_HEADER_BYTES:
        raise SnapshotError("corrupt", "safetensors header too large")
    header = json.loads(data[8 : 8 + n])
    meta: dict[str, str] = header.get("__metadata__", {})
    return meta
