"""The simulator's battery cells: the payloads built by hand from the documented layout, and what the cells do."""

from __future__ import annotations

import csv
import os
import struct
from typing import Callable
from collections.abc import Iterator

import pytest
from rctclient.types import DataType
from rctclient.utils import decode_value

from rctmon.simulator import SimulatorThread
from rctmon.simulator.cells import CELLS_PER_MODULE, ModuleCells, open_circuit_voltage, weak_cell
from rctmon.simulator.plant import DAY_SECONDS, Plant
from rctmon.simulator.values import ENCODERS, cell_resistance_raw, cell_status
from simclient import Client, connections, simulators
from support import FIXTURES

STATUS = ENCODERS[DataType.BATTERY_MODULE_STATUS]
RESISTANCE = ENCODERS[DataType.BATTERY_MODULE_RESISTANCE]
MODULES = 3


@pytest.fixture
def simulator() -> Iterator[Callable[..., SimulatorThread]]:
    with simulators() as start:
        yield start


@pytest.fixture
def clients() -> Iterator[Callable[[int], Client]]:
    with connections() as connect:
        yield connect


def real_cells() -> tuple[dict[str, bytes], list[dict[str, str]]]:
    """Return the recorded payloads by object name, and the expected value rows (tests/fixtures/real-cells*)."""
    with open(os.path.join(FIXTURES, "real-cells.tsv"), encoding="utf-8") as f:
        records = [row for row in csv.reader(f, delimiter="\t") if not row[0].startswith("#")]
    payloads = {name: bytes.fromhex(payload) for name, payload in records}
    with open(os.path.join(FIXTURES, "real-cells.expected.tsv"), encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
        header = lines[0].lstrip("# ").rstrip("\n").split("\t")
        rows = [dict(zip(header, line.rstrip("\n").split("\t"))) for line in lines[1:]]
    return payloads, rows


# --- the payloads --------------------------------------------------------------------------------------------------

def test_status_payload_is_the_documented_layout_and_decodes_to_what_was_encoded() -> None:
    cells = tuple((20 + c % 9, 3100 + 17 * c, c % 3) for c in range(CELLS_PER_MODULE))
    payload = STATUS(cells)
    # 4 bytes a cell: temperature (degC, 1 byte), voltage (mV, 2 bytes little-endian), status (1 byte)
    assert len(payload) == 4 * CELLS_PER_MODULE
    assert payload[4:8] == bytes([21]) + (3117).to_bytes(2, "little") + bytes([1])
    decoded = decode_value(DataType.BATTERY_MODULE_STATUS, payload)
    assert [(c.temperature_c, c.voltage_mv, c.status) for c in decoded] == list(cells)


def test_resistance_payload_is_the_documented_layout_and_decodes_to_what_was_encoded() -> None:
    raws = tuple(300 + 11 * c for c in range(CELLS_PER_MODULE))
    payload = RESISTANCE(raws)
    # 4 bytes a cell: raw value (16 bits big-endian, raw / 256 = milliohm), two bytes of padding
    assert len(payload) == 4 * CELLS_PER_MODULE
    assert payload[4:8] == struct.pack(">H", 311) + b"\x00\x00"
    decoded = decode_value(DataType.BATTERY_MODULE_RESISTANCE, payload)
    assert [c.raw_value for c in decoded] == list(raws)
    assert [c.resistance_mohm for c in decoded] == [raw / 256 for raw in raws]


def test_real_inverter_bytes_decode_as_documented_and_encode_back_byte_for_byte() -> None:
    payloads, rows = real_cells()
    status = decode_value(DataType.BATTERY_MODULE_STATUS, payloads["battery.cells[0]"])
    resistance = decode_value(DataType.BATTERY_MODULE_RESISTANCE, payloads["battery.cells_resist[0]"])
    for row in rows:
        cell = int(row["cell"])
        if row["object"] == "battery.cells[0]":
            assert status[cell].temperature_c == int(row["temperature_celsius"])
            assert status[cell].voltage_mv / 1000 == pytest.approx(float(row["voltage_volts"]))
        else:
            assert resistance[cell].resistance_mohm / 1000 == pytest.approx(float(row["resistance_ohms"]))
    assert len(rows) == 2 * CELLS_PER_MODULE
    assert STATUS(tuple((c.temperature_c, c.voltage_mv, c.status) for c in status)) == payloads["battery.cells[0]"]
    assert RESISTANCE(tuple(c.raw_value for c in resistance)) == payloads["battery.cells_resist[0]"]


@pytest.mark.parametrize("length", [0, 4, 95, 97, 192])
def test_payloads_of_another_length_do_not_decode(length: int) -> None:
    for data_type in (DataType.BATTERY_MODULE_STATUS, DataType.BATTERY_MODULE_RESISTANCE):
        with pytest.raises(ValueError):
            decode_value(data_type, bytes(length))


# --- what the simulator sends --------------------------------------------------------------------------------------

def test_every_cell_of_every_module_is_answered_as_the_plant_has_it(
        simulator: Callable[..., SimulatorThread], clients: Callable[[int], Client]) -> None:
    sim = simulator(battery_modules=MODULES)
    names = [f"battery.{kind}[{m}]" for kind in ("cells", "cells_resist") for m in range(7)]
    values = clients(sim.port).read(names)
    for m in range(MODULES):
        status, resistance = values[f"battery.cells[{m}]"], values[f"battery.cells_resist[{m}]"]
        assert len(status) == len(resistance) == CELLS_PER_MODULE
        assert sim.sent_values(f"battery.cells[{m}]")[-1] == status  # what a client decoded is what was sent
        assert sim.sent_values(f"battery.cells_resist[{m}]")[-1] == resistance
        volts = [c.voltage_mv / 1000 for c in status]
        assert all(3.0 < v < 3.5 for v in volts), volts  # LiFePO4 at the simulator's starting charge
        assert max(volts) - min(volts) < 0.06  # a balanced module, one weak cell included
        assert all(15 <= c.temperature_c <= 40 and c.status == 0 for c in status)
        ohms = [c.resistance_mohm / 1000 for c in resistance]
        assert all(1.0e-3 < r < 4.0e-3 for r in ohms), ohms
        assert max(range(CELLS_PER_MODULE), key=ohms.__getitem__) == weak_cell(m)
    for m in range(MODULES, 7):  # empty slots answer zeros, as real inverters do for absent parts
        assert {c.voltage_mv for c in values[f"battery.cells[{m}]"]} == {0}
        assert {c.raw_value for c in values[f"battery.cells_resist[{m}]"]} == {0}


def test_the_stack_voltage_and_the_extreme_cells_agree_with_the_cells(
        simulator: Callable[..., SimulatorThread], clients: Callable[[int], Client]) -> None:
    sim = simulator(battery_modules=MODULES)
    client = clients(sim.port)
    plant = sim.simulator.plant
    names = ["battery.voltage", "battery.min_cell_voltage", "battery.max_cell_voltage",
             "battery.min_cell_temperature", "battery.max_cell_temperature"]
    values = client.read(names + [f"battery.cells[{m}]" for m in range(MODULES)])
    cells = plant.all_cells()  # the plant may have moved on since: compare loosely
    volts = [c.voltage_mv / 1000 for m in range(MODULES) for c in values[f"battery.cells[{m}]"]]
    assert values["battery.voltage"] == pytest.approx(sum(volts), abs=0.5)
    assert values["battery.min_cell_voltage"] == pytest.approx(min(volts), abs=0.02)
    assert values["battery.max_cell_voltage"] == pytest.approx(max(volts), abs=0.02)
    assert values["battery.min_cell_temperature"] == pytest.approx(min(c.temperature for c in cells), abs=1.0)
    assert values["battery.max_cell_temperature"] == pytest.approx(max(c.temperature for c in cells), abs=1.0)
    assert len(cells) == MODULES * CELLS_PER_MODULE


def test_the_encoding_rounds_the_plants_truth() -> None:
    plant = Plant(2, MODULES, True, clock=lambda: 0.0)
    for m in range(MODULES):
        for cell in plant.cells(m):
            temperature, millivolts, status = cell_status(cell)
            assert (temperature, status) == (round(cell.temperature), 0)
            assert millivolts / 1000 == pytest.approx(cell.voltage, abs=0.0005)
            assert cell_resistance_raw(cell) / 256 / 1000 == pytest.approx(cell.resistance, abs=0.5 / 256 / 1000)


# --- what the cells do ---------------------------------------------------------------------------------------------

def test_cells_move_with_charge_and_discharge_and_the_weak_cell_shows() -> None:
    now = [0.0]
    plant = Plant(2, MODULES, True, clock=lambda: now[0])
    samples = []  # (state of charge, current, cells of module 0)
    for _ in range(int(DAY_SECONDS)):
        now[0] += 1.0
        plant.advance_to(now[0])
        samples.append((plant.soc, plant.battery_current, plant.cells(0)))
        assert sum(c.voltage for c in plant.all_cells()) == pytest.approx(plant.battery_voltage)
    weak = weak_cell(0)
    means = [sum(c.voltage for c in cells) / len(cells) for _, _, cells in samples]
    assert max(means) - min(means) > 0.1  # from nearly empty to full over a simulated day
    # Higher charge, higher voltage: the mean voltage follows the state of charge.
    by_soc = sorted(zip((s for s, _, _ in samples), means))
    low, high = by_soc[: len(by_soc) // 4], by_soc[-len(by_soc) // 4:]
    assert sum(v for _, v in high) / len(high) > sum(v for _, v in low) / len(low) + 0.05
    charging = [cells for _, current, cells in samples if current < -5.0]
    discharging = [cells for _, current, cells in samples if current > 1.0]
    assert charging and discharging
    for cells in discharging:  # under load or at rest the weak cell is the lowest; its resistance always the highest
        assert min(range(CELLS_PER_MODULE), key=lambda c: cells[c].voltage) == weak
    for _, _, cells in samples:
        assert max(range(CELLS_PER_MODULE), key=lambda c: cells[c].resistance) == weak
        assert all(5.0 < c.temperature < 45.0 for c in cells)


def test_a_cell_sits_above_its_rest_voltage_while_charging_and_below_it_while_discharging() -> None:
    module = ModuleCells(0)
    rest = module.state(0.5, 0.0, 25.0)
    charging = module.state(0.5, -20.0, 25.0)
    discharging = module.state(0.5, 20.0, 25.0)
    for c in range(CELLS_PER_MODULE):
        assert charging[c].voltage > rest[c].voltage > discharging[c].voltage
    assert max(c.voltage for c in rest) - min(c.voltage for c in rest) < 0.03  # a small spread at rest
    assert open_circuit_voltage(0.1) < open_circuit_voltage(0.5) < open_circuit_voltage(0.95)
    assert ModuleCells(1).state(0.5, 0.0, 25.0) != rest  # modules differ
    assert ModuleCells(0).state(0.5, 0.0, 25.0) == rest  # and every run sees the same cells


@pytest.mark.parametrize("module", range(7))
def test_every_modules_weak_cell_is_the_lowest_at_rest_and_under_load_and_always_the_most_resistant(
        module: int) -> None:
    cells = ModuleCells(module)
    for soc in (0.08, 0.2, 0.5, 0.65, 0.8, 0.95, 1.0):
        for current in (0.0, 1.0, 25.0, -25.0):
            for temperature in (10.0, 25.0):
                state = cells.state(soc, current, temperature)
                if current >= 0.0:
                    assert min(range(CELLS_PER_MODULE), key=lambda c: state[c].voltage) == cells.weak
                assert max(range(CELLS_PER_MODULE), key=lambda c: state[c].resistance) == cells.weak
