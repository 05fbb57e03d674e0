"""Several daemons on one host: the instance, its state directory and derived defaults, the move of an earlier
spool, and the clashes preflight refuses (a port or a spool held by another process), with real processes."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rctmon import config as cfg
from rctmon import holders, statedir
from rctmon import preflight_checks as checks
from rctmon.exporters.spool import FILE_NAME, Spool, spool_path
from rctmon.preflight import preflight
from support import REPO, free_port, pid_gone, rctmon_command, wait_for

_FORK = multiprocessing.get_context("fork")


# --- the instance and where its state lives -------------------------------------------------------------------------

@pytest.mark.parametrize("path, instance", [
    ("/etc/rctmon.yml", "rctmon"), ("/etc/rctmon/garage.yml", "garage"), ("roof.yaml", "roof"),
    ("/etc/rctmon/carport", "carport"), ("/etc/rctmon/garage.prod.yml", "garage.prod"),
    ("/etc/rctmon/Dach Süd.yml", "Dach_S_d"), ("/etc/rctmon/..yml", "yml"), ("/etc/rctmon/.yml", "yml"),
    ("/x/.hidden.yml", "hidden"),
    ("/etc/rctmon/" + "a" * 200 + ".yml", "a" * 64), (None, "rctmon"), ("", "rctmon"),
])
def test_the_instance_is_the_file_name_made_safe(path, instance):
    assert statedir.instance_name(path) == instance


@pytest.mark.parametrize("environ, instance, directory", [
    ({"STATE_DIRECTORY": "/var/lib/rctmon"}, "rctmon", "/var/lib/rctmon"),  # the single unit, as before
    ({"STATE_DIRECTORY": "/var/lib/rctmon/garage"}, "garage", "/var/lib/rctmon/garage"),  # the template unit
    ({"STATE_DIRECTORY": "/var/lib/rctmon"}, "garage", "/var/lib/rctmon/garage"),  # two copies of the single unit
    ({"STATE_DIRECTORY": "/var/lib/rctmon/garage:/var/lib/other"}, "garage", "/var/lib/rctmon/garage"),
    ({"STATE_DIRECTORY": "/srv/solar"}, "rctmon", "/srv/solar"),  # /etc/rctmon.yml in a unit of one's own
    ({"HOME": "/home/pi"}, "rctmon", "/home/pi/.local/state/rctmon"),
    ({"HOME": "/home/pi"}, "roof", "/home/pi/.local/state/rctmon/roof"),
])
def test_each_instance_has_a_directory_of_its_own(environ, instance, directory):
    assert statedir.state_dir(instance, environ) == Path(directory)


def load(tmp_path: Path, name: str, text: str = "", environ: dict[str, str] | None = None) -> cfg.Config:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return cfg.load(str(path), environ={"STATE_DIRECTORY": str(tmp_path / "state")} if environ is None else environ)


def test_a_file_of_another_name_gets_its_own_client_id_and_spool(tmp_path):
    config = load(tmp_path, "garage.yml")
    assert config.instance == "garage"
    assert config.mqtt.client_id == "rctmon-garage"
    assert config.influxdb.spool_path == str(tmp_path / "state" / "garage" / FILE_NAME)
    assert "instance" not in cfg.dump(config)  # not a key: check-config's output stays a valid file


def test_the_default_instance_keeps_every_default(tmp_path):
    """A single daemon from /etc/rctmon.yml (or any rctmon.yml) is what it was before instances existed."""
    assert load(tmp_path, "rctmon.yml") == cfg.Config()
    under_systemd = load(tmp_path, "garage.yml", environ={"STATE_DIRECTORY": str(tmp_path / "garage")})
    assert under_systemd.influxdb.spool_path == ""  # the template unit's directory is the instance's own
    assert under_systemd.mqtt.client_id == "rctmon-garage"


def test_the_example_copied_under_another_name_is_told_apart(tmp_path):
    """The example writes every key at its default: those are still derived, so a copy per inverter just works."""
    example = (Path(REPO) / "config.example.yml").read_text(encoding="utf-8")
    garage, roof = load(tmp_path, "garage.yml", example), load(tmp_path, "roof.yml", example)
    assert (garage.mqtt.client_id, roof.mqtt.client_id) == ("rctmon-garage", "rctmon-roof")
    assert garage.influxdb.spool_path != roof.influxdb.spool_path


def test_values_the_file_sets_are_taken_as_given(tmp_path):
    config = load(tmp_path, "garage.yml", "mqtt:\n  client_id: my-id\ninfluxdb:\n  spool_path: /srv/spool.sqlite\n")
    assert (config.mqtt.client_id, config.influxdb.spool_path) == ("my-id", "/srv/spool.sqlite")


def test_the_spool_module_and_the_state_directory_agree_on_the_file_name():
    assert FILE_NAME == statedir.SPOOL_FILE


# --- the spool of an earlier rctmon ---------------------------------------------------------------------------------

def lines(count: int) -> list[bytes]:
    return [f"grid,inverter=x power={i}.0 {1_700_000_000_000_000_000 + i}".encode() for i in range(count)]


def _write_then_die(path: str, ready) -> None:
    spool = Spool(path, 10_000)
    spool.append(lines(300))
    ready.set()
    signal.pause()


def earlier_spool_killed_while_open(path: Path) -> None:
    """Leave a spool at `path` as a kill -9 does: its points committed to the WAL, not yet in the database file."""
    ready = _FORK.Event()
    child = _FORK.Process(target=_write_then_die, args=(str(path), ready))
    child.start()
    try:
        assert ready.wait(20)
    finally:
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
    assert Path(f"{path}-wal").stat().st_size > 0


@pytest.mark.parametrize("environ_of", [lambda d: {"STATE_DIRECTORY": str(d)},
                                        lambda d: {"HOME": str(d.parent.parent.parent)}],
                         ids=["STATE_DIRECTORY", "home"])
def test_an_upgraded_daemon_finds_the_points_of_its_earlier_spool(tmp_path, environ_of):
    root = tmp_path / "home" / ".local" / "state" / "rctmon"
    root.mkdir(parents=True)
    environ = environ_of(root)
    earlier_spool_killed_while_open(root / FILE_NAME)
    config = load(tmp_path, "garage.yml", "influxdb:\n  enable: true\n", environ=environ)
    assert spool_path(config.influxdb, environ, adopt=False) == root / "garage" / FILE_NAME
    assert (root / FILE_NAME).exists()  # checks change nothing
    path = spool_path(config.influxdb, environ)
    assert path == root / "garage" / FILE_NAME and not (root / FILE_NAME).exists()
    spool = Spool(path, 10_000)
    try:
        assert spool.count == 300 and list(spool.iter_lines()) == lines(300)
    finally:
        spool.close()
    assert statedir.adopt_earlier(path, environ) is None  # once only: the instance's own spool exists now
    # The root's lock file no longer says a spool lives there: the default instance, started there later, starts
    # a new one without taking the old one for deleted.
    assert (root / f"{FILE_NAME}.lock").read_bytes() == b""


def test_a_move_cut_short_is_completed_by_the_next_one(tmp_path):
    root = tmp_path / "state"
    root.mkdir()
    earlier_spool_killed_while_open(root / FILE_NAME)
    target = root / "garage" / FILE_NAME
    target.parent.mkdir()
    os.rename(f"{root / FILE_NAME}-wal", f"{target}-wal")  # the companions moved, then the process died
    assert statedir.adopt_earlier(target, {"STATE_DIRECTORY": str(root)}) == root / FILE_NAME
    spool = Spool(target, 10_000)
    try:
        assert spool.count == 300
    finally:
        spool.close()


def _hold_open(path: str, ready, done) -> None:
    spool = Spool(path, 10_000)
    ready.set()
    done.wait(30)
    spool.close()


def test_a_spool_in_use_is_not_pulled_away(tmp_path):
    """The single daemon of /etc/rctmon.yml runs with the root's spool: a second instance leaves it alone."""
    root = tmp_path / "state"
    ready, done = _FORK.Event(), _FORK.Event()
    holder = _FORK.Process(target=_hold_open, args=(str(root / FILE_NAME), ready, done))
    holder.start()
    try:
        assert ready.wait(20)
        assert statedir.adopt_earlier(root / "garage" / FILE_NAME, {"STATE_DIRECTORY": str(root)}) is None
        assert (root / FILE_NAME).exists() and not (root / "garage" / FILE_NAME).exists()
    finally:
        done.set()
        holder.join(10)


