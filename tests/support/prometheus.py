"""Prometheus and promtool for the tests: found on PATH, or installed from Debian's `prometheus`
package when missing (sessions and CI run as root on Debian). Also the repo's rules and
dashboard, and the metric names their queries use."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.debian import ensure_debian_package

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "observability"
RULES = OBSERVABILITY / "prometheus" / "rules.yml"
RULES_TEST = OBSERVABILITY / "prometheus" / "rules_test.yml"
DASHBOARD = OBSERVABILITY / "grafana" / "dashboards" / "posmesh.json"

# Metric names in PromQL: ours, the gRPC RED names, Envoy's, and Prometheus' own `up`.
_METRIC = re.compile(r"\b((?:posmesh|grpc_server|envoy)_[a-zA-Z0-9_]+)")


def ensure_prometheus_tools() -> tuple[str, str]:
    """(promtool, prometheus) executables; installs the Debian package when they are missing."""
    promtool, server = ensure_debian_package("prometheus", "promtool", "prometheus")
    return promtool, server


def metric_names(promql: str) -> set[str]:
    """Metric names a PromQL expression reads (recording-rule names, `a:b:c`, excluded)."""
    # Label matchers and grouping clauses name labels, not metrics.
    promql = re.sub(r"\{[^}]*\}", "", promql)
    promql = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", promql)
    names = set()
    for match in _METRIC.finditer(promql):
        start = match.start()
        if start > 0 and promql[start - 1] in ":":  # part of a recording rule's name
            continue
        names.add(match.group(1))
    return names


def base_name(sample_name: str) -> str:
    """The family a sample name belongs to (histogram and counter suffixes removed)."""
    for suffix in ("_bucket", "_count", "_sum", "_total", "_created"):
        if sample_name.endswith(suffix):
            return sample_name[: -len(suffix)]
    return sample_name
