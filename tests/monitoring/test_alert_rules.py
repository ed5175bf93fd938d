"""The shipped alert rules are valid Prometheus rules, and each fires when it should and not
before (tests/monitoring/alerts_test.yml, run by promtool). Without promtool (Debian's
`prometheus` package) these tests fail: the rules are not checked."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from tessera.monitoring import ALERTS

HERE = Path(__file__).resolve().parent


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: install Debian's prometheus package (apt-get install prometheus)"
    return found


def test_the_alert_rules_pass_promtool_check() -> None:
    result = subprocess.run([promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout + result.stderr


def test_every_alert_fires_as_its_unit_tests_say() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", str(HERE / "alerts_test.yml")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_issue_s_alerts_are_all_there_and_each_is_unit_tested() -> None:
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    names = {rule["alert"] for rule in rules}
    assert names == {
        "TesseraWorkerOffline",
        "TesseraDatabaseUnreachable",
        "TesseraQueueDeep",
        "TesseraJobFailureRate",
        "TesseraGpuMemoryHigh",
        "TesseraNoSchedulerLeader",
        "TesseraProjectorLagging",
        "TesseraOutboxLagging",
        "TesseraQuotaRefusalsSpike",
    }
    tests = yaml.safe_load((HERE / "alerts_test.yml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert tested == names
