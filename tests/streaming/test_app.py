"""create_app: the consumer group and topic prefix, the short-wait transport for every broker,
HTTP only when a port is given and then bound to the configured host, Faust's datadir."""

from __future__ import annotations

from pathlib import Path

from contracts.settings import Settings
from streaming.app import APP_NAME, BATCH_BYTES, MAX_MESSAGE_BYTES, create_app

SETTINGS = Settings.from_env(
    {"TWINSTREAM_TOPIC_PREFIX": "p-", "TWINSTREAM_BOOTSTRAP_SERVERS": "a:1,b:2"}
)


def test_the_app_is_the_prefixed_group_over_every_broker() -> None:
    app = create_app(SETTINGS)
    assert app.conf.id == f"p-{APP_NAME}"
    assert [str(url) for url in app.conf.broker] == ["twinstream://a:1", "twinstream://b:2"]
    assert app.conf.topic_partitions == SETTINGS.topics.events_partitions
    assert app.conf.producer_max_request_size == MAX_MESSAGE_BYTES
    assert app.conf.consumer_max_fetch_size == MAX_MESSAGE_BYTES
    assert app.conf.producer_max_batch_size == BATCH_BYTES < 1024 * 1024
    assert not app.conf.web_enabled


def test_http_binds_to_the_configured_host_only_when_asked() -> None:
    app = create_app(SETTINGS, http_port=28_123)
    assert SETTINGS.http_host == "127.0.0.1"
    assert app.conf.web_enabled and app.conf.web_bind == "127.0.0.1"
    assert app.conf.web_port == 28_123
    assert str(app.conf.canonical_url) == "http://127.0.0.1:28123"


def test_the_datadir_is_made_with_its_parents(tmp_path: Path) -> None:
    datadir = tmp_path / "state" / "faust"
    app = create_app(SETTINGS, name="other", datadir=datadir)
    assert datadir.is_dir() and Path(app.conf.datadir) == datadir
    assert app.conf.id == "p-other"
