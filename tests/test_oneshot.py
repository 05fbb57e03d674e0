"""`rctmon inventory` and `rctmon read`: against the built-in simulator, rctclient's simulator, and no inverter."""

from __future__ import annotations

import importlib.util
import io
import os
import socket
import subprocess
import sys
from pathlib import Path
from collections.abc import Iterator

import pytest
from support import free_port, rctmon_command, stop_process, wait_for

from rctmon.catalog import enabled_series
from rctmon.collector.oneshot import inventory_command, read_command
from rctmon.config import Config
from rctmon.simulator import SimulatorOptions, SimulatorThread


def config_for(port: int, **device: object) -> Config:
    config = Config()
    config.device.host, config.device.port = "127.0.0.1", port
    for key, value in device.items():
        setattr(config.device, key, value)
    return config


def config_file(tmp_path: Path, port: int, extra: str = "") -> str:
    path = tmp_path / "rctmon.yml"
    path.write_text(f"device:\n  host: 127.0.0.1\n  port: {port}\n{extra}")
    return str(path)


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(rctmon_command(*args), capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def full_simulator() -> Iterator[SimulatorThread]:
    with SimulatorThread(SimulatorOptions(generators=2, battery_modules=3, power_switch=True)) as sim:
        yield sim


def test_inventory_reports_everything_attached_and_a_value_for_every_enabled_row(
        full_simulator: SimulatorThread, tmp_path: Path) -> None:
    result = run_cli("-c", config_file(tmp_path, full_simulator.port), "inventory")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    expected = full_simulator.options.inventory()
    assert f"Inverter:       {expected.name}" in out
    assert "Generators:     A, B" in out
    assert "Battery:        3 modules" in out
    assert "Power Switch:   present" in out
    assert "Inventory:      complete" in out
    series = enabled_series(expected)
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()}
    for s in series:
        assert s.object_name in rows, s.object_name
        assert "(no answer)" not in rows[s.object_name]
    assert f"{len(series)} of {len(series)} enabled catalog series answered" in out


def test_inventory_shows_values_in_units_people_read(full_simulator: SimulatorThread) -> None:
    out = io.StringIO()
    assert inventory_command(config_for(full_simulator.port), out=out) == 0
    lines = {line.split()[0]: line for line in out.getvalue().splitlines() if line.split()}
    assert lines["energy.e_ac_total"].endswith(" kWh")
    assert lines["battery.soc"].endswith(" %")
    assert lines["g_sync.u_l_rms[0]"].rstrip().endswith(" V")
    assert "phase=1" in lines["g_sync.u_l_rms[0]"]


def _rctclient_simulator_command(port: int) -> list[str]:
    if importlib.util.find_spec("click") is None:  # rctclient's CLI needs the [cli] extra
        if os.environ.get("CI"):
            pytest.fail("rctclient[cli] is required in CI")
        pytest.skip("rctclient[cli] is not installed")
    return [sys.executable, "-c", "from rctclient.cli import cli; cli()", "simulator", "--host", "127.0.0.1",
            "--port", str(port)]


def _accepts(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


@pytest.mark.timeout(90)
def test_inventory_works_against_rctclients_own_simulator(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(_rctclient_simulator_command(port), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _accepts(port), 20, message="rctclient simulator listening")
        # rctclient's simulator loses all but some of the requests that arrive together: the window must adapt
        result = run_cli("-c", config_file(tmp_path, port), "inventory")
    finally:
        stop_process(proc)
    assert result.returncode == 0, result.stderr
    assert "Inverter:       RCT" in result.stdout
    assert "Inventory:      complete" in result.stdout
    assert "(no answer)" not in result.stdout


def test_inventory_fails_with_one_clear_line_when_nothing_listens(tmp_path: Path) -> None:
    port = free_port()
    result = run_cli("-c", config_file(tmp_path, port), "inventory")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"rctmon: cannot read the inverter at 127.0.0.1:{port}: connection refused"]


def test_inventory_gives_up_in_bounded_time_when_the_inverter_does_not_answer(tmp_path: Path) -> None:
    # a listening socket that never accepts: the kernel completes the connect, nobody ever answers
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)
        port = mute.getsockname()[1]
        result = run_cli("-c", config_file(tmp_path, port, "  request_timeout: 0.1\n"), "inventory", timeout=30)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"rctmon: cannot read the inverter at 127.0.0.1:{port}: "
                                     "connected, but no answer to android_description")


def test_read_prints_the_named_objects(full_simulator: SimulatorThread) -> None:
    out = io.StringIO()
    names = ["android_description", "battery.soc", "display_struct.brightness"]
    code = read_command(config_for(full_simulator.port), names, out=out)
    assert code == 0
    lines = out.getvalue().splitlines()
    assert lines[1].split(None, 1) == ["android_description", full_simulator.options.name]
    assert lines[2].startswith("battery.soc") and lines[2].endswith(" %")
    assert lines[3].startswith("display_struct.brightness")


def test_read_refuses_unknown_names(full_simulator: SimulatorThread, capsys: pytest.CaptureFixture) -> None:
    assert read_command(config_for(full_simulator.port), ["no.such.object"]) == 2
    assert "unknown object 'no.such.object'" in capsys.readouterr().err


def cell_tables(text: str) -> dict[int, list[list[str]]]:
    """Return the rows of each module's cell table in `rctmon inventory` output, by module."""
    tables: dict[int, list[list[str]]] = {}
    module = None
    for line in text.splitlines():
        if line.startswith("Battery module "):
            module = int(line.split()[2].rstrip(":"))
            tables[module] = []
        elif module is not None and line[:1].isdigit():
            tables[module].append(line.split(None, 4))
        elif not line.strip():
            module = None
    return tables


def test_inventory_shows_every_cell_of_every_module_and_marks_the_lowest(full_simulator: SimulatorThread) -> None:
    out = io.StringIO()
    assert inventory_command(config_for(full_simulator.port), out=out) == 0
    text = out.getvalue()
    assert "CELL  VOLTAGE (V)  TEMPERATURE (°C)  RESISTANCE (mΩ)  NOTE" in text
    tables = cell_tables(text)
    assert sorted(tables) == [0, 1, 2]
    for rows in tables.values():
        assert [row[0] for row in rows] == [str(c) for c in range(24)]
        volts = [float(row[1]) for row in rows]
        marked = [i for i, row in enumerate(rows) if len(row) > 4 and "lowest voltage" in row[4]]
        assert len(marked) == 1 and volts[marked[0]] == min(volts)
        assert all(3.0 < v < 3.6 and 1.0 < float(row[3]) < 4.0 for v, row in zip(volts, rows))
    lines = {line.split()[0]: line for line in text.splitlines() if line.split()}
    assert "External:       none" in text
    assert " mV" in [line for line in text.splitlines() if "cell_voltage_spread" in line][0]
    assert lines["iso_struct.Riso"].rstrip().endswith(" kΩ")


def test_inventory_names_the_external_generator_and_module_slots() -> None:
    options = SimulatorOptions(generators=1, battery_modules=1, power_switch=False, external_generator=True)
    with SimulatorThread(options) as sim:
        out = io.StringIO()
        assert inventory_command(config_for(sim.port), out=out) == 0
    text = out.getvalue()
    assert "External:       generator on the S0 input" in text
    assert "Battery:        1 module\n" in text
    assert "io_board.s0_external_power" in text and "rctmon_external_energy_joules_total" in text
