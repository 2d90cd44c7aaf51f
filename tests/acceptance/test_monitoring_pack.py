"""The monitoring pack (deploy/grafana/voxares-syncd.json, deploy/prometheus/alerts.yml) holds
together: promtool accepts the rules and their unit tests pass (each alert firing and not
firing), the dashboard imports through Grafana's UI, every metric either file queries is
served by a real daemon's /metrics with the labels the queries use, and every runbook
command is a real `syncd` command.

promtool is Debian's `prometheus` package (.ci/run installs it); without it the promtool
tests skip, and fail under CI=true.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from syncd.demo_data import write_sample_export
from tests.acceptance.conftest import Workspace, clean_env, syncd_command
from tests.acceptance.daemon_process import free_port, running
from tests.conftest import IN_CI
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "voxares-syncd.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"

# What each alert of the issue (#15) is called in alerts.yml.
REQUIRED_ALERTS = {
    "SyncdJobFailing",  # a job failing
    "SyncdJobStale",  # ... or stale beyond its freshness
    "SyncdPollLagHigh",  # poll lag above a threshold
    "SyncdDeadLetters",  # dead letters > 0
    "SyncdSmsUnknown",  # SMS in `unknown` > 0
    "SyncdSinkDisabled",  # a sink disabled
    "SyncdNotReady",  # readiness failing
}
METRIC = re.compile(r"\bsyncd_[a-zA-Z0-9_]+")
# Labels Prometheus adds to every series (the daemon's own `job` label becomes
# `exported_job`, since the scrape job's `job` wins with honor_labels false).
TARGET_LABELS = {"job", "instance"}


# --- promtool ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool() -> str:
    """The promtool binary; skip without it, or fail under CI=true."""
    found = shutil.which("promtool")
    if found is None:
        reason = "promtool is not installed (apt-get install prometheus; .ci/run does)"
        if IN_CI:
            pytest.fail(f"{reason} (CI=true)")
        pytest.skip(reason)
    return found


def run_promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    """promtool ARGS in deploy/prometheus (rule_files are relative to the test file)."""
    return subprocess.run(
        [promtool, *args],
        cwd=ALERTS.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_promtool_accepts_the_alert_rules(promtool: str) -> None:
    """`promtool check rules` finds every rule of alerts.yml valid."""
    checked = run_promtool(promtool, "check", "rules", ALERTS.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in checked.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    """`promtool test rules alerts.test.yml` passes: each alert fires when it should and
    stays silent when it should not."""
    tested = run_promtool(promtool, "test", "rules", ALERT_TESTS.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_promtool_unit_tests_fail_on_a_broken_rule(promtool: str, tmp_path: Path) -> None:
    """The unit tests can fail: with the dead-letter threshold raised, they do."""
    broken = ALERTS.read_text(encoding="utf-8").replace(
        "syncd_outbox_dead_letters > 0", "syncd_outbox_dead_letters > 5"
    )
    assert broken != ALERTS.read_text(encoding="utf-8")
    (tmp_path / ALERTS.name).write_text(broken, encoding="utf-8")
    shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)
    tested = subprocess.run(
        [promtool, "test", "rules", ALERT_TESTS.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert tested.returncode != 0
    assert "SyncdDeadLetters" in tested.stdout + tested.stderr


# --- the alert rules and their tests ------------------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    """Every rule of alerts.yml."""
    document = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_every_alert_of_the_issue_exists_with_a_runbook() -> None:
    """Each alert the issue asks for is there, with a severity, a summary and a runbook."""
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert set(rules) >= REQUIRED_ALERTS
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"], name
        assert "`syncd " in rule["annotations"]["runbook"], name


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    """alerts.test.yml evaluates each alert at least once expecting it to fire and once
    expecting silence."""
    document = yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))
    firing: set[str] = set()
    silent: set[str] = set()
    for case in document["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert firing == names
    assert silent == names


# --- the runbooks' commands ---------------------------------------------------------------


def runbook_commands() -> set[str]:
    """Every `syncd ...` command quoted in a runbook, alternatives (<a|b>) expanded."""
    commands: set[str] = set()
    for rule in alert_rules():
        for quoted in re.findall(r"`(syncd [^`]+)`", rule["annotations"]["runbook"]):
            text = re.sub(r"\s+", " ", quoted)
            choice = re.search(r"<([^>]+)>", text)
            if choice is None:
                commands.add(text)
                continue
            for option in choice[1].split("|"):
                commands.add(text[: choice.start()] + option + text[choice.end() :])
    return commands


def test_runbook_commands_exist() -> None:
    """Each runbook command names real subcommands and options (`syncd ... --help`)."""
    commands = runbook_commands()
    assert "syncd outbox retry --sink {{ $labels.sink }}" in commands
    for command in sorted(commands):
        words = command.split()[1:]
        path = [w for w in words if re.fullmatch(r"[a-z][a-z-]*", w)]
        path = path[: next((i for i, w in enumerate(words) if w not in path), len(words))]
        options = [w for w in words if w.startswith("--")]
        shown = subprocess.run(
            syncd_command(*path, "--help"),
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_env(COLUMNS="200"),
            check=False,
        )
        assert shown.returncode == 0, f"{command}: {shown.stderr}"
        for option in options:
            assert option in shown.stdout, f"{command}: no {option} in `syncd {' '.join(path)}`"


# --- the dashboard -------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    """The dashboard JSON."""
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_expressions() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and template variables."""
    board = dashboard()
    exprs = [t["expr"] for p in all_panels(board["panels"]) for t in p.get("targets", [])]
    exprs += [v["definition"] for v in board["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_dashboard_imports_through_the_ui() -> None:
    """The dashboard is an export Grafana's Import page accepts: a schema version, no id,
    a `DS_PROMETHEUS` input that every panel and target uses, unique panel ids, and panels
    inside the 24-column grid."""
    board = dashboard()
    assert isinstance(board["schemaVersion"], int)
    assert board["schemaVersion"] >= 36
    assert board["id"] is None
    assert board["uid"]
    assert board["title"]
    [source] = board["__inputs"]
    assert (source["name"], source["type"], source["pluginId"]) == (
        "DS_PROMETHEUS",
        "datasource",
        "prometheus",
    )
    panels = list(all_panels(board["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    wanted = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == wanted, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == wanted, panel["title"]
            assert target["expr"].strip(), panel["title"]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"] == wanted


def test_dashboard_requires_its_panel_types() -> None:
    """`__requires` names every panel type used, so an import warns about a missing plugin."""
    board = dashboard()
    used = {p["type"] for p in all_panels(board["panels"]) if p["type"] != "row"}
    required = {r["id"] for r in board["__requires"] if r["type"] == "panel"}
    assert used <= required


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """Every dashboard expression parses: promtool checks them as recording rules, with
    Grafana's variables replaced by what Grafana would put there."""
    rules = [
        {
            "record": f"dashboard:query_{n}",
            "expr": expr.replace("$__rate_interval", "5m").replace("$instance", ".*"),
        }
        for n, expr in enumerate(dashboard_expressions())
        if not expr.startswith("label_values(")
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout


def test_dashboard_covers_what_the_issue_lists() -> None:
    """Job outcomes and durations, poll lag, backlog per sink, delivery rates, dead letters,
    SMS states and quarantine each have a panel."""
    used = {name for expr in dashboard_expressions() for name in METRIC.findall(expr)}
    assert {
        "syncd_job_runs_total",
        "syncd_job_last_outcome",
        "syncd_job_duration_seconds_bucket",
        "syncd_poller_watermark_lag_seconds",
        "syncd_outbox_backlog",
        "syncd_outbox_delivered_total",
        "syncd_outbox_dead_letters",
        "syncd_messages",
        "syncd_quarantined_rows",
    } <= used


# --- every queried metric exists ----------------------------------------------------------


def referenced() -> dict[str, set[str]]:
    """Each syncd metric the dashboard and the alerts query, with the label names used in the
    same expression (matchers, `by (...)`, legends, `{{ $labels.x }}`), found crudely."""
    texts = [
        f"{target['expr']} {target.get('legendFormat', '')}"
        for panel in all_panels(dashboard()["panels"])
        for target in panel.get("targets", [])
    ]
    texts += [v["definition"] for v in dashboard()["templating"]["list"] if v["type"] == "query"]
    texts += [f"{rule['expr']} {' '.join(rule['annotations'].values())}" for rule in alert_rules()]
    found: dict[str, set[str]] = {}
    for text in texts:
        labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", text))
        for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", text):
            labels |= {word for word in re.split(r"[\s,]+", group) if word}
        labels |= set(re.findall(r"\{\{\s*(\w+)\s*\}\}", text))
        labels |= set(re.findall(r"\$labels\.(\w+)", text))
        for name in METRIC.findall(text):
            found.setdefault(name, set()).update(labels)
    return found


def served_metrics(text: str) -> dict[str, set[str]]:
    """Each series name /metrics serves (a counter as NAME_total, a histogram's _bucket,
    _sum and _count), with the label names its samples carry."""
    served: dict[str, set[str]] = {}
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    for family in text_string_to_metric_families(text):
        for suffix in suffixes.get(family.type, [""]):
            served.setdefault(family.name + suffix, set())
        for sample in family.samples:
            served.setdefault(sample.name, set()).update(sample.labels)
    return served


@pytest.fixture
def scraped(workspace: Workspace) -> str:
    """/metrics of a real `syncd run` with every job the pack watches enabled (patients
    with broken rows, submissions, an outbox file sink, SMS), after each job ran once."""
    port = free_port()
    write_sample_export(workspace.export, 20)
    events = workspace.dir / "events"
    workspace.write_config(
        submissions=True,
        extra=f"""
[outbox]
deliver_interval_seconds = 1

[outbox.sinks.archive]
type = "file"
directory = "{events.as_posix()}"

[messages]
enabled = true
interval_seconds = 1
status_interval_seconds = 1
""",
    )
    text = workspace.config.read_text(encoding="utf-8")
    workspace.config.write_text(
        text.replace(
            "[health]\nenabled = false\n",
            f'[health]\nenabled = true\nhost = "127.0.0.1"\nport = {port}\n',
        ),
        encoding="utf-8",
    )
    upgraded = workspace.run("db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    jobs = {"push_patients", "poll_submissions", "deliver_outbox", "send_messages"}
    body = ""

    def every_job_ran() -> bool:
        nonlocal body
        body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
        ran = set(re.findall(r'syncd_job_last_outcome\{job="(\w+)",outcome="ok"\} 1\.0', body))
        return jobs <= ran and "syncd_messages{" in body and "syncd_outbox_backlog{" in body

    with running(
        syncd_command("run", "--config", str(workspace.config)),
        env=workspace.env(),
        cwd=workspace.dir,
        notify_dir=workspace.dir,
    ) as daemon:
        daemon.wait_ready()
        daemon.wait_healthz(port)
        wait_until(every_job_ran, f"{sorted(jobs)} to end ok", within=120, interval=0.5)
    return body


@pytest.mark.slow
def test_every_queried_metric_and_label_is_served(scraped: str) -> None:
    """Each syncd metric the dashboard or the alerts query is on a real daemon's /metrics;
    each label a query uses is a label of its samples (or one Prometheus adds), when the
    daemon has samples of it."""
    served = served_metrics(scraped)
    wanted = referenced()
    assert len(wanted) >= 15
    missing = sorted(set(wanted) - set(served))
    assert missing == [], f"queried but not served: {missing}"
    for name, labels in sorted(wanted.items()):
        if not served[name]:
            continue  # no sample yet (no retry happened, say): nothing to compare labels with
        own = {"job" if label == "exported_job" else label for label in labels}
        known = served[name] | TARGET_LABELS
        unknown = own - known
        assert unknown == set(), f"{name}: {sorted(unknown)} are not labels of its samples"
