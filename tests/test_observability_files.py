"""docker/prometheus/: the alert rules and the Grafana dashboard reference only metrics
switchd exposes (switchd/metrics.py, its collectors, or docs/metrics.md), the rules are
valid YAML with the alerts operators need, and promtool accepts them where it exists."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from test_config import exposed_metric_names

ROOT = Path(__file__).parents[1]
PROM = ROOT / "docker" / "prometheus"

PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
                "group_right", "offset", "bool", "inf", "nan"}
SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_info")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels, strings
    and durations removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)                             # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)                            # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\boffset\s+\w+", " ", text)
    text = re.sub(r"(?<![\w.])\d+(\.\d+)?([eE][+-]?\d+)?", " ", text)   # numbers, 1e6
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        following = text[match.end():].lstrip()[:1]
        if following == "(" or word.lower() in PROMQL_WORDS:
            continue                                                   # a function or keyword
        if re.fullmatch(r"\d+[smhdwy]", word) or word.startswith("$"):
            continue
        names.add(word)
    return names


def known(name: str) -> bool:
    exposed = exposed_metric_names()
    doc = (ROOT / "docs" / "metrics.md").read_text()
    candidates = {name} | {name[: -len(s)] for s in SUFFIXES if name.endswith(s)}
    return (bool(candidates & exposed) or f"`{name}`" in doc or name == "up")


def test_the_expression_reader_finds_metric_names():
    expr = ('histogram_quantile(0.99, sum by (instance, le) (rate(switchd_x_bucket{job="a b"}[5m])))'
            ' > 2 * sum by (scope) (rate(switchd_y_total[6h] offset 10m)) and up{job="switchd"} == 0'
            ' or process_resident_memory_bytes / 1e6 > 2.5')
    assert metric_names(expr) == {"switchd_x_bucket", "switchd_y_total", "up",
                                  "process_resident_memory_bytes"}
    assert not known("switchd_no_such_metric") and known("switchd_calls_total")
    assert known("switchd_build_info") and known("process_open_fds")


def _rules():
    doc = yaml.safe_load((PROM / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_alert_rules_parse_and_cover_what_operators_must_act_on():
    rules = _rules()
    by_name = {rule["alert"]: rule for rule in rules}
    assert len(by_name) == len(rules), "duplicate alert names"
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
    wanted = {                      # alert -> a metric its expression must use
        "SwitchdEslDown": "switchd_esl_connected",
        "SwitchdCarrierGatewaysDown": "switchd_carrier_up",
        "SwitchdGatewayDown": "switchd_gateway_up",
        "SwitchdCarrierHealthLow": "switchd_carrier_health",
        "SwitchdCapRefusalsRising": "switchd_cap_rejections_total",
        "SwitchdSpoolGrowing": "switchd_spool_records",
        "SwitchdBudget90": "switchd_budget_usage_ratio",
        "SwitchdUnratedCdrs": "switchd_unrated_legs_total",
    }
    for alert, metric in wanted.items():
        assert metric in metric_names(by_name[alert]["expr"]), alert
    assert "0.9" in by_name["SwitchdBudget90"]["expr"]


def test_alert_rules_reference_only_metrics_switchd_exposes():
    for rule in _rules():
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        unknown = sorted(n for n in names if not known(n))
        assert not unknown, f"{rule['alert']}: {unknown}"


def test_promtool_accepts_the_rules_and_the_config():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    for args in (["check", "rules", str(PROM / "alerts.yml")],
                 ["check", "config", str(PROM / "prometheus.yml")]):
        done = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def _panels(items):
    for panel in items:
        yield panel
        yield from _panels(panel.get("panels", []))          # rows hold panels


def test_dashboard_queries_reference_only_metrics_switchd_exposes():
    dash = json.loads((PROM / "grafana-dashboard.json").read_text())
    panels = list(_panels(dash["panels"]))
    assert len(panels) >= 10
    assert len({p["id"] for p in panels}) == len(panels)
    used = set()
    for panel in panels:
        if panel.get("type") == "row":
            continue
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, (panel["title"], target["expr"])
            unknown = sorted(n for n in names if not known(n))
            assert not unknown, f"{panel['title']}: {unknown}"
            used |= names
    for variable in dash["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            inner = re.search(r"label_values\((\w+)", query["query"])
            assert inner and known(inner.group(1)), variable["name"]
    # The headline metrics are on it.
    assert {"switchd_calls_total", "switchd_carrier_up", "switchd_esl_connected",
            "switchd_spool_records"} <= used
