"""The Grafana dashboard (infra/grafana/quorum.json) queries only what the service exports.

Checked here against the metric definitions in serving/metrics.py (`METRICS` + Ray's Prometheus
naming, `exported_names`), which covers the scheduler's metrics too; tests/integration/
test_metrics.py checks the ingress's metrics against what a running service's endpoint exports.
"""

import json
import re
from pathlib import Path

import pytest

from serving.metrics import METRICS, exported_names

DASHBOARD = Path(__file__).resolve().parents[2] / "infra" / "grafana" / "quorum.json"

_SERIES = re.compile(r"\b(ray_[A-Za-z0-9_]+)(\{[^}]*\})?")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def dashboard_exprs(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, rows included."""
    out = []

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                out.append((panel["title"], target["expr"]))
            walk(panel.get("panels", []))

    walk(json.loads(path.read_text())["panels"])
    return out


def queried_series(expr: str) -> set[str]:
    return {m.group(1) for m in _SERIES.finditer(expr)}


EXPORTED = {name: spec for spec in METRICS for name in exported_names(spec)}


@pytest.mark.parametrize(("title", "expr"), dashboard_exprs())
def test_every_series_and_label_in_a_panel_is_exported(title, expr):
    series = queried_series(expr)
    assert series, f"panel {title!r} queries no ray_ metric: {expr}"
    unknown = series - EXPORTED.keys()
    assert not unknown, f"panel {title!r} queries {unknown}, not exported by serving/metrics.py"
    labels = set().union(*(EXPORTED[s].tags for s in series))
    if any(s.endswith("_bucket") for s in series):
        labels.add("le")
    used = {m for sel in _SERIES.finditer(expr) if sel.group(2)
            for m in _MATCHER.findall(sel.group(2))}  # fmt: skip
    used |= {label.strip() for g in _GROUPING.findall(expr) for label in g.split(",") if label}
    assert used <= labels, f"panel {title!r} uses labels {used - labels} the metrics do not have"
    assert expr.count("(") == expr.count(")"), f"unbalanced parentheses in {title!r}: {expr}"


def test_the_dashboard_shows_every_metric_quorum_defines():
    queried = set().union(*(queried_series(e) for _, e in dashboard_exprs()))
    shown = {EXPORTED[s].name for s in queried if s in EXPORTED}
    assert shown == {spec.name for spec in METRICS}


def test_the_checker_rejects_a_wrong_name_and_a_wrong_label(tmp_path):
    """Ray's names need the ray_ prefix and _total on counters; a bare name must not pass."""
    assert "quorum_requests_total" not in EXPORTED and "ray_quorum_requests" not in EXPORTED
    bad = {"panels": [{"title": "t", "targets": [
        {"expr": "sum by (flavour) (rate(ray_quorum_requests_total[5m]))"}]}]}  # fmt: skip
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    ((title, expr),) = dashboard_exprs(path)
    with pytest.raises(AssertionError, match="flavour"):
        test_every_series_and_label_in_a_panel_is_exported(title, expr)
