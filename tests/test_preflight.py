"""rctmon.preflight: what keeps this machine from running a configuration, found before any child crash-loops."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import paho.mqtt.client as paho
import pytest

from rctmon import preflight as pre
from rctmon import preflight_checks as checks
from rctmon.config import Config, PrometheusConfig
from rctmon.exporters import http as endpoint_http
from support import require_binary


@pytest.fixture(scope="module")
def pem(tmp_path_factory) -> dict[str, str]:
    """Return PEM files made with the openssl CLI: a CA, a certificate it signed with its key, odd ones."""
    openssl = require_binary("openssl")
    d = tmp_path_factory.mktemp("pem")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=d, check=True, capture_output=True, timeout=30)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=rctmon test CA")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2")
    run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-out", "other.key")
    run("pkcs8", "-topk8", "-in", "server.key", "-out", "encrypted.key", "-passout", "pass:secret")
    (d / "garbage.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    (d / "combined.pem").write_bytes((d / "server.crt").read_bytes() + (d / "server.key").read_bytes())
    (d / "empty.pem").write_bytes(b"")
    names = ("ca.crt", "server.crt", "server.key", "other.key", "encrypted.key", "garbage.pem", "combined.pem",
             "empty.pem")
    return {name: str(d / name) for name in names}


def fill(text: str, pem: dict[str, str]) -> str:
    """Return `text` with each {file name} replaced by the path of that PEM file."""
    for name, path in pem.items():
        text = text.replace("{" + name + "}", path)
    return text


def prometheus_tls(cert: str, key: str) -> Config:
    config = Config()
    config.prometheus.tls_cert_file, config.prometheus.tls_key_file = cert, key
    return config


def test_the_default_configuration_can_run_here():
    assert pre.preflight(Config(), environ={}) == []


def test_systemd_python_is_never_required(monkeypatch):
    assert all(not name.startswith("systemd") for needs in checks.NEEDS.values() for name, _ in needs.modules)
    monkeypatch.setitem(sys.modules, "systemd", None)  # as if systemd-python were not installed
    config = Config()
    config.influxdb.enable = config.mqtt.enable = True
    config.influxdb.spool_path = "/tmp/rctmon-preflight-test/spool.sqlite"
    assert pre.preflight(config, environ={}) == []


# --- modules --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("section, distribution", [("mqtt", "paho-mqtt"), ("influxdb", "influxdb-client")])
def test_an_enabled_exporter_whose_module_cannot_be_imported_is_named(monkeypatch, tmp_path, section, distribution):
    """Regression: enabling an exporter whose module is missing passed check-config; the child crash-looped."""
    module = checks.NEEDS[section].modules[0][0]
    monkeypatch.setitem(sys.modules, module, None)  # what an import of a package that is not installed meets
    config = Config()
    getattr(config, section).enable = True
    config.influxdb.spool_path = str(tmp_path / "spool.sqlite")
    problems = pre.preflight(config, environ={})
    assert len(problems) == 1
    assert problems[0].startswith(f"{section}.enable: cannot import {module} (ModuleNotFoundError: ")
    assert problems[0].endswith(f"); install {distribution}")


def probe_needs(monkeypatch, tmp_path, modules: dict[str, str]) -> None:
    """Make a part that needs the given modules, written into tmp_path as {name: source}."""
    for name, source in modules.items():
        (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(checks.NEEDS, "probe", checks.Needs(lambda c: True, "probe.enable",
                                                            modules=tuple((name, "probe") for name in modules)))


def test_imports_are_real_and_tried_outside_the_caller(monkeypatch, tmp_path):
    """An installed package whose own dependency is missing fails as it would in the child; the caller stays light."""
    probe_needs(monkeypatch, tmp_path, {"rctmon_probe_fine": "VALUE = 1\n",
                                        "rctmon_probe_broken": "import rctmon_probe_missing_dependency\n"})
    assert pre.preflight(Config(), environ={}) == [
        "probe.enable: cannot import rctmon_probe_broken (ModuleNotFoundError: No module named "
        "'rctmon_probe_missing_dependency'); install probe"]
    assert "rctmon_probe_fine" not in sys.modules


def test_the_caller_loads_nothing_for_the_checks():
    """The supervisor stays small: ssl, sqlite3 and the exporters' libraries are loaded in the fork only."""
    probe = ("import sys; from rctmon.config import Config; from rctmon.preflight import preflight; "
             "c = Config(); c.influxdb.enable = c.mqtt.enable = True; c.influxdb.spool_path = sys.argv[1]; "
             "assert preflight(c) == []; "
             "print(sorted(m for m in ('ssl', 'sqlite3', 'paho', 'influxdb_client', 'prometheus_client', "
             "'rctmon.preflight_checks') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe, "/tmp/rctmon-preflight-test/spool.sqlite"],
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, "[]\n", "")


