"""The alert and recording rules in observability/prometheus: valid, each alert unit-tested by
`promtool test rules`, each with a runbook section in docs/observability.md."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from tests.support.prometheus import RULES, RULES_TEST, ROOT, ensure_prometheus_tools

# The report's list and the issue's additions: the alerts that must exist.
REQUIRED_ALERTS = {
    "WebSocketConnectionsDropped", "WebSocketConnectionsBelowFloor", "ApiLatencyP95High",
    "DatabasePoolNearlyExhausted", "AuthenticationFailuresHigh", "Edge5xxRatioHigh",
    "OutboxLagHigh", "AdmissionRefusing", "CertificateExpiresSoon",
}


@pytest.fixture(scope="module")
def promtool() -> str:
    return ensure_prometheus_tools()[0]


def _rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def _alerts() -> set[str]:
    return {rule["alert"] for rule in _rules() if "alert" in rule}


def test_the_rules_file_is_valid_prometheus_rules(promtool):
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_passes_its_promtool_unit_tests(promtool):
    result = subprocess.run([promtool, "test", "rules", RULES_TEST.name], cwd=RULES_TEST.parent,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_reports_alerts_and_the_issues_additions_all_exist():
    assert REQUIRED_ALERTS <= _alerts()


def test_every_alert_has_a_unit_test_that_sees_it_fire():
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])
             if case["exp_alerts"]}
    quiet = {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])
             if not case["exp_alerts"]}
    assert _alerts() - fired == set(), "alerts never seen firing in a test"
    assert _alerts() - quiet == set(), "alerts never seen staying quiet"


def test_every_alert_links_a_runbook_section_that_exists():
    docs = (ROOT / "docs" / "observability.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")
               for heading in re.findall(r"^#+ (.+)$", docs, flags=re.M)}
    for rule in _rules():
        if "alert" in rule:
            link = rule["annotations"]["runbook"]
            assert link.startswith("docs/observability.md#"), rule["alert"]
            assert link.split("#", 1)[1] in anchors, f"{rule['alert']}: no section {link}"