def test_only_a_file_in_an_instance_directory_below_the_root_has_an_earlier_place(tmp_path):
    env = {"STATE_DIRECTORY": str(tmp_path)}
    assert statedir.earlier_path(tmp_path / FILE_NAME, env) is None
    assert statedir.earlier_path(tmp_path / "a" / "b" / FILE_NAME, env) is None
    assert statedir.earlier_path(Path("/srv/spool.sqlite"), env) is None
    assert statedir.earlier_path(tmp_path / "a" / FILE_NAME, env) == tmp_path / FILE_NAME


# --- clashes ----------------------------------------------------------------------------------------------------------

#: The holders below leave their parent at once (fork, parent exits): a process that is no descendant of the test,
#: which runs preflight itself and whose own descendants never count as another process.
DETACH = "import os, select, sys\nif os.fork():\n    os._exit(0)\n"
HOLD_PORT = DETACH + """
import socket
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", int(sys.argv[1])))
sock.listen()
print(os.getpid(), flush=True)
select.select([sys.stdin], [], [], float(sys.argv[2]))  # hold until stdin closes or the time is up
"""
HOLD_LOCK = DETACH + """
import fcntl
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print(os.getpid(), flush=True)
select.select([sys.stdin], [], [], float(sys.argv[2]))
"""


