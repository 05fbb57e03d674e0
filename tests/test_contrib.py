"""contrib/: the systemd unit, the Prometheus alert rules and the Grafana dashboard, checked with the real tools
(systemd-analyze, systemd-sysusers, promtool) and against the metric names rctmon exposes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest
import yaml

from rctmon import catalog, health_metrics
from support import REPO, require_binary

CONTRIB = os.path.join(REPO, "contrib")
UNIT = os.path.join(CONTRIB, "systemd", "rctmon.service")
SYSUSERS = os.path.join(CONTRIB, "systemd", "sysusers.d", "rctmon.conf")
RULES = os.path.join(CONTRIB, "prometheus", "rctmon-alerts.yml")
RULE_TESTS = os.path.join(CONTRIB, "prometheus", "rctmon-alerts.test.yml")
DASHBOARD = os.path.join(CONTRIB, "grafana", "rctmon.json")
OPERATIONS = os.path.join(REPO, "docs", "operations.md")
ARCHITECTURE = os.path.join(REPO, "docs", "architecture.md")
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series


def run(argv: list[str], timeout: float = 30, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)


# --- what rctmon exposes ------------------------------------------------------------------------------------------


def exposed_metrics() -> dict[str, set[str]]:
    """Return every series name rctmon exposes (histograms as their _bucket/_sum/_count), with its label names."""
    names: dict[str, set[str]] = {"up": set(TARGET_LABELS)}
    for family, rows in catalog.metric_families().items():
        labels = {"inverter"} | TARGET_LABELS
        for row in rows:
            labels |= {row.axis.label} if row.axis else set()
            labels |= {name for name, _ in row.labels}
            if row.kind is catalog.Kind.INFO:
                labels.add(row.field)
        names[family] = labels
    for metric in health_metrics.HEALTH_METRICS:
        labels = set(metric.labels) | TARGET_LABELS
        if metric.type == "histogram":
            names[metric.name + "_bucket"] = labels | {"le"}
            names[metric.name + "_sum"] = labels
            names[metric.name + "_count"] = labels
        else:
            names[metric.name] = labels
    return names


# --- reading metric names out of PromQL ----------------------------------------------------------------------------

KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
            "inf", "nan", "atan2"}
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SELECTOR = re.compile(r"(?<![\w.:])([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])([a-zA-Z_:][\w:]*)(\s*\()?")


def promql_selectors(expr: str) -> Iterator[tuple[str, set[str]]]:
    """Yield (metric name, label names matched) for every series selector in a PromQL expression."""
    expr = _STRING.sub('""', _GRAFANA_VARIABLE.sub("1", expr))
    for name, matchers in _SELECTOR.findall(expr):
        if name not in KEYWORDS:
            yield name, set(_MATCHER.findall(matchers))
    bare = _GROUPING.sub(" ", _SELECTOR.sub(r"\1", expr))
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", bare)
    for name, call in _IDENTIFIER.findall(bare):
        if not call and name.lower() not in KEYWORDS:
            yield name, set()


def test_promql_parser_finds_metrics_and_skips_the_rest():
    expr = ('histogram_quantile(0.9, sum by (le) (rate(rctmon_response_seconds_bucket{instance="$instance"}'
            '[$__rate_interval]))) + on (job) group_left (kind) foo_total offset 5m / 1e3 '
            '+ time() - bar{a=~"x|y", b!="{z}"} > bool 0 and sum without (process) (baz)')
    found = {}
    for name, labels in promql_selectors(expr):
        found.setdefault(name, set()).update(labels)
    assert found == {"rctmon_response_seconds_bucket": {"instance"}, "foo_total": set(), "bar": {"a", "b"},
                     "baz": set()}


def check_queries(queries: list[tuple[str, str]]) -> list[str]:
    """Return a problem line for each metric (or label of it) that rctmon does not expose."""
    exposed = exposed_metrics()
    problems = []
    for where, expr in queries:
        for name, labels in promql_selectors(expr):
            if name not in exposed:
                problems.append(f"{where}: {name} is not a metric rctmon exposes ({expr})")
            elif labels - exposed[name]:
                problems.append(f"{where}: {name} has no label {sorted(labels - exposed[name])} ({expr})")
    return problems


# --- systemd ------------------------------------------------------------------------------------------------------


def unit_settings(path: str = UNIT) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith(("#", ";", "[")):
                key, _, value = line.partition("=")
                settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def unit_copy(tmp_path, text_edit=lambda text: text) -> str:
    """Copy the unit with ExecStart pointed at this interpreter's rctmon (systemd-analyze wants it to exist)."""
    script = os.path.join(os.path.dirname(sys.executable), "rctmon")
    binary = script if os.access(script, os.X_OK) else "/bin/true"
    with open(UNIT, encoding="utf-8") as f:
        text = f.read()
    assert "ExecStart=/opt/rctmon/bin/rctmon " in text
    text = text_edit(text.replace("ExecStart=/opt/rctmon/bin/rctmon ", f"ExecStart={binary} "))
    path = tmp_path / "rctmon.service"
    path.write_text(text, encoding="utf-8")
    return str(path)


