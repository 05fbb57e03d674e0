"""Packaging: the README's `pip install .` into a fresh venv gives a working `rctmon`, MQTT included (issue 10).

A fresh venv and a real `pip install` of the checkout, dependencies resolved as a user's would be (pip's cache makes
it ~15 s here; CI allows 5 min): the proof that paho-mqtt is a plain dependency is a daemon from that venv, with
`mqtt:` enabled, delivering Home Assistant discovery to a real mosquitto. It runs outside the checkout (cwd and
PYTHONPATH), so nothing of the checkout's own rctmon can stand in for the installed one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from mosquitto import Mosquitto, Recorder
from support import REPO, free_port, stop_process, wait_for

from rctmon import __version__


def _installed_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


def _start(argv: list[str], cwd: Path, log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, cwd=cwd, env=_installed_env(), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_pip_install_into_a_fresh_venv_gives_a_daemon_whose_mqtt_reaches_home_assistant(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), REPO],
                   check=True, timeout=300)
    wheels = list(dist.glob("rctmon-*.whl"))
    assert len(wheels) == 1
    with zipfile.ZipFile(wheels[0]) as wheel:
        top = {name.split("/")[0] for name in wheel.namelist()}
    assert top == {"rctmon", f"rctmon-{__version__}.dist-info"}, top  # no tests or benchmarks shipped

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = str(env_dir / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", REPO], check=True,
                   timeout=300, cwd=tmp_path, env=_installed_env(), stdin=subprocess.DEVNULL)
    rctmon = str(env_dir / "bin" / "rctmon")
    version = subprocess.run([rctmon, "--version"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == f"rctmon {__version__}"
    origin = subprocess.run([python, "-c", "import rctmon; print(rctmon.__file__)"], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path, env=_installed_env())
    assert origin.stdout.startswith(str(env_dir)), origin.stdout  # the installed copy, not the checkout
    example = os.path.join(REPO, "config.example.yml")
    check = subprocess.run([rctmon, "-c", example, "check-config"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    assert "bind_port: 9831" in check.stdout

    broker = Mosquitto(str(tmp_path)).start()
    recorder: Recorder | None = None
    procs: list[subprocess.Popen[bytes]] = []
    sim_port = free_port()
    config = tmp_path / "rctmon.yml"
    config.write_text(f"""\
device: {{host: 127.0.0.1, port: {sim_port}, intervals: {{fast: 1, medium: 2, slow: 3, static: 60}}}}
prometheus: {{bind_address: 127.0.0.1, bind_port: {free_port()}}}
mqtt: {{enable: true, host: 127.0.0.1, port: {broker.port}, client_id: rctmon-packaging-{os.getpid()}}}
""", encoding="utf-8")
    daemon_log = tmp_path / "daemon.log"
    try:
        recorder = Recorder(broker.port, ["homeassistant/#"])
        procs.append(_start([rctmon, "simulator", "--host", "127.0.0.1", "--port", str(sim_port)], tmp_path,
                            tmp_path / "simulator.log"))
        procs.append(_start([rctmon, "-c", str(config), "daemon"], tmp_path, daemon_log))

        def discovery() -> list[str]:
            assert procs[-1].poll() is None, daemon_log.read_text(errors="replace")[-3000:]
            return recorder.topics(lambda t: t.startswith("homeassistant/sensor/") and t.endswith("/config"))

        topics = wait_for(discovery, 60, message="Home Assistant discovery from the installed daemon")
        payload = json.loads(recorder.last(topics[0]) or "")
        assert payload["state_topic"].startswith("rctmon/") and payload["device"]["identifiers"]
    finally:
        for proc in reversed(procs):
            stop_process(proc)
        if recorder is not None:
            recorder.close()
        broker.stop()
    log = daemon_log.read_text(errors="replace")
    assert "Traceback" not in log and "ModuleNotFoundError" not in log, log[-3000:]
