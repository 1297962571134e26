"""deploy/monitoring parses, and names only metrics that exist (from the metrics module's registries).

A PromQL expression is checked by its identifiers: every `refbus_*` or `process_*` name must be a
series name the registries can expose (metrics.metric_names), and nothing else may look like a metric
but Prometheus's own `up`.
"""

import json
import re
from pathlib import Path

import pytest
import yaml

from refbus.services.runtime import metrics

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
IDENTIFIER = re.compile(r"(?<![\w{\"'=~.$-])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w\"'])")
PROMQL_WORDS = {
    "sum", "by", "without", "rate", "increase", "irate", "deriv", "delta", "histogram_quantile", "and", "or",
    "unless", "absent", "avg", "max", "min", "count", "on", "ignoring", "group_left", "group_right", "bool",
    "offset", "le", "topk",
}


def _metrics_in(expr: str) -> set[str]:
    # Drop label matchers ({...}), durations ([5m]) and grouping clauses (by (...)) first.
    bare = re.sub(r"\{[^}]*\}", "", expr)
    bare = re.sub(r"\[[^\]]*\]", "", bare)
    bare = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", bare)
    return {name for name in IDENTIFIER.findall(bare) if name not in PROMQL_WORDS and not name.isdigit()}


def _check(expr: str, where: str) -> set[str]:
    known = metrics.metric_names() | {"up"}
    used = _metrics_in(expr)
    assert used, f"{where}: no metric in {expr!r}"
    unknown = used - known
    assert not unknown, f"{where}: {sorted(unknown)} not defined in services/runtime/metrics.py ({expr!r})"
    return used


def test_the_extraction_finds_metrics_and_only_them() -> None:
    expr = 'histogram_quantile(0.99, sum by (le, sector) (rate(refbus_handler_seconds_bucket{sector="x"}[5m])))'
    assert _metrics_in(expr) == {"refbus_handler_seconds_bucket"}
    with pytest.raises(AssertionError):
        _check("rate(refbus_no_such_metric_total[5m])", "test")


def test_the_scrape_config_parses_and_has_both_jobs() -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"refbus-services", "refbus-jetstream"}
    assert all(job["metrics_path"] == "/metrics" for job in jobs.values())
    assert config["rule_files"] == ["alerts.yml"]


def test_the_alert_rules_parse_and_name_only_existing_metrics() -> None:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    used: set[str] = set()
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"], name
        used |= _check(rule["expr"], name)
    # What operators must be told: overdue rising, lag growing, dead letters, a service down, the stream full.
    for needed in ("refbus_overdue_total", "refbus_jetstream_consumer_num_pending", "refbus_dead_letters_total",
                   "up", "refbus_jetstream_stream_max_bytes"):
        assert needed in used


def test_the_grafana_dashboard_parses_and_names_only_existing_metrics() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["panels"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    used: set[str] = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used |= _check(target["expr"], panel["title"])
    for needed in ("refbus_events_in_total", "refbus_handler_seconds_bucket", "refbus_dead_letters_total"):
        assert needed in used
    assert not metrics.CHILD_LIKE.search(json.dumps(dashboard))
