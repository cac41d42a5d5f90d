"""The broker stopped in the middle of ``twinstream replay``: the replay waits it out, or gives up.

Each test starts a broker of its own (``ops.broker``, on ports of its own, never the shared one)
and replays a generated Taobao-format log with ``python -m ops.cli replay`` as a real process,
paced to last about ``REPLAY_S``. Once a tenth of the log has reached ``events`` it stops the
broker. In the first test the broker comes back on the same storage after ``OUTAGE_S``: the
replay says plainly that the broker was unreachable and that it is back, exits 0, and ``events``
holds every event of the log exactly once (counted by event id), each user's in event-time order.
In the second the broker stays away past ``--broker-wait-s``: the replay exits non-zero with one
clear line and no traceback, and every event it counts as acknowledged is on the broker.

The figures (events, outage, duplicates, lost, seconds) are printed and recorded as the tests'
properties.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from kafka.errors import KafkaError

from contracts.schema import Event
from contracts.settings import Settings
from ops import broker
from streaming.admin import end_offsets, read_topic
from streaming.sources import read_events
from streaming.synthetic import GeneratorConfig, generate
from tests.support import brokers
from tests.support.processes import REPO, TWINSTREAM, deployment_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PORT, CONTROLLER_PORT = 29_250, 29_251
LOG = GeneratorConfig(users=60, long_users=0, seed=18)  # about 5,000 behaviours
REPLAY_S = 40.0  # the replay is paced to last about this long without an outage
OUTAGE_S = 25.0
GIVE_UP_WAIT_S = 10
Record = Callable[[str, object], None]
# the lines the replay prints
BROKER = rf"broker 127\.0\.0\.1:{PORT}"
AWAY = (
    rf"{BROKER} unreachable since \d\d:\d\d:\d\d; "
    r"retrying \(gives up after 300 s, --broker-wait-s\)"
)
BACK = rf"{BROKER} back after \d+ s; carrying on"
GAVE_UP = (
    rf"twinstream replay: {BROKER} still unreachable after \d+ s \(--broker-wait-s "
    rf"{GIVE_UP_WAIT_S}\): (?P<acked>[\d,]+) of (?P<total>[\d,]+) events acknowledged, "
    r"(?P<not>[\d,]+) not; rerun the same command once the broker is back .*"
)


@dataclass
class Replay:
    """A ``twinstream replay`` process and the files its output goes to."""

    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    started: float

    def finish(self, timeout_s: float) -> tuple[int, str, str]:
        rc = self.proc.wait(timeout=timeout_s)
        return rc, self.stdout.read_text(), self.stderr.read_text()


@pytest.fixture()
def own_broker(tmp_path: Path) -> Iterator[broker.BrokerConfig]:
    with brokers.own_broker(tmp_path / "kafka", PORT, CONTROLLER_PORT) as cfg:
        yield cfg


@pytest.fixture()
def settings(own_broker: broker.BrokerConfig) -> Settings:
    return Settings.from_env(
        {"TWINSTREAM_BOOTSTRAP_SERVERS": own_broker.bootstrap, "TWINSTREAM_TOPIC_PREFIX": "outage-"}
    )


@pytest.fixture()
def log_file(tmp_path: Path) -> tuple[Path, list[Event]]:
    path = tmp_path / "outage.csv"
    generate(LOG).write(path)
    events, _ = read_events(path, "taobao")
    return path, events


def start_replay(
    settings: Settings, path: Path, events: list[Event], out: Path, *extra: str
) -> Replay:
    speed = (events[-1].ts - events[0].ts) / REPLAY_S
    cmd = [*TWINSTREAM, "replay", str(path), "--format", "taobao"]
    cmd += ["--speed", f"{speed:.1f}", *extra]
    stdout, stderr = out / "replay.stdout", out / "replay.stderr"
    with open(stdout, "wb") as o, open(stderr, "wb") as e:
        proc = subprocess.Popen(cmd, cwd=REPO, env=deployment_env(settings), stdout=o, stderr=e)
    return Replay(proc, stdout, stderr, time.monotonic())


def events_on_broker(settings: Settings) -> int:
    try:
        offsets = end_offsets(settings, settings.topics.events, settings.topics.events_partitions)
    except KafkaError:
        return 0
    return sum(offsets.values())


def wait_for_a_tenth(settings: Settings, replay: Replay, total: int) -> int:
    """Until a tenth of the log is on the broker; returns how many events were."""
    deadline = time.monotonic() + REPLAY_S
    while (arrived := events_on_broker(settings)) < total // 10:
        assert replay.proc.poll() is None, replay.stderr.read_text()
        assert time.monotonic() < deadline, f"only {arrived} of {total} events after {REPLAY_S}s"
        time.sleep(0.2)
    return arrived


def lines(text: str) -> list[str]:
    """Output lines, progress bar frames (carriage returns) split apart, blanks dropped."""
    return [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]


def test_replay_waits_out_a_stopped_broker_and_delivers_every_event_once(
    own_broker: broker.BrokerConfig,
    settings: Settings,
    log_file: tuple[Path, list[Event]],
    tmp_path: Path,
    record_property: Record,
) -> None:
    path, events = log_file
    replay = start_replay(settings, path, events, tmp_path)
    before = wait_for_a_tenth(settings, replay, len(events))
    stopping = time.monotonic()
    broker.stop(own_broker)
    time.sleep(OUTAGE_S)
    broker.start(own_broker)
    outage_s = time.monotonic() - stopping  # from the stop signal until it accepts connections
    rc, stdout, stderr = replay.finish(timeout_s=240)
    took_s = time.monotonic() - replay.started

    said = lines(stderr)
    away = [line for line in said if re.fullmatch(AWAY, line)]
    back = [line for line in said if re.fullmatch(BACK, line)]
    assert rc == 0, stderr
    assert "Traceback" not in stderr
    assert len(away) == 1 and len(back) == 1, said
    assert f"replayed {len(events)} events" in stdout
    assert "100%" in [line for line in said if line.startswith("replay:")][-1]

    records = read_topic(settings, settings.topics.events, expected=len(events))
    ids = Counter(orjson.loads(r.value)["event_id"] for r in records)
    duplicates = sum(n - 1 for n in ids.values())
    lost = len({e.event_id for e in events} - set(ids))
    figures = {
        "events": len(events),
        "on_broker_before_stop": before,
        "outage_s": round(outage_s, 1),
        "replay_s": round(took_s, 1),
        "duplicates": duplicates,
        "lost": lost,
    }
    print(figures, away[0], back[0], sep="\n")
    for name, value in figures.items():
        record_property(name, value)
    assert duplicates == 0 and lost == 0, figures
    assert len(records) == len(events)
    assert_user_order(records)


def test_replay_gives_up_with_one_line_when_the_broker_stays_away(
    own_broker: broker.BrokerConfig,
    settings: Settings,
    log_file: tuple[Path, list[Event]],
    tmp_path: Path,
    record_property: Record,
) -> None:
    path, events = log_file
    extra = ("--broker-wait-s", str(GIVE_UP_WAIT_S))
    replay = start_replay(settings, path, events, tmp_path, *extra)
    wait_for_a_tenth(settings, replay, len(events))
    broker.stop(own_broker)
    stopped = time.monotonic()
    rc, stdout, stderr = replay.finish(timeout_s=120)
    gave_up_after_s = time.monotonic() - stopped

    said = lines(stderr)
    errors = [line for line in said if line.startswith("twinstream replay:")]
    assert rc != 0 and not stdout
    assert "Traceback" not in stderr, stderr
    assert len(errors) == 1, said
    match = re.fullmatch(GAVE_UP, errors[0])
    assert match, errors[0]
    acked, total, not_acked = (
        int(match[name].replace(",", "")) for name in ("acked", "total", "not")
    )
    assert total == len(events) and acked + not_acked == total
    assert 0 < acked < total

    broker.start(own_broker)  # every event counted as acknowledged is on the broker
    ids = Counter(
        orjson.loads(r.value)["event_id"]
        for r in read_topic(settings, settings.topics.events, idle_timeout_s=5.0)
    )
    figures = {
        "events": len(events),
        "acknowledged": acked,
        "on_broker": sum(ids.values()),
        "duplicates": sum(n - 1 for n in ids.values()),
        "gave_up_after_s": round(gave_up_after_s, 1),
    }
    print(figures, errors[0], sep="\n")
    for name, value in figures.items():
        record_property(name, value)
    assert sum(ids.values()) >= acked and figures["duplicates"] == 0, figures
    assert gave_up_after_s < GIVE_UP_WAIT_S + 30, figures


def assert_user_order(records: list) -> None:
    """Each user's events, in the broker's order, are in event-time order."""
    per_user: dict[bytes, list[tuple[int, float]]] = defaultdict(list)
    for r in records:
        per_user[r.key].append((r.offset, orjson.loads(r.value)["ts"]))
    for user, seen in per_user.items():
        ts = [t for _, t in sorted(seen)]
        assert ts == sorted(ts), f"user {user!r} out of event-time order"
