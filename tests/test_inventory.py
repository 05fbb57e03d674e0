"""The inventory: which battery slots hold a module, whether an external generator is on the S0 input."""

from __future__ import annotations

import csv
import os
import pickle

import pytest

from rctmon import catalog
from rctmon.inventory import ALL_OBJECTS, MODULE_OBJECTS, Inventory
from support import FIXTURES


def answers(**overrides: object) -> dict[str, object]:
    """Return an answer for every inventory object: an inverter with generator A and nothing else."""
    values: dict[str, object] = {name: 0 for name in ALL_OBJECTS}
    values.update({"android_description": "PS 6.0", "inverter_sn": "SN1", "svnversion": "1",
                   "parameter_file": "p", "dc_conv.dc_conv_struct[0].enabled": True,
                   "dc_conv.dc_conv_struct[1].enabled": False, "rb485.available": False})
    values.update(overrides)
    return values


def recorded_stack_versions() -> dict[str, object]:
    """Return battery.stack_software_version[0..6] as a real inverter answered them (tests/fixtures)."""
    with open(os.path.join(FIXTURES, "real-burst.expected.tsv"), encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return {row["name"]: int(row["value"]) for row in rows if row["name"] in MODULE_OBJECTS}


def test_a_real_inverters_present_slots_are_the_modules() -> None:
    versions = recorded_stack_versions()
    assert len(versions) == 7
    inventory = Inventory.from_values(answers(**versions))
    assert inventory.modules == (0, 1, 2) and inventory.battery_modules == 3 and inventory.complete


def test_modules_are_the_present_slots_even_when_a_gap_lies_between_them() -> None:
    """Regression: the count of non-zero slots used to enable modules 0..n-1, the wrong ones for a gap."""
    slots = {MODULE_OBJECTS[1]: 5599, MODULE_OBJECTS[4]: 5599, MODULE_OBJECTS[6]: 5599}
    inventory = Inventory.from_values(answers(**slots))
    assert inventory.modules == (1, 4, 6) and inventory.battery_modules == 3
    polled = {s.object_name for s in catalog.enabled_series(inventory) if s.row.axis is catalog.MODULE}
    assert "battery.cells[4]" in polled and "battery.stack_cycles[6]" in polled
    assert not any(name.endswith(("[0]", "[2]", "[3]", "[5]")) for name in polled)
    assert inventory.describe_battery() == "3 modules (slots 1, 4, 6)"
    assert "battery with 3 modules (slots 1, 4, 6)" in inventory.summary()


@pytest.mark.parametrize("io1, io2, external", [(10, 0, True), (0, 10, True), (0, 0, False), (1, 3, False),
                                                (9, 0, False)])
def test_an_external_generator_is_there_when_an_io_is_the_s0_input_for_external_power(
        io1: int, io2: int, external: bool) -> None:
    inventory = Inventory.from_values(answers(**{"io_board.io1_usage": io1, "io_board.io2_usage": io2}))
    assert inventory.external_generator is external
    assert inventory.complete


def test_the_inventory_is_incomplete_until_the_io_usage_answered() -> None:
    values = answers()
    del values["io_board.io2_usage"]
    assert not Inventory.from_values(values).complete


def test_a_count_of_modules_means_the_first_slots_and_both_ways_compare_equal() -> None:
    assert Inventory(battery_modules=3) == Inventory(modules=(2, 0, 1)) == Inventory(modules=(0, 1, 2))
    assert Inventory(battery_modules=3).modules == (0, 1, 2)
    assert Inventory().modules == () and not Inventory().battery
    with pytest.raises(ValueError):
        Inventory(battery_modules=2, modules=(0, 1, 2))
    inventory = Inventory(name="x", modules=(3,), external_generator=True)
    assert pickle.loads(pickle.dumps(inventory)) == inventory
