"""Three inverters on one host (issue 15): three simulators, three daemons, one victoria-metrics, one mosquitto, one
Prometheus, all on loopback.

The three configuration files differ only in the device's port and the metrics port (and in their names, which name
the instances): everything else that must differ (the spool, the MQTT client id) is derived. Under one shared
$STATE_DIRECTORY, as two copies of the single systemd unit would have it, all three run for 30 s without a restart;
each inverter's points land under its own `inverter` tag, each gets its MQTT prefix and Home Assistant devices, and a
real Prometheus, configured from contrib/prometheus/rctmon-scrape.yml, scrapes all three. Meanwhile a fourth daemon
that wants a port already taken is refused at start, naming the process that has it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator

import pytest
import yaml

from mosquitto import Mosquitto, Recorder
from rctmon.catalog import Tier
from rctmon.exporters import homeassistant as ha
from rctmon.exporters.mqtt import topic_level
from rctmon.exporters.spool import FILE_NAME
from rctmon.simulator.options import SimulatorOptions
from support import REPO, free_port, rctmon_command, require_binary, stop_process, wait_for
from vmserver import VictoriaMetrics

RUN_SECONDS = 30.0  # how long all three must run side by side without a restart (the issue asks for 30 s)
SCRAPE_EXAMPLE = os.path.join(REPO, "contrib", "prometheus", "rctmon-scrape.yml")
ALERT_RULES = os.path.join(REPO, "contrib", "prometheus", "rctmon-alerts.yml")
DASHBOARD = os.path.join(REPO, "contrib", "grafana", "rctmon.json")
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


@dataclass(frozen=True)
class Site:
    """One inverter: its configuration file's name (the instance) and what the simulator has attached."""

    instance: str
    name: str
    generators: int
    modules: int

    @property
    def options(self) -> SimulatorOptions:
        return SimulatorOptions(name=self.name, generators=self.generators, battery_modules=self.modules)

    @property
    def prefix(self) -> str:
        return f"rctmon/{topic_level(self.name)}"


SITES = (Site("garage", "Garage PS 6.0", 2, 3), Site("roof", "Roof East", 1, 0), Site("carport", "Carport", 2, 5))

CONFIG = """\
device:
  host: 127.0.0.1
  port: {sim_port}
  intervals: {{fast: 1, medium: 2, slow: 3, static: 60}}
prometheus:
  exposition: true
  bind_port: {metrics_port}
influxdb:
  enable: true
  url: {influx_url}
  flush_interval: 0.5
mqtt:
  enable: true
  host: 127.0.0.1
  port: {broker_port}
"""


