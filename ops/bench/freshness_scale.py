"""``bench_freshness --items N --dim D``: delta sync at production size, on real processes.

A checkpoint v1 of DARE with N item rows of width D and full id maps (N - 1 items admitted) is
written into the trainer's folder (in a child process, so its memory is returned). Then a real
``twinstream train`` (deltas every ``--delta-every-s``, checkpoints every ``--checkpoint-every-s``
written asynchronously, served over HTTP) and a real ``twinstream worker`` whose snapshot folder
starts empty (it fetches checkpoints over HTTP, like a worker on another host, and follows the
deltas on ``model-updates``) run against the broker, all with an HMAC key. Samples over the whole
vocabulary are produced at ``--rate`` messages/s for ``--seconds``.

Measured: sample → served (each sample's Kafka timestamp against the first moment the worker's
``/healthz`` reports a version whose delta covers its offset), bytes per delta (its chunks on
``model-updates``), the trainer's pause per delta and per checkpoint and a checkpoint's write time
(its log), peak memory (VmHWM) of trainer and worker. Baseline measured in the same run: the time
the worker took to fetch and load v1 whole, what every new version cost before deltas. The run's
checkpoints (both sides, several GiB each at full size) and state are removed at the end, its
logs kept, unless ``--keep-out`` is given.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from contracts.settings import Settings
from feature_store.cluster_leaves import cluster_dtype
from feature_store.sample_format import encode_sample, make_targets
from feature_store.state_format import behaviour_dtype
from ops.train_cli import add_arguments, trainer_config
from serving.delta import DeltaAssembler
from streaming.admin import ensure_topics

KEY = "bench-freshness-key"
HTTP_PORT, CHECKPOINT_PORT = 18931, 18932
SEQ = 50
NONE = np.zeros(0, cluster_dtype(0))


def model_flags(items: int, dim: int, categories: int) -> list[str]:
    return [
        *("--model", "dare", "--dim", str(dim), "--seq-len", str(SEQ), "--topk", "20"),
        *("--item-capacity", str(items), "--category-capacity", str(categories)),
    ]


def make_checkpoint(folder: Path, flags: list[str]) -> None:
    """v1 with full id maps (every item row in use), written without a whole-file copy."""
    from models.registry import build_model
    from serving.features import FeatureMapper, RawIds
    from serving.manifest import IDMAPS_FILE, MODEL_FILE
    from serving.signing import Signer
    from serving.snapshot import FileWriter, SafetensorsWriter, SnapshotContent, write_files

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = trainer_config(parser.parse_args([*flags, "--snapshot-dir", str(folder)]))
    cfg = config.model_config
    model = build_model("dare", cfg)
    mapper = FeatureMapper(config.mapper_config)
    mapper.observe(
        RawIds(np.arange(1, cfg.n_items, dtype=np.int64), np.arange(1, cfg.n_categories))
    )

    def writer(state: dict[str, torch.Tensor]) -> FileWriter:
        return SafetensorsWriter([_whole(k, v) for k, v in state.items()])

    content = SnapshotContent("dare", model, mapper, None, {}, 0, 0)
    writers = {MODEL_FILE: writer(model.state_dict()), IDMAPS_FILE: writer(mapper.state_dict())}
    write_files(folder, 1, content, writers, Signer.of(KEY))


def _whole(
    name: str, tensor: torch.Tensor
) -> tuple[str, torch.dtype, tuple[int, ...], Callable[[], Iterator[torch.Tensor]]]:
    return (name, tensor.dtype, tuple(tensor.shape), lambda: iter([tensor]))


def samples(items: int, categories: int, n: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        recent = np.zeros(SEQ, behaviour_dtype(0))
        recent["item"] = rng.integers(1, items, SEQ)
        recent["category"] = recent["item"] % (categories - 1) + 1
        recent["ts"] = 1.7e9 + np.arange(SEQ)
        target = rng.integers(1, items, 4)
        cats = target % (categories - 1) + 1
        targets = make_targets(target, cats, labels=[1.0, 0.0, 0.0, 0.0])
        out.append(
            encode_sample(user=i, ts=1.7e9 + SEQ, targets=targets, recent=recent, clusters=NONE)
        )
    return out


class Watch:
    """The worker's served version over time and each delta's coverage, on threads."""

    def __init__(self, settings: Settings) -> None:
        self.served: list[tuple[float, int]] = []
        self.deltas: dict[int, dict[str, Any]] = {}
        self.stop = threading.Event()
        self.settings = settings
        self.threads = [
            threading.Thread(target=self._poll, daemon=True),
            threading.Thread(target=self._deltas, daemon=True),
        ]
        for t in self.threads:
            t.start()

    def _poll(self) -> None:
        while not self.stop.is_set():
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{HTTP_PORT}/healthz", timeout=5
                ) as r:
                    version = orjson.loads(r.read()).get("model_version")
            except (OSError, ValueError):
                version = None
            if version is not None and (not self.served or self.served[-1][1] != version):
                self.served.append((time.time(), int(version)))
            time.sleep(0.05)

    def _deltas(self) -> None:
        consumer = KafkaConsumer(**self.settings.kafka_config(), enable_auto_commit=False)
        tp = TopicPartition(self.settings.topics.model_updates, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        while not self.stop.is_set():
            for records in consumer.poll(timeout_ms=200).values():
                for r in records:
                    if dict(r.headers or []).get("kind") != b"delta":
                        continue
                    head = DeltaAssembler.peek(r.value)
                    entry = self.deltas.setdefault(head["version"], {"bytes": 0})
                    entry["bytes"] += len(r.value)
                    entry["offsets"] = {int(p): o for p, o in head["offsets"].items()}
        consumer.close()

    def served_at(self, partition: int, offset: int) -> float | None:
        for t, version in self.served:
            covered = self.deltas.get(version, {}).get("offsets", {})
            if covered.get(partition, -1) >= offset:
                return t
        return None


def peak_gib(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"VmHWM:\s+(\d+) kB", text)
    return int(m.group(1)) / 2**20 if m else float("nan")


def spawn(log: Path, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ops.cli", *args],
            env=os.environ | env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_for(check, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (value := check()) is not None:
            return value
        time.sleep(0.2)
    raise TimeoutError(what)


def run_scale(args: argparse.Namespace, settings: Settings) -> None:
    out = Path(args.out) / f"scale-{settings.topics.prefix}"
    trainer_dir, worker_dir = out / "trainer-snapshots", out / "worker-snapshots"
    out.mkdir(parents=True, exist_ok=True)
    ensure_topics(settings)
    flags = model_flags(args.items, args.dim, args.categories)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "ops.bench.freshness_scale", str(trainer_dir), *flags], check=True
    )
    print(
        f"v1 ({args.items:,} items, dim {args.dim}, full id maps) written in "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )
    base = {
        "TWINSTREAM_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "TWINSTREAM_TOPIC_PREFIX": settings.topics.prefix,
        "TWINSTREAM_MODEL_HMAC_KEY": KEY,
        "OMP_NUM_THREADS": "1",
    }
    trainer = spawn(
        out / "trainer.log",
        base | {"TWINSTREAM_CHECKPOINT_HTTP_PORT": str(CHECKPOINT_PORT)},
        "train", *flags, "--snapshot-dir", str(trainer_dir), "--batch-size", str(args.batch),
        "--delta-every-s", str(args.delta_every_s), "--snapshot-every-s",
        str(args.checkpoint_every_s), "--snapshot-every-steps", "100000000", "--keep", "2",
        "--max-wait-s", "0.2", "--device", "cpu",
    )  # fmt: skip
    worker = spawn(
        out / "worker.log",
        base | {"TWINSTREAM_CHECKPOINT_URL": f"http://127.0.0.1:{CHECKPOINT_PORT}"},
        "worker", "--state-dir", str(out / "state"), "--snapshot-dir", str(worker_dir),
        "--http-port", str(HTTP_PORT), "--loglevel", "info",  # each delta applied, in its log
    )  # fmt: skip
    watch = Watch(settings)
    try:
        measure(args, settings, watch, trainer, worker, out, started=time.time())
    finally:
        watch.stop.set()
        for proc in (trainer, worker):
            proc.terminate()
        for proc in (trainer, worker):
            proc.wait(timeout=600)
    report_logs(out / "trainer.log")
    if not args.keep_out:  # checkpoints of 2-6 GiB each, twice over (trainer and worker)
        for folder in (trainer_dir, worker_dir, out / "state"):
            shutil.rmtree(folder, ignore_errors=True)
        print(f"removed the checkpoints and state under {out}, kept its logs (--keep-out: all)")


def measure(
    args: argparse.Namespace,
    settings: Settings,
    watch: Watch,
    trainer: subprocess.Popen[bytes],
    worker: subprocess.Popen[bytes],
    out: Path,
    started: float,
) -> None:
    wait_for(lambda: watch.served or None, 1800, "the worker to serve v1")
    first = watch.served[0][0] - started
    print(f"baseline: the worker fetched v1 over HTTP and loaded it whole in {first:.1f} s "
          f"(trainer and worker started together; what each version cost before deltas)",
          flush=True)  # fmt: skip
    blobs = samples(args.items, args.categories, int(args.rate * args.seconds), seed=5)
    producer = KafkaProducer(**settings.kafka_config(), linger_ms=5)
    parts = settings.topics.events_partitions
    sent: list[tuple[int, int, float]] = []
    futures = []
    t0 = time.perf_counter()
    for i, blob in enumerate(blobs):
        while time.perf_counter() < t0 + i / args.rate:
            time.sleep(0.001)
        futures.append(producer.send(settings.topics.samples, blob, partition=i % parts))
        if i % int(args.rate) == 0:
            print(f"  {i:,} samples sent, served v{watch.served[-1][1]}", flush=True)
    producer.flush()
    for f in futures:
        meta = f.get(30)
        sent.append((meta.partition, meta.offset, meta.timestamp / 1000))
    producer.close()
    last = {p: max(o for q, o, _ in sent if q == p) for p in {q for q, _, _ in sent}}

    def covered() -> bool | None:
        return all(watch.served_at(p, o) is not None for p, o in last.items()) or None

    wait_for(covered, 600, "the worker to serve every sample")
    lat = np.array([watch.served_at(p, o) - ts for p, o, ts in sent])  # type: ignore[operator]
    p50, p99 = np.percentile(lat, [50, 99])
    sizes = [d["bytes"] for d in watch.deltas.values()]
    print(
        f"sample -> served ({lat.size} samples at {args.rate:g}/s): p50 {p50:.2f} s, p99 "
        f"{p99:.2f} s (goal p99 < 10 s); p99 / baseline full load {p99 / first:.3f}x"
    )
    print(f"deltas: {len(sizes)}, bytes per delta p50 {np.percentile(sizes, 50) / 2**20:.2f} MiB, "
          f"max {max(sizes) / 2**20:.2f} MiB")  # fmt: skip
    print(f"peak memory (VmHWM): trainer {peak_gib(trainer.pid):.2f} GiB, "
          f"worker {peak_gib(worker.pid):.2f} GiB")  # fmt: skip


def report_logs(log: Path) -> None:
    text = log.read_text(errors="replace")
    deltas = [
        float(x) for x in re.findall(r"delta v\d+: \d+ rows, training paused ([\d.]+) s", text)
    ]
    ckpts = re.findall(
        r"checkpoint v(\d+): training paused ([\d.]+) s, written in ([\d.]+) s", text
    )
    if deltas:
        p50, p99 = np.percentile(deltas, [50, 99]) * 1000
        print(f"training pause per delta ({len(deltas)}): p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
              f"max {max(deltas) * 1000:.1f} ms")  # fmt: skip
    for version, pause, written in ckpts:
        print(f"checkpoint v{version}: training paused {float(pause):.3f} s (goal <= 1 s), written "
              f"in {float(written):.1f} s on its thread; pause / write "
              f"{float(pause) / float(written):.3f}x")  # fmt: skip


if __name__ == "__main__":
    make_checkpoint(Path(sys.argv[1]), sys.argv[2:])