def verify_problems(path: str) -> list[str]:
    """Run systemd-analyze verify; return what it says about this unit (the host's own units may draw warnings)."""
    analyze = require_binary("systemd-analyze")
    result = run([analyze, "verify", "--man=no", path], cwd=os.path.dirname(path))
    lines = (result.stdout + result.stderr).splitlines()
    problems = [line for line in lines if "rctmon.service" in line]
    if result.returncode != 0 and not problems:
        problems = lines or [f"exit status {result.returncode}"]
    return problems


@pytest.mark.timeout(30)
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    assert verify_problems(unit_copy(tmp_path)) == []


@pytest.mark.timeout(30)
def test_systemd_analyze_verify_would_report_a_problem(tmp_path):
    """The filter above is not vacuous: a misspelt setting in the unit is reported."""
    path = unit_copy(tmp_path, lambda text: text.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
    assert any("NoNewPrivilege" in line for line in verify_problems(path))


@pytest.mark.timeout(30)
def test_unit_hardening_keeps_a_low_exposure_score(tmp_path):
    """systemd-analyze security rates the sandbox 0 (locked down) to 10 (none); fail if it gets worse than 2.0."""
    analyze = require_binary("systemd-analyze")
    result = run([analyze, "security", "--offline=yes", "--threshold=20", unit_copy(tmp_path)])
    if "unrecognized option" in result.stderr:
        pytest.skip("systemd-analyze security --offline needs systemd 250 or newer")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert "Overall exposure level for rctmon.service" in result.stdout


def test_unit_runs_the_daemon_the_documented_way():
    s = unit_settings()
    one = {key: values[-1] for key, values in s.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["ExecStart"] == "/opt/rctmon/bin/rctmon -c /etc/rctmon.yml daemon"
    assert int(one["WatchdogSec"]) == 30  # the supervisor pings every WATCHDOG_USEC / 2
    assert one["Restart"] == "on-failure" and "RestartSec" in one
    assert one["RestartPreventExitStatus"] == "2"  # rctmon's exit status for an invalid configuration
    assert one["User"] == "rctmon" and one["StateDirectory"] == "rctmon"
    assert one["KillMode"] == "mixed"
    assert int(one["TimeoutStopSec"]) > 10  # the daemon itself stops within 10 s
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}  # socketpairs
    assert one["CapabilityBoundingSet"] == ""
    for key in ("NoNewPrivileges", "PrivateTmp", "PrivateDevices", "ProtectHome", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "RestrictNamespaces",
                "LockPersonality", "MemoryDenyWriteExecute"):
        assert one[key] == "yes", key
    assert one["ProtectSystem"] == "strict"
    assert "@system-service" in s["SystemCallFilter"]
    # Children are forked by the supervisor and must be able to set their parent-death signal.
    assert not any("@process" in v and v.startswith("~") for v in s["SystemCallFilter"])
    assert "PrivateNetwork" not in one and "IPAddressDeny" not in one


@pytest.mark.timeout(30)
def test_sysusers_file_creates_the_service_user(tmp_path):
    sysusers = require_binary("systemd-sysusers")
    result = run([sysusers, f"--root={tmp_path}", "--dry-run", SYSUSERS])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Creating user 'rctmon'" in output, output
    assert not [line for line in output.splitlines() if "rctmon.conf" in line], output


MDWE_PROBE = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN (Linux 6.3+)
    print("unsupported", ctypes.get_errno())
    sys.exit(0)
os.execv(sys.executable, [sys.executable, "-c", sys.argv[1]])
"""
MDWE_WORKLOAD = r"""
import mmap
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    raise SystemExit("W+X memory was allowed: the restriction is not in force")
except OSError:
    pass
import ctypes, multiprocessing, os, sqlite3, ssl
assert ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: x + 1)(41) == 42  # libffi closures
import prometheus_client, influxdb_client, yaml, tenacity, rctclient, setproctitle
from rctmon import proc, config, catalog, channel
def child(conn):
    proc.become_child("probe")  # setproctitle and prctl(PR_SET_PDEATHSIG) in a forked child
    conn.send("ok")
