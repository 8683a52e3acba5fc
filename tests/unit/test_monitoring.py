"""The alert rules and the Grafana dashboard in monitoring/, without any server.

- promtool checks the rules and runs their unit tests (for every alert, a
  series that fires it and one that does not), and parses every dashboard
  query (as recording rules, Grafana's variables replaced);
- every metric the rules and the dashboard query is one the service exports
  (monitoring/metrics.txt), and the dashboard shows every one of them.

promtool is taken from $PROMTOOL, else .cache/promtool/bin/promtool (what
`make promtool`, a prerequisite of `make test-unit`, puts there), else PATH.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "monitoring"
RULES = MONITORING / "prometheus" / "shield-orchestrator.rules.yml"
RULES_TEST = MONITORING / "prometheus" / "shield-orchestrator.rules.test.yml"
DASHBOARD = MONITORING / "grafana" / "shield-orchestrator.json"
METRICS = MONITORING / "metrics.txt"

HISTOGRAMS = frozenset({"shield_chunk_processing_seconds"})
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
COUNTER_FUNCTIONS = ("rate", "irate", "increase")
# Grafana's variables, replaced by plain values for promtool to parse the queries.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$instance": ".*"}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_COMMENT = re.compile(r"#[^\n]*")
_SELECTOR = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_SHIELD = re.compile(r"(?<![\w:$])shield_[A-Za-z0-9_:]*")
# A metric and its label matchers, in a dashboard query.
_SELECTOR_OF = re.compile(r"(?<![\w:$])(shield_[A-Za-z0-9_:]*|ALERTS)\s*(\{[^{}]*\})?")
_COUNTER_CALL = re.compile(rf"\b({'|'.join(COUNTER_FUNCTIONS)})\s*\(\s*(shield_[A-Za-z0-9_:]*)")


# --- helpers ------------------------------------------------------------------


def promtool() -> str:
    candidates = [os.environ.get("PROMTOOL"), str(REPO / ".cache/promtool/bin/promtool"), shutil.which("promtool")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        "promtool not found: run `make promtool` (scripts/install-promtool.sh extracts it from Debian's "
        "prometheus package into .cache/promtool/bin, without a Prometheus server), or set PROMTOOL"
    )


def run_promtool(*args: str, cwd: Path = REPO) -> str:
    done = subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def metric_names(expr: str) -> set[str]:
    """The `shield_` identifiers a PromQL expression uses as metric names.

    String literals, comments, label matchers and ranges are removed first,
    so label values, label names and Grafana's variables do not count.
    """
    bare = _RANGE.sub(" ", _SELECTOR.sub(" ", _COMMENT.sub(" ", _STRING.sub('""', expr))))
    return set(_SHIELD.findall(bare))


def base_name(name: str) -> str:
    """A histogram's series (_bucket/_sum/_count) stand for the histogram."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in HISTOGRAMS:
            return name.removesuffix(suffix)
    return name


def exported() -> list[str]:
    return METRICS.read_text().splitlines()


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside rows included."""
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    board = dashboard()
    queries = [
        (f"panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in panels(board["panels"])
        for target in panel.get("targets", [])
    ]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append((f"variable {variable['name']}", query["query"] if isinstance(query, dict) else query))
    return queries


def panel_queries() -> list[tuple[str, str]]:
    return [(where, expr) for where, expr in dashboard_queries() if where.startswith("panel ")]


def unexported(names: set[str]) -> set[str]:
    known = set(exported())
    bad = {name for name in names if base_name(name) not in known}
    # A histogram is only ever queried through its series.
    return bad | (names & HISTOGRAMS)


# --- metrics.txt ----------------------------------------------------------------


def test_the_metrics_list_is_one_plain_name_per_line() -> None:
    names = exported()
    assert names, METRICS
    assert all(re.fullmatch(r"shield_[a-z0-9_]+", name) for name in names), names
    assert len(names) == len(set(names)), "duplicates"
    assert HISTOGRAMS <= set(names)
    assert not [name for name in names if name.endswith(HISTOGRAM_SUFFIXES)], "histograms by their base name"


def registered() -> set[str]:
    """The names the service's own registry exports (counters with _total,
    histograms by their base name), read from the rendered package, after a
    scrape that read the queue from Redis (the queue gauges exist only then)."""
    from shield_orchestrator.metrics import Metrics
    from shield_orchestrator.queue.stream import QueueStats

    metrics = Metrics()
    metrics.render(QueueStats(queue_depth=0, pending=0, dead_letters=0), sse_clients=0)
    names = set()
    for family in metrics.registry.collect():
        names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return names


def samples(text: str) -> dict[str, float]:
    """The exposition's unlabelled samples, by name."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.split(" ")
            found[name] = float(value)
    return found


