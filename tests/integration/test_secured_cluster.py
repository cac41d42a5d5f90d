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

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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
from tests.support.brokers import deployment_on, own_broker
from tests.support.processes import spawn, tail, twinstream
from tests.support.states import assert_each_behaviour_once
from tests.support.trainers import QUICK_TRAINER_ARGS, trained
from tests.support.waiting import wait_until
from tests.support.worker_http import post_score
from tests.support.workers import WorkerProcess, wait_caught_up

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PORT, CONTROLLER_PORT = 29_270, 29_271
HTTP_PORT = 28_871
LOG = GeneratorConfig(users=40, long_users=0, seed=6)  # about 3,000 behaviours


@pytest.fixture()
def secured_broker(tmp_path: Path) -> Iterator[broker.BrokerConfig]:
    with own_broker(tmp_path / "kafka", PORT, CONTROLLER_PORT, sasl_ssl=True) as cfg:
        yield cfg


@pytest.fixture()
def settings(secured_broker: broker.BrokerConfig, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The deployment on the secured broker; the processes it starts inherit the environment."""
    return deployment_on(secured_broker, "secured-", monkeypatch)


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
    over_http = post_score(HTTP_PORT, user, items)
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
    train = ("train", *QUICK_TRAINER_ARGS, *snaps, "--audit-log", str(audit))
    started = time.monotonic()
    with WorkerProcess(
        settings, tmp_path / "state", tmp_path / "worker.log", "--http-port", str(HTTP_PORT), *snaps
    ) as worker:
        trainer = spawn(tmp_path / "trainer.log", *train)
        try:
            replay = twinstream("replay", str(path), "--format", "taobao", "--no-progress")
            assert replay.returncode == 0, replay.stdout + replay.stderr
            assert f"replayed {len(events)} events" in replay.stdout
            assert_each_behaviour_once(wait_caught_up(settings, timeout_s=180), events)
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
