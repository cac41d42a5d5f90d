"""Every Kafka client the project makes connects with the deployment's TLS and SASL settings.

Read from the sources (no broker): each call that makes a kafka-python or aiokafka client passes
``**<settings>.kafka_config()`` (or a ``kafka_config`` held from it), each librdkafka client's
configuration holds ``**<settings>.librdkafka_config()``, and each Faust app gets
``broker_credentials``. A client added later that passes only ``bootstrap_servers`` fails here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("contracts", "feature_store", "models", "serving", "trainer", "streaming", "ops")
HELPERS = ("tests/support",)
KAFKA_PYTHON = {"KafkaConsumer", "KafkaProducer", "KafkaAdminClient", "KafkaClient"}
AIOKAFKA = {"AIOKafkaConsumer", "AIOKafkaProducer", "AIOKafkaClient"}
LIBRDKAFKA = {"Producer", "Consumer", "AdminClient"}


def sources() -> Iterator[Path]:
    for folder in (*PACKAGES, *HELPERS):
        yield from sorted((REPO / folder).rglob("*.py"))


def called_name(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def is_config(node: ast.expr, name: str) -> bool:
    """``x.name()``, or a variable or attribute called ``name`` (a config held from it)."""
    if isinstance(node, ast.Call):
        return called_name(node) == name
    return (isinstance(node, ast.Name) and node.id == name) or (
        isinstance(node, ast.Attribute) and node.attr == name
    )


def unpacks(call: ast.Call, name: str) -> bool:
    return any(k.arg is None and is_config(k.value, name) for k in call.keywords)


def librdkafka_unpacks(call: ast.Call) -> bool:
    config = call.args[0] if call.args else None
    return isinstance(config, ast.Dict) and any(
        key is None and is_config(value, "librdkafka_config")
        for key, value in zip(config.keys, config.values, strict=True)
    )


def is_faust_app(call: ast.Call) -> bool:
    func = call.func
    return (
        isinstance(func, ast.Attribute)
        and func.attr == "App"
        and isinstance(func.value, ast.Name)
        and func.value.id == "faust"
    )


def client_calls() -> Iterator[tuple[str, ast.Call, bool]]:
    """(where, call, secured) of every client construction in the project's sources."""
    for path in sources():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = called_name(node)
            where = f"{path.relative_to(REPO)}:{node.lineno} {name}"
            if name in KAFKA_PYTHON | AIOKAFKA:
                yield where, node, unpacks(node, "kafka_config")
            elif name in LIBRDKAFKA and node.args:
                yield where, node, librdkafka_unpacks(node)
            elif is_faust_app(node):
                secured = any(k.arg == "broker_credentials" for k in node.keywords)
                yield where, node, secured


def test_every_client_gets_the_security_settings() -> None:
    calls = list(client_calls())
    unsecured = [where for where, _, secured in calls if not secured]
    assert not unsecured, (
        "clients made without the deployment's TLS and SASL settings; pass "
        "**settings.kafka_config() (librdkafka: **settings.librdkafka_config()): "
        + ", ".join(unsecured)
    )
    # the walk itself still finds the clients: consumers, producers, admin clients, the Faust app
    names = {called_name(call) for _, call, _ in calls}
    assert {"KafkaConsumer", "KafkaProducer", "KafkaAdminClient", "App"} <= names
    assert len(calls) >= 15


def test_a_client_with_only_bootstrap_servers_is_caught() -> None:
    bare = ast.parse("KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, x=1)").body[0]
    kept = ast.parse("KafkaConsumer(**settings.kafka_config(), x=1)").body[0]
    assert isinstance(bare, ast.Expr) and isinstance(bare.value, ast.Call)
    assert isinstance(kept, ast.Expr) and isinstance(kept.value, ast.Call)
    assert not unpacks(bare.value, "kafka_config")
    assert unpacks(kept.value, "kafka_config")