@pytest.mark.timeout(20)
def test_a_check_that_hangs_is_given_up_naming_its_part_and_its_process_killed(monkeypatch, tmp_path):
    probe_needs(monkeypatch, tmp_path, {"rctmon_probe_hangs": "import time\ntime.sleep(60)\n"})
    before = children()
    started = time.monotonic()
    assert pre.preflight(Config(), environ={}, timeout=1.0) == [
        "probe.enable: checking what it needs did not finish within 1 s (an import or a file system hangs)"]
    assert time.monotonic() - started < 10
    assert children() <= before  # killed and reaped: no process, no zombie left behind


def test_an_import_that_kills_the_process_is_reported(monkeypatch, tmp_path):
    """A broken binary extension can crash the interpreter on import: the caller survives and says so."""
    probe_needs(monkeypatch, tmp_path, {"rctmon_probe_crashes": "import os, signal\nos.kill(os.getpid(), "
                                                                "signal.SIGKILL)\n"})
    assert pre.preflight(Config(), environ={}) == [
        "probe.enable: checking what it needs crashed the checking process (signal 9); a broken installation?"]


def children() -> set[int]:
    """Return the pids of this process's children (zombies included)."""
    with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as f:
        return {int(pid) for pid in f.read().split()}


# --- TLS ------------------------------------------------------------------------------------------------------------

def test_a_certificate_with_its_key_passes(pem):
    assert pre.preflight(prometheus_tls(pem["server.crt"], pem["server.key"]), environ={}) == []


@pytest.mark.parametrize("cert, key, problem", [
    ("garbage.pem", "server.key", "prometheus.tls_cert_file: {garbage.pem} holds no PEM certificate ssl can load"),
    ("empty.pem", "server.key", "prometheus.tls_cert_file: {empty.pem} holds no PEM certificate ssl can load"),
    ("server.key", "server.key", "prometheus.tls_cert_file: {server.key} holds no PEM certificate ssl can load"),
    ("server.crt", "garbage.pem", "prometheus.tls_key_file: {garbage.pem} holds no PEM private key ssl can load"),
    ("server.crt", "ca.crt", "prometheus.tls_key_file: {ca.crt} holds no PEM private key ssl can load"),
    ("server.crt", "other.key", "prometheus.tls_key_file: the private key in {other.key} does not belong to the "
                                "certificate in {server.crt}"),
    ("server.crt", "encrypted.key", "prometheus.tls_key_file: the private key in {encrypted.key} is encrypted and "
                                    "rctmon cannot ask for its passphrase"),
    ("server.crt", "/nonexistent/key.pem", "prometheus.tls_key_file: cannot read /nonexistent/key.pem: No such file"),
    ("/dev/zero", "server.key", "prometheus.tls_cert_file: /dev/zero is not a regular file"),
])
def test_a_bad_certificate_or_key_is_named(pem, cert, key, problem):
    """Regression: a garbage PEM file passed check-config and crash-looped the prometheus child."""
    problems = pre.preflight(prometheus_tls(pem.get(cert, cert), pem.get(key, key)), environ={})
    assert len(problems) == 1 and problems[0].startswith(fill(problem, pem)), problems


def test_a_huge_certificate_file_is_refused_unread(tmp_path):
    big = tmp_path / "big.pem"
    with open(big, "wb") as f:
        f.truncate(checks.MAX_PEM_BYTES + 1)
    problems = pre.preflight(prometheus_tls(str(big), str(big)), environ={})
    assert problems == [f"prometheus.tls_cert_file: {big} is larger than 1024 kB; not a PEM file",
                        f"prometheus.tls_key_file: {big} is larger than 1024 kB; not a PEM file"]


@pytest.mark.parametrize("cert, key", [("server.crt", "server.key"), ("garbage.pem", "server.key"),
                                       ("server.crt", "other.key"), ("server.crt", "garbage.pem"),
                                       ("ca.crt", "server.key"), ("server.key", "server.key")])
def test_the_verdict_agrees_with_the_endpoint_loading_them(pem, cert, key):
    """The preflight loads the files as rctmon/exporters/http.py does: it passes exactly what the endpoint takes."""
    passes = pre.preflight(prometheus_tls(pem[cert], pem[key]), environ={}) == []
    try:
        endpoint_http.tls_context(PrometheusConfig(tls_cert_file=pem[cert], tls_key_file=pem[key]))
        loads = True
    except OSError:
        loads = False
    assert passes == loads


def mqtt_tls(ca: str = "", cert: str = "", key: str = "") -> Config:
    config = Config()
    config.mqtt.enable = config.mqtt.tls.enable = True
    config.mqtt.tls.ca_file, config.mqtt.tls.cert_file, config.mqtt.tls.key_file = ca, cert, key
    return config