def test_metrics_without_redis_keep_the_process_series_and_leave_the_queue_out() -> None:
    """Issue 22: a scrape while Redis does not answer is still the process's own series,
    with shield_redis_up 0 and no queue gauge (not a stale or made-up value)."""
    from shield_orchestrator.metrics import Metrics, QueueGauges
    from shield_orchestrator.queue.stream import QueueStats

    metrics = Metrics()
    metrics.active_workers.set(3)
    stats = QueueStats(queue_depth=7, pending=2, dead_letters=1, high_priority_depth=4)
    up = samples(metrics.render(stats, sse_clients=2).decode())
    queue = {name for name, _, _ in QueueGauges.GAUGES}
    assert up["shield_redis_up"] == 1 and up["shield_active_workers"] == 3 and up["shield_sse_clients"] == 2
    assert {name: up[name] for name in queue} == {
        "shield_queue_depth": 7,
        "shield_pending": 2,
        "shield_dead_letters": 1,
        "shield_queue_high_priority_depth": 4,
    }
    down_text = metrics.render(None, sse_clients=1).decode()
    down = samples(down_text)
    assert down["shield_redis_up"] == 0 and down["shield_active_workers"] == 3 and down["shield_sse_clients"] == 1
    assert not [line for line in down_text.splitlines() if any(name in line.split() for name in queue)]
    assert queue & set(down) == set() and "shield_chunks_processed_total" in down
    again = samples(metrics.render(stats, sse_clients=0).decode())
    assert again["shield_redis_up"] == 1 and again["shield_queue_depth"] == 7


def test_the_metrics_list_is_what_the_service_registers() -> None:
    listed, exported_now = set(exported()), registered()
    assert listed == exported_now, (
        f"monitoring/metrics.txt lacks {sorted(exported_now - listed)}; lists unknown {sorted(listed - exported_now)}"
    )


# --- the rules ------------------------------------------------------------------


def test_the_readmes_runbook_answers_every_alert() -> None:
    """README.md's runbook has a row for each alert the rules define, and none for an alert they do not."""
    readme = (REPO / "README.md").read_text()
    runbook = readme.split("## Runbook", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("`")[1] for line in runbook.splitlines() if line.startswith("| `Shield")}
    alerts = {rule["alert"] for rule in rules()}
    assert rows == alerts


def test_promtool_checks_the_rules() -> None:
    assert "SUCCESS" in run_promtool("check", "rules", str(RULES))


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    assert "SUCCESS" in run_promtool("test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)


def test_every_alert_has_a_case_that_fires_it_and_one_that_does_not() -> None:
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert alerts - fired == set(), "alerts no test fires"
    assert alerts - quiet == set(), "alerts no test shows quiet"
    assert (fired | quiet) - alerts == set(), "tests of alerts that do not exist"


def test_every_alert_has_a_severity_and_says_what_to_look_at() -> None:
    for rule in (rule for rule in rules() if "alert" in rule):
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), rule["alert"]
        for pointer in ("journalctl -u shield-orchestrator", "/health/detailed"):
            assert pointer in annotations["description"], f"{rule['alert']}: no {pointer}"


