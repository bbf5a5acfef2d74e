"""deploy/ as the tests read it: the PromQL of the alert rules and of the Grafana dashboard,
and the series each expression selects."""

import json
import re
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).parents[2] / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERT_TESTS = PROMETHEUS / "alerts.test.yml"
PROMETHEUS_CONFIG = PROMETHEUS / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "wallet-dashboard.json"

# What the dashboard's variables stand for when Prometheus, not Grafana, reads a query.
DASHBOARD_VARIABLES = {
    "$__rate_interval": "1m",
    "$api_job": "wallet-api",
    "$writer_job": "wallet-writer",
}


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression) of every query of every panel."""
    return [
        (panel["title"], target["expr"])
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
    ]


def as_prometheus_reads_it(expression: str) -> str:
    """A dashboard query with Grafana's variables replaced by their values."""
    for variable, value in DASHBOARD_VARIABLES.items():
        expression = expression.replace(variable, value)
    return expression


def scrape_jobs() -> set[str]:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    return {job["job_name"] for job in config["scrape_configs"]}


_TOKEN = re.compile(
    r"""
    (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<matchers>\{[^}]*\})
  | (?P<range>\[[^\]]*\])
  | (?P<duration>\d+(?:ms|[smhdwy])\b)
  | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<other>\S)
    """,
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "unless", "bool", "offset"}
# Aggregation operators, which may come before their "by (...)" instead of "(".
_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count"}
_AGGREGATIONS |= {"count_values", "bottomk", "topk", "quantile"}
# Followed by a list of label names in parentheses, which name no series.
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_JOB = re.compile(r'\bjob\s*=~?\s*"([^"]*)"')


def selectors(expression: str) -> list[tuple[str, str | None]]:
    """(metric name, the value of its ``job`` matcher or None) of every series selector.

    Not a PromQL parser: it knows what the expressions of deploy/ use (functions and
    aggregations, by/without/on/ignoring lists, label matchers, ranges, numbers)."""
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expression)]
    found: list[tuple[str, str | None]] = []
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else (None, "")
        if kind == "name" and text in _LABEL_LISTS and following[1] == "(":
            while tokens[i][1] != ")":
                i += 1
        elif kind == "name" and text not in _KEYWORDS | _AGGREGATIONS and following[1] != "(":
            job = None
            if following[0] == "matchers":
                match = _JOB.search(following[1])
                job = match.group(1) if match else None
            found.append((text, job))
        i += 1
    return found
