"""The Prometheus files are valid and tested (ARCHITECTURE.md section 8): promtool accepts
``ops/prometheus/prometheus.yml`` and ``alerts.yml``, and ``alerts_test.yml`` passes and covers
every alert both firing and not firing."""

from __future__ import annotations

import subprocess

import pytest

from tests.support.prometheus import PROMETHEUS_DIR, alert_rules, binary, yaml

pytestmark = [pytest.mark.integration]


@pytest.mark.parametrize(
    "args",
    [
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ],
    ids=["check-config", "check-rules", "test-rules"],
)
def test_promtool_accepts_config_rules_and_rule_tests(args: list[str]) -> None:
    done = subprocess.run(
        [binary("promtool"), *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    doc = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())
    cases = [case for test in doc["tests"] for case in test["alert_rule_test"]]
    for name in (rule["alert"] for rule in alert_rules()):
        expected = [bool(c["exp_alerts"]) for c in cases if c["alertname"] == name]
        assert True in expected, f"{name} is never tested firing"
        assert False in expected, f"{name} is never tested quiet"