@pytest.mark.parametrize("files, problems", [
    (("ca.crt", "server.crt", "server.key"), []),
    (("ca.crt", "combined.pem", ""), []),
    (("", "", ""), []),  # the system's CA store
    (("garbage.pem", "", ""), ["mqtt.tls.ca_file: {garbage.pem} holds no PEM certificate ssl can load"]),
    (("server.key", "server.crt", "other.key"), [
        "mqtt.tls.ca_file: {server.key} holds no PEM certificate ssl can load",
        "mqtt.tls.key_file: the private key in {other.key} does not belong to the certificate in {server.crt}"]),
    (("ca.crt", "server.crt", ""), ["mqtt.tls.cert_file: {server.crt} holds no PEM private key ssl can load"]),
])
def test_mqtt_tls_files_are_checked_when_tls_is_enabled(pem, files, problems):
    found = pre.preflight(mqtt_tls(*(pem.get(name, name) for name in files)), environ={})
    assert len(found) == len(problems)
    assert all(line.startswith(fill(problem, pem)) for line, problem in zip(found, problems)), found


@pytest.mark.parametrize("files", [("ca.crt", "server.crt", "server.key"), ("garbage.pem", "", ""),
                                   ("ca.crt", "server.crt", "other.key"), ("ca.crt", "server.crt", "")])
def test_the_mqtt_verdict_agrees_with_paho_loading_them(pem, files):
    ca, cert, key = (pem.get(name, name) for name in files)
    passes = pre.preflight(mqtt_tls(ca, cert, key), environ={}) == []
    try:
        paho.Client(paho.CallbackAPIVersion.VERSION2).tls_set(ca_certs=ca or None, certfile=cert or None,
                                                             keyfile=key or None)
        loads = True
    except (OSError, ValueError):
        loads = False
    assert passes == loads


def test_mqtt_tls_files_are_not_checked_while_tls_or_mqtt_is_off(pem):
    config = mqtt_tls(pem["garbage.pem"])
    config.mqtt.tls.enable = False
    assert pre.preflight(config, environ={}) == []
    config.mqtt.tls.enable, config.mqtt.enable = True, False
    assert pre.preflight(config, environ={}) == []


# --- the spool ------------------------------------------------------------------------------------------------------

def influx(spool_path: str = "") -> Config:
    config = Config()
    config.influxdb.enable = True
    config.influxdb.spool_path = spool_path
    return config


def test_a_spool_that_can_be_created_passes_and_nothing_is_left_behind(tmp_path):
    assert pre.preflight(influx(), environ={"STATE_DIRECTORY": str(tmp_path / "state")}) == []
    assert pre.preflight(influx(str(tmp_path / "a" / "b" / "spool.sqlite")), environ={}) == []
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "spool.sqlite").write_bytes(b"")
    assert pre.preflight(influx(str(tmp_path / "spool.sqlite")), environ={}) == []


def test_a_spool_under_a_regular_file_is_refused(tmp_path):
    """Regression: a spool directory that cannot be created passed check-config; the influxdb child crash-looped."""
    (tmp_path / "file").write_text("x")
    spool = tmp_path / "file" / "x" / "spool.sqlite"
    assert pre.preflight(influx(str(spool)), environ={}) == [
        f"influxdb.spool_path: cannot create {spool}: {tmp_path / 'file'} is not a directory"]
    assert pre.preflight(influx(), environ={"STATE_DIRECTORY": str(tmp_path / "file")}) == [
        f"influxdb.spool_path: cannot create {tmp_path / 'file' / 'influxdb-spool.sqlite'}: {tmp_path / 'file'} "
        f"is not a directory"]


def test_a_spool_in_a_directory_nobody_may_write_is_refused():
    """sysfs takes no new files, not even from root: what a read-only mount or a wrong owner looks like."""
    problems = pre.preflight(influx("/sys/rctmon-spool.sqlite"), environ={})
    assert len(problems) == 1 and problems[0].startswith(
        "influxdb.spool_path: cannot write the spool /sys/rctmon-spool.sqlite: /sys: "), problems


def test_a_spool_that_is_a_directory_is_refused(tmp_path):
    assert pre.preflight(influx(str(tmp_path)), environ={}) == [
        f"influxdb.spool_path: {tmp_path} exists and is not a regular file"]


def test_the_spool_is_not_checked_while_influxdb_is_off(tmp_path):
    config = influx("/sys/rctmon-spool.sqlite")
    config.influxdb.enable = False
    assert pre.preflight(config, environ={}) == []


# --- secret files ---------------------------------------------------------------------------------------------------

def test_secret_files_of_enabled_parts_are_read(tmp_path):
    config = influx(str(tmp_path / "spool.sqlite"))
    config.influxdb.token_file = str(tmp_path / "missing")
    config.mqtt.password_file = str(tmp_path / "missing")  # mqtt is off: not its business
    assert pre.preflight(config, environ={}) == [
        f"influxdb.token_file: cannot read {tmp_path / 'missing'}: No such file or directory"]
    assert pre.preflight(config, environ={"RCTMON_INFLUXDB_TOKEN": "t"}) == []  # the environment wins anyway
