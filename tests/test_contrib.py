"""contrib/: the systemd units, the Prometheus alert rules and scrape example and the Grafana dashboard, checked with
the real tools (systemd-analyze, systemd-sysusers, promtool) and against the metric names rctmon exposes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest
import yaml

from rctmon import catalog, registry
from rctmon.exporters import prometheus_events
from support import REPO, require_binary

CONTRIB = os.path.join(REPO, "contrib")
UNIT = os.path.join(CONTRIB, "systemd", "rctmon.service")
TEMPLATE = os.path.join(CONTRIB, "systemd", "rctmon@.service")
#: Each unit file, and the name its copy is verified under (a template is verified as one of its instances).
UNITS = {UNIT: "rctmon.service", TEMPLATE: "rctmon@garage.service"}
SYSUSERS = os.path.join(CONTRIB, "systemd", "sysusers.d", "rctmon.conf")
RULES = os.path.join(CONTRIB, "prometheus", "rctmon-alerts.yml")
RULE_TESTS = os.path.join(CONTRIB, "prometheus", "rctmon-alerts.test.yml")
SCRAPE = os.path.join(CONTRIB, "prometheus", "rctmon-scrape.yml")
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
    for name, _, family_labels, _, _ in prometheus_events.FAMILIES:
        names[name] = set(family_labels) | TARGET_LABELS
    for metric in registry.HEALTH_METRICS:
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


def unit_copy(tmp_path, text_edit=lambda text: text, unit: str = UNIT) -> str:
    """Copy the unit with ExecStart pointed at this interpreter's rctmon (systemd-analyze wants it to exist)."""
    script = os.path.join(os.path.dirname(sys.executable), "rctmon")
    binary = script if os.access(script, os.X_OK) else "/bin/true"
    with open(unit, encoding="utf-8") as f:
        text = f.read()
    assert "ExecStart=/opt/rctmon/bin/rctmon " in text
    text = text_edit(text.replace("ExecStart=/opt/rctmon/bin/rctmon ", f"ExecStart={binary} "))
    path = tmp_path / UNITS[unit]
    path.write_text(text, encoding="utf-8")
    return str(path)


def verify_problems(path: str) -> list[str]:
    """Run systemd-analyze verify; return what it says about this unit (the host's own units may draw warnings)."""
    analyze = require_binary("systemd-analyze")
    result = run([analyze, "verify", "--man=no", path], cwd=os.path.dirname(path))
    lines = (result.stdout + result.stderr).splitlines()
    problems = [line for line in lines if os.path.basename(path) in line]
    if result.returncode != 0 and not problems:
        problems = lines or [f"exit status {result.returncode}"]
    return problems


@pytest.mark.timeout(30)
@pytest.mark.parametrize("unit", UNITS)
def test_systemd_analyze_verify_accepts_the_unit(tmp_path, unit):
    assert verify_problems(unit_copy(tmp_path, unit=unit)) == []


