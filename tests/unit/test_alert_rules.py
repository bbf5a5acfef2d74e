"""deploy/: promtool accepts the alert rules, the example Prometheus configuration and the
dashboard's queries, and the rules pass their own unit tests (alerts.test.yml), one at
least for each alert. promtool comes with Debian's prometheus package; `.ci/run` makes
sure it is there, so in CI these run, never skip."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.deploy_files import (
    ALERT_TESTS,
    ALERTS,
    DASHBOARD_VARIABLES,
    PROMETHEUS,
    PROMETHEUS_CONFIG,
    alert_rules,
    as_prometheus_reads_it,
    dashboard,
    dashboard_queries,
    scrape_jobs,
    selectors,
)

PROMTOOL_TIMEOUT_S = 60.0


@pytest.fixture
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("no promtool on PATH (Debian: the prometheus package; .ci/run fetches it)")
    return found


def check(promtool: str, *args: str) -> str:
    result = subprocess.run(
        [promtool, *args],
        cwd=PROMETHEUS,
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_promtool_accepts_the_rules_and_they_pass_their_unit_tests(promtool: str) -> None:
    assert f"SUCCESS: {len(alert_rules())} rules found" in check(
        promtool, "check", "rules", ALERTS.name
    )
    assert "SUCCESS" in check(promtool, "test", "rules", ALERT_TESTS.name)


def test_promtool_accepts_the_example_configuration(promtool: str) -> None:
    check(promtool, "check", "config", PROMETHEUS_CONFIG.name)


def test_the_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    queries = dashboard_queries()
    rules = [
        {"record": f"dashboard:query_{n}", "expr": as_prometheus_reads_it(expression)}
        for n, (_, expression) in enumerate(queries)
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(queries)} rules found" in check(promtool, "check", "rules", str(path))


def test_every_alert_has_a_severity_a_summary_and_a_test_that_fires_it() -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["alert"] in fired, f"no test in {ALERT_TESTS.name} fires {rule['alert']}"


def test_the_rules_and_the_dashboard_select_the_jobs_prometheus_scrapes() -> None:
    jobs = scrape_jobs()
    assert jobs == {"wallet-api", "wallet-writer"}
    for rule in alert_rules():
        assert {job for _, job in selectors(rule["expr"])} <= jobs, rule["alert"]
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    for name in ("api_job", "writer_job"):
        default = variables[name]["current"]["value"]
        assert default == DASHBOARD_VARIABLES[f"${name}"]
        assert default in jobs
    for title, expression in dashboard_queries():
        assert all(job is not None for _, job in selectors(expression)), title


def test_ci_makes_promtool_present() -> None:
    ci = (Path(__file__).parents[2] / ".ci" / "run").read_text()
    assert "apt-get download prometheus" in ci
    assert "promtool --version" in ci