a, b = multiprocessing.get_context("fork").Pipe()
p = multiprocessing.get_context("fork").Process(target=child, args=(b,))
p.start()
assert a.recv() == "ok"
p.join(10)
assert p.exitcode == 0
sqlite3.connect(":memory:").execute("create table t (x)")
print("fine")
"""


@pytest.mark.timeout(60)
def test_python_and_rctmon_run_with_memory_deny_write_execute():
    """MemoryDenyWriteExecute=yes, tried with the kernel's equivalent (PR_SET_MDWE), inherited across exec."""
    result = run([sys.executable, "-c", MDWE_PROBE, MDWE_WORKLOAD], cwd=REPO)
    if result.stdout.startswith("unsupported"):
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    assert result.returncode == 0 and result.stdout.strip() == "fine", result.stdout + result.stderr


# --- Prometheus alert rules ----------------------------------------------------------------------------------------

REQUIRED_ALERTS = {
    "RctmonDown", "RctmonProcessDown", "RctmonProcessRestarting", "RctmonInverterUnreachable", "RctmonReadingsStale",
    "RctmonInventoryIncomplete", "RctmonDecodeErrorsHigh", "RctmonInfluxDBWritesFailing",
    "RctmonInfluxDBSpoolGrowing", "RctmonInfluxDBPointsDropped", "RctmonMQTTDisconnected",
}


def alert_rules() -> list[dict]:
    with open(RULES, encoding="utf-8") as f:
        return [rule for group in yaml.safe_load(f)["groups"] for rule in group["rules"] if "alert" in rule]


@pytest.mark.timeout(30)
def test_promtool_check_rules():
    promtool = require_binary("promtool")
    result = run([promtool, "check", "rules", RULES])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(60)
def test_promtool_test_rules():
    promtool = require_binary("promtool")
    result = run([promtool, "test", "rules", RULE_TESTS], timeout=60)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_not_firing():
    with open(RULE_TESTS, encoding="utf-8") as f:
        tests = yaml.safe_load(f)["tests"]
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert REQUIRED_ALERTS <= names
    assert names - fired == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown not firing"


def test_alerts_use_only_metrics_rctmon_exposes():
    health = {m.name for m in health_metrics.HEALTH_METRICS}
    queries = [(rule["alert"], rule["expr"]) for rule in alert_rules()]
    assert check_queries(queries) == []
    for where, expr in queries:  # process health only: the rules must work with exposition off
        for name, _ in promql_selectors(expr):
            assert name == "up" or name in health or name.rsplit("_", 1)[0] in health, (where, name)


