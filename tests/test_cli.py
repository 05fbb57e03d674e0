import os
import subprocess
import sys
import tempfile
import time

import pytest
import yaml
from support import REPO, rctmon_command

from rctmon import __version__


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(rctmon_command(*args), capture_output=True, text=True, timeout=timeout)


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"rctmon {__version__}"


def test_check_config_prints_effective_config_with_secrets_masked(tmp_path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("device:\n  host: 192.0.2.7\ninfluxdb:\n  token: very-secret\n")
    path.chmod(0o600)
    result = run("-c", str(path), "check-config")
    assert result.returncode == 0, result.stderr
    assert "host: 192.0.2.7" in result.stdout
    assert "very-secret" not in result.stdout + result.stderr
    assert "token: '********'" in result.stdout


def test_check_config_fails_naming_the_key(tmp_path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("prometheus:\n  bind_prot: 9831\n")
    result = run("-c", str(path), "check-config")
    assert result.returncode == 2
    assert "prometheus.bind_prot: unknown key (did you mean prometheus.bind_port?)" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file_is_a_clear_error(tmp_path) -> None:
    result = run("-c", str(tmp_path / "nope.yml"), "check-config")
    assert result.returncode == 2 and "cannot read configuration file" in result.stderr


def test_invalid_logging_section_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("logging:\n  version: 1\n  handlers:\n    h:\n      class: no.such.Handler\n")
    result = run("-c", str(path), "check-config")
    assert result.returncode == 2 and "logging: invalid configuration" in result.stderr


# --- issue 11 and 10: every failure of loading is one line and status 2, at check-config and daemon start alike --

def run_measured(argv: list[str], timeout: float = 30) -> tuple[int, str, str, int]:
    """Run a command to its end; return (status, stdout, stderr, its peak RSS in kB), killing it at the timeout."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RCTMON_")}
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=REPO)
        try:
            deadline = time.monotonic() + timeout
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # wait4: this child's own rusage
                if pid:
                    break
                assert time.monotonic() < deadline, f"{argv} still running after {timeout} s"
                time.sleep(0.02)
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            if proc.returncode is None:
                proc.kill()
                proc.wait(5)
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read().decode(), err.read().decode(), usage.ru_maxrss


ALIAS_BOMB = "".join(f"{n}: &{n} [" + ", ".join([f"*{p}" if p else "lol"] * 9) + "]\n"
                     for p, n in zip([""] + list("abcdefgh"), "abcdefghi")) + "device: *i\n"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("command", ["check-config", "daemon"])
def test_alias_bomb_is_one_line_and_costs_no_memory(tmp_path, command) -> None:
    """Regression: an alias bomb made check-config and the daemon grow by 35 MB/s until the OOM killer came."""
    good, bomb = tmp_path / "good.yml", tmp_path / "bomb.yml"
    good.write_text("device:\n  host: 192.0.2.1\n")
    bomb.write_text(ALIAS_BOMB)
    status, _, _, baseline_kb = run_measured(rctmon_command("-c", str(good), "check-config"))
    assert status == 0
    status, _, stderr, bomb_kb = run_measured(rctmon_command("-c", str(bomb), command))
    assert status == 2 and stderr == (f"rctmon: {bomb}: line 1, column 4: anchors and aliases (&name, *name) are not "
                                      f"allowed in rctmon's configuration; write each value out\n")
    assert bomb_kb < baseline_kb + 20_000, f"peak RSS {bomb_kb} kB against {baseline_kb} kB for a valid file"


def _garbage_pem(d) -> str:
    (d / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    (d / "key.pem").write_text("garbage\n")
    return f"prometheus:\n  tls_cert_file: {d / 'cert.pem'}\n  tls_key_file: {d / 'key.pem'}\n"


#: name -> (write the file into the directory and return its content, the one line expected after "rctmon: ").
ONE_LINERS = {
    "2 MB file": (lambda d: "# padding\n" * 200_000, "{path}: larger than 1024 kB; this is not a configuration file"),
    "non-UTF-8": (lambda d: "device:\n  host: m\xfcller\n".encode("latin-1"),
                  "{path}: line 2: not UTF-8 text (byte 0xfc); save the file as UTF-8"),
    "10,000-deep": (lambda d: "device: " + "[" * 10_000 + "]" * 10_000 + "\n",
                    # libyaml has a limit of its own (1,000) that its scanner meets first; PyYAML's parser meets ours
                    "{path}: line 1, column 1008: not valid YAML: while increasing flow level; exceeded maximum "
                    "nesting depth" if yaml.__with_libyaml__ else "{path}: line 1, column 41: nested more than 32 "
                                                                  "levels deep"),
    "NUL in device.host": (lambda d: 'device:\n  host: "192.0.2.1\\0"\n',
                           "{path}: device.host: must not contain control characters (U+0000 at character 10)"),
    "nan interval": (lambda d: "device:\n  intervals:\n    fast: .nan\n",
                     "{path}: device.intervals.fast: must be a finite number of seconds >= 0.01 and <= 604800, "
                     "got nan"),
    "garbage PEM": (_garbage_pem, "{path}: prometheus.tls_cert_file: {dir}/cert.pem holds no PEM certificate ssl "
                                  "can load (not valid PEM)"),
    "unwritable spool": (lambda d: (d / "file").write_text("x") and
                         f"influxdb:\n  enable: true\n  spool_path: {d / 'file' / 'spool' / 'x.sqlite'}\n",
                         "{path}: influxdb.spool_path: cannot create {dir}/file/spool/x.sqlite: {dir}/file is not a "
                         "directory"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["check-config", "daemon"])
@pytest.mark.parametrize("case", sorted(ONE_LINERS))
def test_a_file_rctmon_cannot_use_is_one_line_and_status_2(tmp_path, case, command) -> None:
    """Regression (issue 11): each of these passed, ended in a traceback or crash-looped a child."""
    make, expected = ONE_LINERS[case]
    path = tmp_path / "rctmon.yml"
    content = make(tmp_path)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    status, stdout, stderr, _ = run_measured(rctmon_command("-c", str(path), command))
    assert (status, stdout) == (2, "")
    assert stderr == "rctmon: " + expected.format(path=path, dir=tmp_path) + "\n"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["check-config", "daemon"])
def test_mqtt_enabled_without_paho_is_one_line_and_status_2(tmp_path, command) -> None:
    """Regression (issue 10): MQTT enabled where paho-mqtt cannot be imported passed; the mqtt child crash-looped."""
    path = tmp_path / "rctmon.yml"
    path.write_text("mqtt:\n  enable: true\n")
    blocked = ("import sys; sys.modules['paho'] = None; from rctmon.cli import main; "
               f"sys.exit(main(['-c', {str(path)!r}, {command!r}]))")
    status, stdout, stderr, _ = run_measured([sys.executable, "-c", blocked])
    assert (status, stdout) == (2, "")
    assert stderr.startswith(f"rctmon: {path}: mqtt.enable: cannot import paho.mqtt.client (ModuleNotFoundError: ")
    assert stderr.endswith("); install paho-mqtt\n") and stderr.count("\n") == 1


@pytest.mark.timeout(60)
def test_every_problem_is_listed_one_per_line(tmp_path) -> None:
    path = tmp_path / "rctmon.yml"
    path.write_text("device:\n  hots: x\n  connect_timeout: -1\nhistory:\n  max_gap: soon\n")
    status, _, stderr, _ = run_measured(rctmon_command("-c", str(path), "check-config"))
    assert status == 2
    assert stderr == (f"rctmon: {path}: 3 problems:\n"
                      "  device.hots: unknown key (did you mean device.host?)\n"
                      "  history.max_gap: expected a duration such as 36h, 14d, 90m, 45s or a number of seconds, "
                      "got 'soon'\n"
                      "  device.connect_timeout: must be a finite number of seconds >= 0.01 and <= 600, got -1.0\n")