class Host:
    """Every process of the test; `stop()` ends them all, whatever has been started so far."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: dict[str, Path] = {}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RCTMON_")}
        self.env["STATE_DIRECTORY"] = str(tmp_path / "state")  # one root shared by all three: each takes a subdir
        self.metrics_ports: dict[str, int] = {}
        self.daemons: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        path = self.tmp_path / f"{name}.log"
        self.logs[name] = path
        with open(path, "ab") as log:
            proc = subprocess.Popen(rctmon_command(*args), stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                    cwd=self.tmp_path)
        self.procs.append(proc)
        return proc

    def start_site(self, site: Site, influx_url: str, broker_port: int) -> None:
        sim_port, self.metrics_ports[site.instance] = free_port(), free_port()
        self.start(f"simulator-{site.instance}", "simulator", "--port", str(sim_port), "--name", site.name,
                   "--generators", str(site.generators), "--battery-modules", str(site.modules))
        wait_for(lambda: _accepts(sim_port), 15, message=f"the simulator of {site.instance}")
        config = self.tmp_path / "etc" / f"{site.instance}.yml"
        config.parent.mkdir(exist_ok=True)
        config.write_text(CONFIG.format(sim_port=sim_port, metrics_port=self.metrics_ports[site.instance],
                                        influx_url=influx_url, broker_port=broker_port), encoding="utf-8")
        self.daemons[site.instance] = self.start(site.instance, "-c", str(config), "daemon")

    def metrics(self, instance: str) -> dict[str, float]:
        """Return the daemon's samples as {'name{labels}': value}."""
        url = f"http://127.0.0.1:{self.metrics_ports[instance]}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
        samples = {}
        for line in text.splitlines():
            match = _SAMPLE.match(line)
            if match:
                samples[match["name"] + (f"{{{match['labels']}}}" if match["labels"] else "")] = float(match["value"])
        return samples

    def log(self, name: str) -> str:
        return self.logs[name].read_text(encoding="utf-8", errors="replace")

    def log_tails(self) -> str:
        return "\n".join(f"--- {name}\n{self.log(name)[-2000:]}" for name in self.logs)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_process(proc)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Prometheus:
    """Debian's Prometheus with contrib/prometheus/rctmon-scrape.yml, its targets replaced by the test's daemons."""

    def __init__(self, tmp_path: Path, targets: list[str]) -> None:
        with open(SCRAPE_EXAMPLE, encoding="utf-8") as f:
            config = yaml.safe_load(f)
        config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [ALERT_RULES]
        (job,) = config["scrape_configs"]
        job["scrape_interval"] = "1s"
        job["static_configs"] = [{"targets": targets}]
        path = tmp_path / "prometheus.yml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.port = free_port()
        with open(tmp_path / "prometheus.log", "wb") as log:
            self.proc = subprocess.Popen(
                [require_binary("prometheus"), f"--config.file={path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT)

    def query(self, promql: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as answer:
            result = json.loads(answer.read())
        assert result["status"] == "success", result
        return list(result["data"]["result"])

    def series_label(self, selector: str, label: str) -> set[str]:
        """Return the values of `label` among the series `selector` matches (what Grafana's label_values asks)."""
        url = f"http://127.0.0.1:{self.port}/api/v1/series?" + urllib.parse.urlencode({"match[]": selector})
        with urllib.request.urlopen(url, timeout=5) as answer:
            result = json.loads(answer.read())
        assert result["status"] == "success", result
        return {series[label] for series in result["data"] if label in series}

    def stop(self) -> None:
        stop_process(self.proc)


def dashboard_variable(name: str) -> tuple[str, str]:
    """Return (selector, label) of the dashboard's `label_values(selector, label)` variable `name`."""
    with open(DASHBOARD, encoding="utf-8") as f:
        (variable,) = [v for v in json.load(f)["templating"]["list"] if v["name"] == name]
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["definition"])
    assert match, variable["definition"]
    return match[1], match[2]


def as_grafana_regex(value: str) -> str:
    """Return `value` as `${var:regex}` puts it into a PromQL string: regex-escaped, backslashes doubled."""
    return re.escape(value).replace("\\", "\\\\")


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    processes = Host(tmp_path)
    try:
        yield processes
    finally:
        processes.stop()


@pytest.fixture
def services(tmp_path: Path) -> Iterator[tuple[VictoriaMetrics, Mosquitto, Recorder]]:
    """One victoria-metrics and one mosquitto for all three daemons, with a subscriber to everything."""
    victoria = VictoriaMetrics(data_dir=str(tmp_path / "vm"))
    broker = Mosquitto(str(tmp_path))
    recorder = None
    try:
        victoria.start()
        broker.start()
        recorder = Recorder(broker.port, ["#"])
        yield victoria, broker, recorder
    finally:
        if recorder is not None:
            recorder.close()
        broker.stop()
        victoria.close()


def expected_devices(site: Site) -> set[str]:
    """Return the identifiers of the Home Assistant devices this inverter's discovery should announce."""
    intervals = {Tier.FAST: 1.0, Tier.MEDIUM: 2.0, Tier.SLOW: 3.0, Tier.STATIC: 60.0}
    configs = ha.discovery_configs(site.options.inventory(), "homeassistant", lambda s, labels: "x", "x", intervals, {})
    return {json.loads(payload)["device"]["identifiers"][0] for payload in configs.values()}


def published_devices(recorder: Recorder, site: Site) -> set[str]:
    nid = ha.node_id(site.options.inventory())
    devices = set()
    for topic in recorder.topics(lambda t: t.startswith(f"homeassistant/sensor/{nid}/")):
        payload = recorder.last(topic)
        if payload:
            devices.update(json.loads(payload)["device"]["identifiers"])
    return devices


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_three_inverters_three_daemons_one_host(tmp_path, host, services):
    victoria, broker, recorder = services
    for site in SITES:
        host.start_site(site, victoria.url, broker.port)
    prometheus = Prometheus(tmp_path, [f"127.0.0.1:{host.metrics_ports[s.instance]}" for s in SITES])
    try:
        # All three connected, their inventories discovered, their first points in victoria-metrics.
        for site in SITES:
            wait_for(lambda site=site: host.metrics(site.instance).get("rctmon_inventory_complete") == 1, 60,
                     interval=0.5, message=f"{site.instance}: inventory complete\n{host.log_tails()}")
        started = time.monotonic()

        # Meanwhile: a fourth daemon that wants garage's metrics port is refused at start, naming its holder.
        intruder = tmp_path / "etc" / "intruder.yml"
        intruder.write_text((tmp_path / "etc" / "roof.yml").read_text(encoding="utf-8").replace(
            f"bind_port: {host.metrics_ports['roof']}", f"bind_port: {host.metrics_ports['garage']}"),
            encoding="utf-8")
        refused = subprocess.run(rctmon_command("-c", str(intruder), "daemon"), capture_output=True, text=True,
                                 timeout=40, env=host.env)

        # All three keep running for RUN_SECONDS.
        def all_ran_long_enough() -> bool:
            dead = {name: proc.returncode for name, proc in host.daemons.items() if proc.poll() is not None}
            assert not dead, f"daemons ended: {dead}\n{host.log_tails()}"
            return time.monotonic() - started >= RUN_SECONDS
        wait_for(all_ran_long_enough, RUN_SECONDS + 30, interval=0.5, message="30 s side by side")

        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert refused.stderr.startswith(
            f"rctmon: {intruder}: prometheus.bind_port: 127.0.0.1:{host.metrics_ports['garage']} is in use by pid "
            f"{host.daemons['garage'].pid} (rctmon: supervisor)"), refused.stderr

        for site in SITES:
            metrics = host.metrics(site.instance)
            restarts = {k: v for k, v in metrics.items() if k.startswith("rctmon_process_restarts_total")}
            for child in ("collector", "prometheus", "influxdb", "mqtt"):
                assert restarts[f'rctmon_process_restarts_total{{process="{child}"}}'] == 0, (site.instance, restarts)
            assert set(restarts.values()) == {0.0}, (site.instance, restarts)
            assert metrics["rctmon_device_up"] == 1
            log = host.log(site.instance)
            assert "died" not in log and "Traceback" not in log, log[-3000:]
            # Its own spool, in a directory of its own under the shared root.
            assert (tmp_path / "state" / site.instance / FILE_NAME).is_file()
        broker_log = broker.log()
        for site in SITES:
            assert f"as rctmon-{site.instance} " in broker_log, broker_log  # the derived client id
        assert "already connected" not in broker_log, broker_log  # nobody threw anybody off the broker

        # InfluxDB: each inverter's points under its own tag; the battery modules as each simulator has them.
        for site in SITES:
            tagged = victoria.samples(f'{{inverter="{site.name}"}}')
            assert len({name for name, _, _, _ in tagged}) > 20, site
            modules = {dict(labels).get("module") for _, labels, _, _ in tagged} - {None}
            assert modules == {str(m) for m in range(site.modules)}, (site, modules)
        inverters = {dict(labels).get("inverter") for _, labels, _, _ in victoria.samples()}
        assert inverters == {site.name for site in SITES}

        # MQTT: three prefixes, each inverter online, and three sets of Home Assistant devices.
        prefixes = {topic.split("/")[1] for topic in recorder.topics(lambda t: t.startswith("rctmon/"))}
        assert prefixes == {topic_level(site.name) for site in SITES}
        for site in SITES:
            assert recorder.last(f"{site.prefix}/availability") == "online"
            assert published_devices(recorder, site) == expected_devices(site), site
        assert len(set.union(*(expected_devices(site) for site in SITES))) == sum(
            len(expected_devices(site)) for site in SITES)  # no device shared between inverters

        # Prometheus: all three targets up, each with its own inverter.
        def all_up() -> list[dict] | None:
            up = prometheus.query('up{job="rctmon"} == 1')
            return up if len(up) == len(SITES) else None
        wait_for(all_up, 20, interval=0.5, message="Prometheus to scrape all three targets")

        # Grafana: the inverter variable lists all three; picking one picks the daemon (target) that reads it.
        targets = {s.instance: f"127.0.0.1:{host.metrics_ports[s.instance]}" for s in SITES}
        selector, label = dashboard_variable("inverter")
        assert prometheus.series_label(selector, label) == {site.name for site in SITES}
        selector, label = dashboard_variable("instance")
        for site in SITES:
            picked = selector.replace("${inverter:regex}", as_grafana_regex(site.name))
            assert prometheus.series_label(picked, label) == {targets[site.instance]}, (site, picked)
        assert prometheus.series_label(selector.replace("${inverter:regex}", ""), label) == set(targets.values())

        by_inverter = prometheus.query("count by (inverter, instance) (rctmon_battery_state_of_charge_ratio) or "
                                       "count by (inverter, instance) (rctmon_inverter_ac_power_watts)")
        seen = {(r["metric"]["inverter"], r["metric"]["instance"]) for r in by_inverter}
        assert {inverter for inverter, _ in seen} == {site.name for site in SITES}
        assert len(seen) == len(SITES)  # one target per inverter
    finally:
        prometheus.stop()