def github_anchor(heading: str) -> str:
    """Return the anchor GitHub gives a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def doc_anchors(path: str) -> set[str]:
    with open(path, encoding="utf-8") as f:
        text = re.sub(r"```.*?```", "", f.read(), flags=re.S)
    return {github_anchor(m) for m in re.findall(r"^#+\s+(.+)$", text, re.M)}


def test_alerts_have_severity_summary_and_a_runbook_that_exists():
    anchors = doc_anchors(OPERATIONS)
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        page, _, anchor = annotations["runbook"].partition("#")
        assert page == "docs/operations.md" and anchor in anchors, (rule["alert"], annotations["runbook"])


# --- Grafana dashboard ---------------------------------------------------------------------------------------------


def dashboard() -> dict:
    with open(DASHBOARD, encoding="utf-8") as f:
        return json.load(f)


def all_panels(panels: list[dict]) -> Iterator[dict]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_queries(board: dict) -> list[tuple[str, str]]:
    queries = []
    for panel in all_panels(board["panels"]):
        for target in panel.get("targets", []):
            queries.append((panel["title"], target["expr"]))
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
            assert m, f"variable {variable['name']}: unexpected query {query}"
            selector, label = m.groups()
            queries.append((f"variable {variable['name']}", selector))
            metric = re.match(r"[a-zA-Z_:][\w:]*", selector).group(0)
            assert label in exposed_metrics().get(metric, ()), f"variable {variable['name']}: no label {label}"
    return queries


def test_dashboard_queries_only_metrics_rctmon_exposes():
    assert check_queries(dashboard_queries(dashboard())) == []


def test_dashboard_covers_power_flow_energy_and_health():
    used = {name for _, expr in dashboard_queries(dashboard()) for name, _ in promql_selectors(expr)}
    wanted = {
        "rctmon_generator_power_watts", "rctmon_battery_power_watts", "rctmon_battery_state_of_charge_ratio",
        "rctmon_grid_power_watts", "rctmon_household_power_watts", "rctmon_battery_state",
        "rctmon_generator_energy_day_joules", "rctmon_generator_energy_month_joules",
        "rctmon_generator_energy_joules_total", "rctmon_grid_feed_energy_day_joules",
        "rctmon_grid_draw_energy_day_joules", "rctmon_household_energy_day_joules",
        "rctmon_device_up", "rctmon_process_up", "rctmon_process_restarts_total",
        "rctmon_process_resident_memory_bytes", "rctmon_process_cpu_seconds_total", "rctmon_frames_received_total",
        "rctmon_decode_errors_total", "rctmon_response_seconds_bucket", "rctmon_influxdb_spool_points",
        "rctmon_influxdb_write_errors_total",
    }
    assert wanted - used == set()


def test_dashboard_is_importable():
    board = dashboard()
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"inverter", "instance"} <= variables
    ids, cells = set(), {}
    for panel in all_panels(board["panels"]):
        assert panel["id"] not in ids, f"duplicate panel id {panel['id']}"
        ids.add(panel["id"])
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
    for panel in all_panels(board["panels"]):
        for target in panel.get("targets", []):
            expr = target["expr"]
            assert "$inverter" in expr or "$instance" in expr, f"{panel['title']} ignores the variables: {expr}"


# --- docs -------------------------------------------------------------------------------------------------------------


def test_architecture_names_every_message_and_process():
    from rctmon import messages

    with open(ARCHITECTURE, encoding="utf-8") as f:
        text = f.read()
    message_types = ["ReadingBatch", "Inventory", "DeviceStatus", "Heartbeat", "Health", "Ack", "Started", "Stop"]
    for name in message_types:
        assert hasattr(messages, name), f"rctmon.messages has no {name} any more: update docs/architecture.md"
        assert f"`{name}`" in text, f"docs/architecture.md does not explain {name}"
    for process in health_metrics.PROCESSES + ("supervisor",):
        assert process in text


def test_operations_doc_names_the_files_it_installs():
    with open(OPERATIONS, encoding="utf-8") as f:
        text = f.read()
    for path in ("contrib/systemd/rctmon.service", "contrib/systemd/sysusers.d/rctmon.conf",
                 "contrib/prometheus/rctmon-alerts.yml", "contrib/grafana/rctmon.json", "--frame-debug",
                 "/opt/rctmon", "/etc/rctmon.yml", "/var/lib/rctmon"):
        assert path in text, path


def test_links_between_the_operations_docs_point_at_existing_sections():
    docs = os.path.join(REPO, "docs")
    for page in ("operations.md", "configuration.md", "architecture.md"):
        with open(os.path.join(docs, page), encoding="utf-8") as f:
            text = f.read()
        for target, anchor in re.findall(r"\]\(([\w.-]*\.md)?#([\w-]+)\)", text):
            path = os.path.join(docs, target or page)
            if os.path.exists(path):  # other pages' own tests keep them; a missing page is theirs to add
                assert anchor in doc_anchors(path), f"{page}: link to {target or page}#{anchor} has no section"