def test_the_rules_use_only_exported_metrics() -> None:
    used = {name for rule in rules() for name in metric_names(rule["expr"])}
    assert used, "no shield_ metric found in the rules"
    assert unexported(used) == set()


# --- the dashboard ----------------------------------------------------------------


def test_the_dashboard_is_importable_with_a_prometheus_input() -> None:
    board = dashboard()
    inputs = {item["name"]: item for item in board["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource"
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    assert board["uid"] and board["title"] and board["id"] is None
    ids = [panel["id"] for panel in panels(board["panels"])]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels(board["panels"]):
        if panel["type"] == "row":
            continue
        for source in (panel["datasource"], *(target["datasource"] for target in panel["targets"])):
            assert source == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert panel["targets"], panel["title"]
    names = [variable["name"] for variable in board["templating"]["list"]]
    assert "instance" in names


def test_every_dashboard_query_filters_on_the_instance_variable() -> None:
    for where, expr in panel_queries():
        selectors = _SELECTOR_OF.findall(expr)
        assert selectors, where
        for name, matchers in selectors:
            assert 'instance=~"$instance"' in matchers, f"{where}: {name} without the instance filter: {expr}"


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    rendered = []
    for index, (where, expr) in enumerate(dashboard_queries()):
        if where.startswith("variable "):
            continue  # label_values(...) is Grafana's, not PromQL
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"{where}: a Grafana variable the test does not know: {expr}"
        rendered.append({"record": f"dashboard:query_{index}", "expr": expr})
    rules_file = tmp_path / "dashboard-queries.rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rendered}]}))
    assert "SUCCESS" in run_promtool("check", "rules", str(rules_file))


def test_the_dashboard_uses_only_exported_metrics() -> None:
    used = {name for _, expr in dashboard_queries() for name in metric_names(expr)}
    assert unexported(used) == set()


def test_the_dashboard_shows_every_exported_metric() -> None:
    used = {base_name(name) for _, expr in panel_queries() for name in metric_names(expr)}
    assert set(exported()) - used == set()


def test_counters_are_read_through_rate_or_increase() -> None:
    queries = [expr for _, expr in dashboard_queries()] + [rule["expr"] for rule in rules()]
    for expr in queries:
        for function, name in _COUNTER_CALL.findall(expr):
            assert name.endswith(("_total", "_bucket", "_sum", "_count")), f"{function}({name}) in {expr}"
        for name in metric_names(expr):
            if name.endswith("_total"):
                assert re.search(rf"\b({'|'.join(COUNTER_FUNCTIONS)})\s*\(\s*{name}\b", expr), f"{name} in {expr}"


# --- the parser itself ----------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'rate(shield_chunks_processed_total{instance=~"$instance"}[$__rate_interval])',
            {"shield_chunks_processed_total"},
        ),
        ('shield_pool_paused{dependency="shield_not_a_metric"} == 1', {"shield_pool_paused"}),
        (
            "sum by (le) (rate(shield_chunk_processing_seconds_bucket[5m])) # shield_in_a_comment",
            {"shield_chunk_processing_seconds_bucket"},
        ),
        ("label_values(shield_active_workers, instance)", {"shield_active_workers"}),
        ('ALERTS{alertname=~"Shield.*"}', set()),
        (
            "time() - shield_pg_sync_last_success_timestamp_seconds > 600",
            {"shield_pg_sync_last_success_timestamp_seconds"},
        ),
    ],
)
def test_metric_names_reads_metric_names_only(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_unknown_and_bare_histogram_names_are_refused() -> None:
    assert unexported({"shield_chunk_processing_seconds_bucket", "shield_queue_depth"}) == set()
    assert unexported({"shield_chunk_processing_seconds"}) == {"shield_chunk_processing_seconds"}
    assert unexported({"shield_queue_depth_count", "shield_no_such_metric"}) == {
        "shield_queue_depth_count",
        "shield_no_such_metric",
    }
