"""The simulator's external generator (a second inverter or a balcony plant on the S0 input), present and absent."""

from __future__ import annotations

import re
import select
import signal
import subprocess
from typing import Callable
from collections.abc import Iterator

import pytest

from rctmon.simulator import SimulatorThread
from rctmon.simulator.plant import DAY_SECONDS, EFFICIENCY, EXTERNAL_PEAK_W, Plant
from rctmon.simulator.values import IO_USAGE_S0_EXTERNAL
from simclient import Client, connections, simulators
from support import rctmon_command, stop_process

EXTERNAL_OBJECTS = ["io_board.io1_usage", "io_board.io2_usage", "io_board.s0_external_power", "energy.e_ext_day",
                    "energy.e_ext_month", "energy.e_ext_year", "energy.e_ext_total"]


@pytest.fixture
def simulator() -> Iterator[Callable[..., SimulatorThread]]:
    with simulators() as start:
        yield start


@pytest.fixture
def clients() -> Iterator[Callable[[int], Client]]:
    with connections() as connect:
        yield connect


def test_an_external_generator_is_announced_on_io1_and_produces(
        simulator: Callable[..., SimulatorThread], clients: Callable[[int], Client]) -> None:
    sim = simulator(external_generator=True)
    values = clients(sim.port).read(EXTERNAL_OBJECTS)
    assert values["io_board.io1_usage"] == IO_USAGE_S0_EXTERNAL == 10  # "Input S0 external power"
    assert values["io_board.io2_usage"] == 0
    assert 0.0 < values["io_board.s0_external_power"] <= EXTERNAL_PEAK_W * 1.05  # the simulated day starts sunny
    day, month, year, total = (values[f"energy.e_ext_{p}"] for p in ("day", "month", "year", "total"))
    assert 0.0 < day <= month <= year < total
    assert values == {**values, **{name: sim.sent_values(name)[-1] for name in EXTERNAL_OBJECTS}}


def test_without_an_external_generator_its_objects_answer_zero(
        simulator: Callable[..., SimulatorThread], clients: Callable[[int], Client]) -> None:
    sim = simulator()
    values = clients(sim.port).read(EXTERNAL_OBJECTS)
    assert values == {"io_board.io1_usage": 0, "io_board.io2_usage": 0, "io_board.s0_external_power": 0.0,
                      "energy.e_ext_day": 0.0, "energy.e_ext_month": 0.0, "energy.e_ext_year": 0.0,
                      "energy.e_ext_total": 0.0}


@pytest.mark.parametrize("modules", [3, 0])
def test_the_power_balance_holds_with_an_external_generator(modules: int) -> None:
    """household = inverter AC (solar and battery) + external + grid, all day long; external follows the sun."""
    now = [0.0]
    plant = Plant(2, modules, True, clock=lambda: now[0], external_generator=True)
    produced, externals = 0.0, []
    start = plant.energy("ext", "total")
    for _ in range(int(DAY_SECONDS)):
        now[0] += 1.0
        before = plant.external_power
        plant.advance_to(now[0])
        produced += before * 24.0 / DAY_SECONDS  # Wh in one simulated step of 24 / DAY_SECONDS hours
        assert plant.load == pytest.approx(plant.ac_power + plant.external_power + plant.grid_power)
        assert plant.ac_power == pytest.approx(EFFICIENCY * (sum(plant.generator_power) + plant.battery_power))
        assert sum(plant.grid_phase) == pytest.approx(plant.grid_power)
        externals.append(plant.external_power)
    assert min(externals) == 0.0 and 0.6 * EXTERNAL_PEAK_W < max(externals) <= 1.05 * EXTERNAL_PEAK_W
    assert plant.energy("ext", "total") - start == pytest.approx(produced, rel=0.05)


def test_the_battery_covers_the_load_the_external_generator_leaves() -> None:
    """With the battery balancing, the external generator's power goes to the household, not to the grid."""
    now = [0.0]
    with_external = Plant(0, 3, True, clock=lambda: now[0], external_generator=True)
    without = Plant(0, 3, True, clock=lambda: now[0])
    now[0] = 0.2 * DAY_SECONDS  # late morning: the external generator produces, the battery can discharge
    for plant in (with_external, without):
        plant.advance_to(now[0])
    assert with_external.external_power > 100.0
    assert with_external.battery_power == pytest.approx(
        without.battery_power - with_external.external_power / EFFICIENCY, abs=1.0)
    assert abs(with_external.grid_power) < 50.0


@pytest.mark.timeout(60)
def test_the_command_line_runs_the_issues_installation() -> None:
    command = rctmon_command("simulator", "--port", "0", "--generators", "2", "--battery-modules", "3",
                             "--external-generator")
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            assert ready, "no output from the simulator"
            match = re.fullmatch(r"rctmon simulator listening on 127\.0\.0\.1:(\d+)\n", proc.stdout.readline().decode())
            assert match
            client = Client(int(match.group(1)))
            try:
                values = client.read(["io_board.io1_usage", "io_board.s0_external_power", "battery.cells[2]",
                                      "battery.cells[3]", "dc_conv.dc_conv_struct[1].enabled", "iso_struct.Riso"])
            finally:
                client.close()
            assert values["io_board.io1_usage"] == 10 and values["io_board.s0_external_power"] > 0.0
            assert {c.voltage_mv > 3000 for c in values["battery.cells[2]"]} == {True}
            assert {c.voltage_mv for c in values["battery.cells[3]"]} == {0}
            assert values["dc_conv.dc_conv_struct[1].enabled"] is True and values["iso_struct.Riso"] > 1e5
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
        finally:
            stop_process(proc)