@pytest.mark.timeout(30)
@pytest.mark.parametrize("unit", UNITS)
def test_systemd_analyze_verify_would_report_a_problem(tmp_path, unit):
    """The filter above is not vacuous: a misspelt setting in the unit is reported."""
    path = unit_copy(tmp_path, lambda text: text.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"), unit)
    assert any("NoNewPrivilege" in line for line in verify_problems(path))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("unit", UNITS)
def test_unit_hardening_keeps_a_low_exposure_score(tmp_path, unit):
    """systemd-analyze security rates the sandbox 0 (locked down) to 10 (none); fail if it gets worse than 2.0."""
    analyze = require_binary("systemd-analyze")
    result = run([analyze, "security", "--offline=yes", "--threshold=20", unit_copy(tmp_path, unit=unit)])
    if "unrecognized option" in result.stderr:
        pytest.skip("systemd-analyze security --offline needs systemd 250 or newer")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert f"Overall exposure level for {UNITS[unit]}" in result.stdout


#: What the template unit changes of the single unit: the instance's name, file, state and log identifier.
TEMPLATE_CHANGES = {
    "Description": "rctmon %i: RCT Power inverter monitor (Prometheus, InfluxDB, MQTT)",
    "ExecStart": "/opt/rctmon/bin/rctmon -c /etc/rctmon/%i.yml daemon",
    "StateDirectory": "rctmon/%i",
    "WorkingDirectory": "/var/lib/rctmon/%i",
    "SyslogIdentifier": "rctmon-%i",
}


def test_the_template_unit_is_the_single_unit_per_instance():
    """Every other setting, the hardening included, is the single unit's: the template is as locked down."""
    single, template = unit_settings(UNIT), unit_settings(TEMPLATE)
    assert {key: values[-1] for key, values in template.items() if key in TEMPLATE_CHANGES} == TEMPLATE_CHANGES
    assert {k: v for k, v in template.items() if k not in TEMPLATE_CHANGES} == \
        {k: v for k, v in single.items() if k not in TEMPLATE_CHANGES}


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


@pytest.mark.timeout(30)
def test_promtool_checks_the_scrape_example_with_the_rules(tmp_path):
    promtool = require_binary("promtool")
    result = run([promtool, "check", "config", SCRAPE])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout + result.stderr


def test_the_scrape_example_has_one_rctmon_job_with_a_target_per_daemon():
    with open(SCRAPE, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "rctmon"  # RctmonDown matches on it
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert len(targets) == len(set(targets)) >= 2
    assert config["rule_files"] == [os.path.basename(RULES)]


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
    health = {m.name for m in registry.HEALTH_METRICS}
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
            where = f"variable {variable['name']}"
            names, matchers = name_selector(selector)
            if not names:  # an ordinary selector: metric{labels}
                queries.append((where, selector))
                names = [re.match(r"[a-zA-Z_:][\w:]*", selector).group(0)]
            else:  # {__name__=~"a|b", ...}: a matcher on a label only some of them have matches its absence too
                queries.extend((where, name) for name in names)
                for matched in matchers:
                    assert any(matched in exposed_metrics().get(name, ()) for name in names), f"{where}: {matched}"
            assert any(label in exposed_metrics().get(name, ()) for name in names), f"{where}: no label {label}"
    return queries


def name_selector(selector: str) -> tuple[list[str], set[str]]:
    """Return the metric names and matched labels of `{__name__=~"a|b", x="y"}`; ([], set()) for any other."""
    m = re.fullmatch(r'\{\s*__name__\s*=~\s*"([\w:|]+)"\s*,?\s*(.*)\}', selector.strip())
    if not m:
        return [], set()
    names, rest = m.groups()
    return names.split("|"), set(_MATCHER.findall(_STRING.sub('""', rest)))


def test_name_selectors_are_taken_apart():
    assert name_selector('{__name__=~"a|b_c", inverter=~"${x:regex}"}') == (["a", "b_c"], {"inverter"})
    assert name_selector('up{job="x"}') == ([], set())


def test_picking_an_inverter_picks_its_rctmon():
    """With several inverters (one daemon each) the dashboard is driven by one choice: the inverter, by name.

    The inverter variable lists every inverter; the rctmon variable (the target, for the health panels) lists
    the target that exposes the inverter picked, or every target while none exposes inverter values. A real
    Prometheus answers these queries in tests/test_several_inverters.py.
    """
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert [v["name"] for v in dashboard()["templating"]["list"]] == ["inverter", "instance"]  # in this order
    assert "$inverter" not in variables["inverter"]["definition"]
    assert 'inverter=~"${inverter:regex}"' in variables["instance"]["definition"]
    assert "rctmon_build_info" in variables["instance"]["definition"]  # no exposition: every target


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
        "rctmon_influxdb_write_errors_total", "rctmon_inverter_events_total", "rctmon_inverter_fault_active",
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
    message_types = ["ReadingBatch", "InverterEvents", "Inventory", "DeviceStatus", "Heartbeat", "Health", "Ack",
                     "Started", "Stop"]
    for name in message_types:
        assert hasattr(messages, name), f"rctmon.messages has no {name} any more: update docs/architecture.md"
        assert f"`{name}`" in text, f"docs/architecture.md does not explain {name}"
    for process in registry.PROCESSES + ("supervisor",):
        assert process in text


def test_operations_doc_names_the_files_it_installs():
    with open(OPERATIONS, encoding="utf-8") as f:
        text = f.read()
    for path in ("contrib/systemd/rctmon.service", "contrib/systemd/sysusers.d/rctmon.conf",
                 "contrib/prometheus/rctmon-alerts.yml", "contrib/grafana/rctmon.json", "--frame-debug",
                 "/opt/rctmon", "/etc/rctmon.yml", "/var/lib/rctmon", "contrib/systemd/rctmon@.service",
                 "contrib/prometheus/rctmon-scrape.yml", "/etc/rctmon/garage.yml", "/var/lib/rctmon/garage"):
        assert path in text, path
    assert "## Several inverters" in text


def test_docs_and_contrib_point_at_no_other_project():
    """The docs and units once linked the older project's repository for this one's docs and downloads."""
    found = []
    for top in ("README.md", "docs", "contrib", "config.example.yml"):
        for path in [os.path.join(REPO, top)] if top.endswith((".md", ".yml")) else [
                os.path.join(d, name) for d, _, names in os.walk(os.path.join(REPO, top)) for name in names]:
            with open(path, encoding="utf-8") as f:
                found += [f"{os.path.relpath(path, REPO)}: {line.strip()}" for line in f if "svalouch" in line]
    assert found == []


def test_links_between_the_operations_docs_point_at_existing_sections():
    docs = os.path.join(REPO, "docs")
    for page in ("operations.md", "configuration.md", "architecture.md"):
        with open(os.path.join(docs, page), encoding="utf-8") as f:
            text = f.read()
        for target, anchor in re.findall(r"\]\(([\w.-]*\.md)?#([\w-]+)\)", text):
            path = os.path.join(docs, target or page)
            if os.path.exists(path):  # other pages' own tests keep them; a missing page is theirs to add
                assert anchor in doc_anchors(path), f"{page}: link to {target or page}#{anchor} has no section"