class Holder:
    """A process holding a port or a lock for `seconds` (or until stopped), not a descendant of this one."""

    def __init__(self, script: str, what: str, seconds: float = 60.0) -> None:
        self._starter = subprocess.Popen([sys.executable, "-c", script, what, str(seconds)], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True)
        assert self._starter.stdout is not None
        line = self._starter.stdout.readline()
        self._starter.wait(10)
        assert line.strip().isdigit(), f"the holder did not start: {line!r}"
        self.pid = int(line)
        self.description = f"pid {self.pid} ({sys.executable} -c "

    def gone(self) -> bool:
        return pid_gone(self.pid)

    def stop(self) -> None:
        if not self.gone():
            os.kill(self.pid, signal.SIGKILL)
        wait_for(self.gone, 10, message=f"holder {self.pid} to end")
        for stream in (self._starter.stdin, self._starter.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def no_grace(monkeypatch):
    monkeypatch.setattr(checks, "CLASH_GRACE", 0.0)


def daemon_config(tmp_path: Path, name: str, metrics_port: int, spool: str = "") -> str:
    path = tmp_path / name
    path.write_text(f"device:\n  port: {free_port()}\nprometheus:\n  bind_port: {metrics_port}\n"
                    f"influxdb:\n  enable: true\n  url: http://127.0.0.1:{free_port()}\n"
                    + (f"  spool_path: {spool}\n" if spool else ""), encoding="utf-8")
    return str(path)


def start_refused(config_path: str, state: Path) -> subprocess.CompletedProcess[str]:
    """Run `rctmon daemon` that is expected to refuse to start (it is stopped by the timeout if it does not)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RCTMON_")}
    env["STATE_DIRECTORY"] = str(state)
    return subprocess.run(rctmon_command("-c", config_path, "daemon"), capture_output=True, text=True, timeout=40,
                          env=env, cwd=REPO)


@pytest.mark.timeout(60)
def test_a_metrics_port_held_by_another_process_is_refused_at_start_naming_it(tmp_path):
    port = free_port()
    holder = Holder(HOLD_PORT, str(port))
    try:
        result = start_refused(daemon_config(tmp_path, "roof.yml", port), tmp_path / "state")
    finally:
        holder.stop()
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"rctmon: {tmp_path / 'roof.yml'}: prometheus.bind_port: 127.0.0.1:{port} is in "
                                    f"use by {holder.description}"), result.stderr


@pytest.mark.timeout(60)
def test_an_explicit_spool_held_by_another_process_is_refused_at_start_naming_it(tmp_path):
    spool = tmp_path / "shared" / "spool.sqlite"
    spool.parent.mkdir()
    holder = Holder(HOLD_LOCK, f"{spool}.lock")
    try:
        result = start_refused(daemon_config(tmp_path, "roof.yml", free_port(), str(spool)), tmp_path / "state")
    finally:
        holder.stop()
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"rctmon: {tmp_path / 'roof.yml'}: influxdb.spool_path: {spool} is in use by "
                                    f"{holder.description}"), result.stderr


def test_the_derived_spool_of_a_second_file_of_the_same_name_hints_at_the_name(tmp_path, no_grace):
    config = load(tmp_path, "garage.yml", "influxdb:\n  enable: true\n")
    spool = Path(config.influxdb.spool_path)
    spool.parent.mkdir(parents=True)
    holder = Holder(HOLD_LOCK, f"{spool}.lock")
    try:
        problems = preflight(config, environ={"STATE_DIRECTORY": str(tmp_path / "state")}, clashes=True)
    finally:
        holder.stop()
    assert len(problems) == 1
    assert problems[0].startswith(f"influxdb.spool_path: {spool} is in use by pid {holder.pid} (")
    assert problems[0].endswith("(the spool of instance 'garage', named after the configuration file: run each "
                                "inverter's daemon from a file of another name, or set influxdb.spool_path)")


def _hold_lock(path: str, ready, done) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    ready.set()
    done.wait(30)


@pytest.mark.timeout(30)
def test_on_reload_the_callers_own_port_and_its_childs_spool_are_no_clash(tmp_path):
    """SIGHUP: the supervisor holds the port, its influxdb child the spool; both are the caller's own."""
    config = cfg.Config()
    config.prometheus.bind_port = free_port()
    config.influxdb.enable = True
    config.influxdb.spool_path = str(tmp_path / "spool.sqlite")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", config.prometheus.bind_port))
    sock.listen()
    ready, done = _FORK.Event(), _FORK.Event()
    child = _FORK.Process(target=_hold_lock, args=(f"{config.influxdb.spool_path}.lock", ready, done))
    child.start()
    try:
        assert ready.wait(10)
        assert holders.lock_holders(f"{config.influxdb.spool_path}.lock") == {child.pid}
        assert preflight(config, environ={}, clashes=True) == []  # at once: own holders get no grace period
    finally:
        done.set()
        child.join(10)
        sock.close()


def test_check_config_leaves_clashes_alone(tmp_path):
    """The daemon of the very file check-config checks may be running: that is no clash."""
    port = free_port()
    holder = Holder(HOLD_PORT, str(port))
    try:
        config = cfg.Config()
        config.prometheus.bind_port = port
        assert preflight(config, environ={}) == []
    finally:
        holder.stop()


def test_an_address_that_is_not_this_hosts_is_named(no_grace):
    config = cfg.Config()
    config.prometheus.bind_address, config.prometheus.bind_port = "192.0.2.1", free_port()
    assert preflight(config, environ={}, clashes=True) == [
        f"prometheus.bind_port: cannot listen on 192.0.2.1:{config.prometheus.bind_port}: Cannot assign requested "
        "address"]


def test_a_holder_that_lets_go_within_the_grace_period_is_no_clash(monkeypatch):
    """A predecessor still stopping (a restart) must not end in exit status 2."""
    monkeypatch.setattr(checks, "CLASH_GRACE", 20.0)
    port = free_port()
    holder = Holder(HOLD_PORT, str(port), seconds=1.0)
    config = cfg.Config()
    config.prometheus.bind_port = port
    try:
        assert preflight(config, environ={}, clashes=True) == []
        assert holder.gone()  # it did hold the port, and let go
    finally:
        holder.stop()


# --- reading /proc --------------------------------------------------------------------------------------------------

def test_listeners_and_their_holders_are_found(tmp_path):
    sock = socket.socket(socket.AF_INET6)
    sock.bind(("::1", 0))
    sock.listen()
    try:
        port = sock.getsockname()[1]
        found = holders.listeners(port)
        assert [(str(s.address), s.port, s.uid) for s in found] == [("::1", port, os.getuid())]
        assert holders.socket_holders(s.inode for s in found) == {os.getpid()}
    finally:
        sock.close()


def test_a_holder_is_described_by_title_and_the_topmost_of_a_family_is_named():
    text = holders.describe({os.getpid()})
    assert text.startswith(f"pid {os.getpid()} (") and "python" in text.split("(", 1)[1]
    child = _FORK.Process(target=signal.pause)
    child.start()
    try:
        assert child.pid is not None
        assert holders.describe({os.getpid(), child.pid}).startswith(f"pid {os.getpid()} (")
        assert child.pid in holders.family(os.getpid())
    finally:
        child.kill()
        child.join(10)
