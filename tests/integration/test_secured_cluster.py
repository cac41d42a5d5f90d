"""The whole loop against a broker that offers only a SASL_SSL listener.

The test starts a broker of its own (``ops.broker`` with ``sasl_ssl``: ports and folder of its
own, certificates made by keytool at start, SCRAM-SHA-512 users), puts its client settings
(``TWINSTREAM_SECURITY_PROTOCOL=SASL_SSL``, the SASL user, the CA file) in the environment, and
runs as real processes ``twinstream topics`` (with SCRAM-SHA-512, and with PLAIN), a
``twinstream worker``, a ``twinstream train`` and a ``twinstream replay`` of a generated
Taobao-format log. It checks that the worker's state holds every behaviour of the log once, that
the trainer trained every sample message and wrote and announced a snapshot the worker loaded,
and that a score request is answered over Kafka (``ScoreClient``) and over HTTP by that model.

So that nothing can pass over an unsecured path, it checks too that the broker refuses a
PLAINTEXT client, and that a wrong password stops ``twinstream topics`` at once with one line
that says the login was refused and which settings to check.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from contracts.schema import Event
from contracts.settings import Settings
from ops import broker
from streaming.admin import end_offsets, read_topic
from streaming.client import ScoreClient
from streaming.sources import read_events
from streaming.synthetic import GeneratorConfig, generate
from tests.support.waiting import wait_until
from tests.support.workers import REPO, WorkerProcess, wait_caught_up

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PORT, CONTROLLER_PORT = 29_270, 29_271
HTTP_PORT = 28_871
LOG = GeneratorConfig(users=40, long_users=0, seed=6)  # about 3,000 behaviours
TRAINER_OPTIONS = {
    "--model": "dare",
    "--dim": "8",
    "--seq-len": "20",
    "--topk": "5",
    "--item-capacity": "8192",
    "--category-capacity": "256",
    "--batch-size": "32",
    "--snapshot-every-steps": "40",
    "--snapshot-every-s": "600",
    "--max-wait-s": "0.2",
    "--device": "cpu",
}


@pytest.fixture()
def secured_broker(tmp_path: Path) -> Iterator[broker.BrokerConfig]:
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("no Java: the local jar broker cannot run here")
    if shutil.which("keytool") is None:
        pytest.skip("no keytool: the secured broker's certificates cannot be made here")
    cfg = broker.BrokerConfig(
        port=PORT, controller_port=CONTROLLER_PORT, run_dir=tmp_path / "kafka", sasl_ssl=True
    )
    try:
        broker.start(cfg)
        yield cfg
    finally:
        broker.stop(cfg)


@pytest.fixture()
def settings(secured_broker: broker.BrokerConfig, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The deployment on the secured broker; the processes it starts inherit the environment."""
    env = {
        "TWINSTREAM_BOOTSTRAP_SERVERS": secured_broker.bootstrap,
        "TWINSTREAM_TOPIC_PREFIX": "secured-",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        **secured_broker.security.environment(),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings.from_env(env)


def twinstream(
    *args: str, env: dict[str, str] | None = None, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """``twinstream ARGS`` to its end, in the test's environment (or ``env``)."""
    cmd = [sys.executable, "-m", "ops.cli", *args]
    return subprocess.run(
        cmd, cwd=REPO, env=env or dict(os.environ), capture_output=True, text=True,
        timeout=timeout_s,
    )  # fmt: skip


def spawn(log: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ops.cli", *args],
            cwd=REPO,
            env=dict(os.environ),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:]


def trained(audit: Path) -> dict[int, list[int]]:
    """The sample offsets the trainer trained, per partition."""
    out: dict[int, list[int]] = {}
    for line in audit.read_text().splitlines() if audit.exists() else []:
        for p, offsets in json.loads(line)["offsets"].items():
            out.setdefault(int(p), []).extend(offsets)
    return out


def post_score(user: str, items: list[str]) -> dict[str, Any]:
    body = orjson.dumps({"user_id": user, "items": items})
    req = urllib.request.Request(f"http://127.0.0.1:{HTTP_PORT}/score", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        answer: dict[str, Any] = orjson.loads(resp.read())
        return answer


# ---------------------------------------------------------------- what the broker refuses


def assert_plaintext_refused(cfg: broker.BrokerConfig) -> None:
    """A client without TLS and SASL gets nothing from the broker's only client port."""
    started = time.monotonic()
    with pytest.raises(KafkaError):
        KafkaAdminClient(
            bootstrap_servers=cfg.bootstrap, security_protocol="PLAINTEXT",
            bootstrap_timeout_ms=5000, request_timeout_ms=5000,
        )  # fmt: skip
    assert time.monotonic() - started < 30


def assert_wrong_password_refused_clearly(secured_env: dict[str, str]) -> None:
    wrong = {**secured_env, "TWINSTREAM_SASL_PASSWORD": "not-the-password"}
    started = time.monotonic()
    done = twinstream("topics", env=wrong, timeout_s=60)
    took = time.monotonic() - started
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    line = done.stderr.strip()
    assert line.startswith(f"twinstream topics: Kafka at 127.0.0.1:{PORT} (SASL_SSL) refused")
    assert "login of user 'twin' with SCRAM-SHA-512" in line and "invalid credentials" in line
    assert "TWINSTREAM_SASL_PASSWORD" in line and "not-the-password" not in line
    assert took < 30, f"a refused login took {took:.0f} s to report"


# ---------------------------------------------------------------- expectations


def assert_state_holds_each_behaviour_once(settings: Settings, events: list[Event]) -> None:
    states = wait_caught_up(settings, timeout_s=180)
    per_user: dict[str, list[float]] = {}
    for e in events:
        per_user.setdefault(e.user_id, []).append(e.ts)
    assert set(states) == set(per_user)
    for user, ts in per_user.items():
        assert states[user].total == len(ts), user
        assert np.array_equal(states[user].log["ts"], np.sort(np.array(ts))), user


def last_announcement(settings: Settings) -> dict[str, Any]:
    records = read_topic(settings, settings.topics.model_updates, idle_timeout_s=3)
    assert records, "no snapshot announced on model-updates"
    announced: dict[str, Any] = orjson.loads(records[-1].value)
    return announced


def assert_scores_from_model(settings: Settings, events: list[Event], version: int) -> None:
    """Kafka and HTTP answers, once the worker has loaded snapshot ``version``."""
    user, items = events[-1].user_id, [e.item_id for e in events[:5]]
    with ScoreClient(settings) as client:

        def from_the_model() -> dict[str, Any]:  # {} until the worker loaded the snapshot
            answer = client.score(user, items, timeout=10)
            return answer if answer.get("model_version") == version else {}

        answer = wait_until(
            from_the_model, timeout_s=60, what=f"a Kafka answer from snapshot v{version}"
        )
    assert "error" not in answer and len(answer["scores"]) == 5, answer
    assert answer["history_length"] > 0
    over_http = post_score(user, items)
    assert over_http["model_version"] == version and len(over_http["scores"]) == 5, over_http


# ---------------------------------------------------------------- the test


def test_worker_trainer_and_replay_run_against_a_sasl_ssl_only_broker(
    secured_broker: broker.BrokerConfig,
    settings: Settings,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    secured_env = dict(os.environ)
    assert secured_env["TWINSTREAM_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert_plaintext_refused(secured_broker)
    assert_wrong_password_refused_clearly(secured_env)

    topics = twinstream("topics")
    assert topics.returncode == 0, topics.stdout + topics.stderr
    assert f"{settings.topics.events}: 4 partitions (created)" in topics.stdout
    plain = twinstream("topics", env={**secured_env, "TWINSTREAM_SASL_MECHANISM": "PLAIN"})
    assert plain.returncode == 0, plain.stdout + plain.stderr  # the same user logs in with PLAIN

    path = tmp_path / "UserBehavior.csv"
    generate(LOG).write(path)
    events, _ = read_events(path, "taobao")
    snaps = ("--snapshot-dir", str(tmp_path / "snaps"))
    audit = tmp_path / "trainer.audit"
    options = [part for option in TRAINER_OPTIONS.items() for part in option]
    started = time.monotonic()
    with WorkerProcess(
        settings, tmp_path / "state", tmp_path / "worker.log", "--http-port", str(HTTP_PORT), *snaps
    ) as worker:
        trainer = spawn(
            tmp_path / "trainer.log", "train", *options, *snaps, "--audit-log", str(audit)
        )
        try:
            replay = twinstream("replay", str(path), "--format", "taobao", "--no-progress")
            assert replay.returncode == 0, replay.stdout + replay.stderr
            assert f"replayed {len(events)} events" in replay.stdout
            assert_state_holds_each_behaviour_once(settings, events)
            n = settings.topics.events_partitions
            ends = end_offsets(settings, settings.topics.samples, n)
            assert sum(ends.values()) > 0
            wait_until(
                lambda: all(max(trained(audit).get(p, [-1])) == e - 1 for p, e in ends.items()),
                timeout_s=180,
                what="the trainer to train every sample message",
                process=trainer,
            )
            trainer.send_signal(signal.SIGTERM)  # a final snapshot, announced
            assert trainer.wait(timeout=60) == 0, tail(tmp_path / "trainer.log")
        finally:
            if trainer.poll() is None:
                trainer.kill()
        announced = last_announcement(settings)
        assert Path(announced["path"]).is_dir() and announced["version"] >= 1
        assert_scores_from_model(settings, events, announced["version"])
        assert worker.proc.poll() is None, tail(tmp_path / "worker.log")
    assert worker.proc.returncode == 0, tail(tmp_path / "worker.log")
    seconds = time.monotonic() - started
    print(
        f"\nsecured run: {len(events):,} events, snapshot v{announced['version']}, {seconds:.0f} s"
    )
    record_property("events", len(events))
    record_property("seconds", round(seconds, 1))
