"""Battery cells from bytes to values: the documented layout built by hand, real inverter bytes, bad payloads."""

from __future__ import annotations

import csv
import os
import pickle
import struct

import pytest
from rctclient.registry import REGISTRY

from rctmon import catalog
from rctmon.collector.framer import INVALID, Decoder
from rctmon.exporters.lineprotocol import LineEncoder
from support import FIXTURES

STATUS_0 = REGISTRY.get_by_name("battery.cells[0]").object_id
RESIST_0 = REGISTRY.get_by_name("battery.cells_resist[0]").object_id
STATUS_4 = REGISTRY.get_by_name("battery.cells[4]").object_id


def status_payload(cells: list[tuple[int, int, int]]) -> bytes:
    """Build battery.cells[n] by hand: per cell temperature (degC, 1 byte), voltage (mV, 2 bytes LE), status byte."""
    return b"".join(bytes([t]) + mv.to_bytes(2, "little") + bytes([st]) for t, mv, st in cells)


def resistance_payload(raws: list[int]) -> bytes:
    """Build battery.cells_resist[n] by hand: per cell 1/256 milliohm (2 bytes BE), two bytes of padding."""
    return b"".join(struct.pack(">H", raw) + b"\0\0" for raw in raws)


def real_cells() -> tuple[dict[str, bytes], list[dict[str, str]]]:
    """Return the recorded payloads by object name, and the expected value rows (tests/fixtures/real-cells*)."""
    with open(os.path.join(FIXTURES, "real-cells.tsv"), encoding="utf-8") as f:
        records = [row for row in csv.reader(f, delimiter="\t") if not row[0].startswith("#")]
    with open(os.path.join(FIXTURES, "real-cells.expected.tsv"), encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    header = lines[0].lstrip("# ").split("\t")
    return {name: bytes.fromhex(payload) for name, payload in records}, [dict(zip(header, line.split("\t")))
                                                                          for line in lines[1:]]


def values(object_id: int, raw: object) -> dict[str, dict[str, float]]:
    """Return {metric: {cell (or "" for a module's summary): value}} of what the catalog exports from `raw`."""
    out: dict[str, dict[str, float]] = {}
    for series, labels, value in catalog.samples(object_id, raw):
        out.setdefault(series.metric, {})[dict(labels).get("cell", "")] = value  # type: ignore[assignment]
    return out


def test_hand_built_payloads_decode_to_every_cell_in_base_units() -> None:
    decoder = Decoder()
    cells = [(20 + c % 7, 3290 + 2 * c, 0) for c in range(24)]
    status = decoder.decode(STATUS_4, status_payload(cells))
    resist = decoder.decode(RESIST_0, resistance_payload([400 + 10 * c for c in range(24)]))
    assert decoder.errors == {}
    assert status == tuple((mv, t) for t, mv, _ in cells)  # plain tuples: (millivolts, degC) as the inverter sent
    got = values(STATUS_4, status)
    assert got["rctmon_battery_cell_voltage_volts"] == {str(c): (3290 + 2 * c) / 1000 for c in range(24)}
    assert got["rctmon_battery_cell_temperature_celsius"] == {str(c): 20 + c % 7 for c in range(24)}
    assert got["rctmon_battery_module_cell_voltage_min_volts"] == {"": 3.29}
    assert got["rctmon_battery_module_cell_voltage_max_volts"] == {"": 3.336}
    assert got["rctmon_battery_module_cell_voltage_spread_volts"] == {"": 0.046}
    ohms = values(RESIST_0, resist)["rctmon_battery_cell_resistance_ohms"]
    assert ohms == {str(c): pytest.approx((400 + 10 * c) / 256 / 1000) for c in range(24)}


def test_real_inverter_bytes_decode_to_the_recorded_values() -> None:
    payloads, rows = real_cells()
    decoder = Decoder()
    status = values(STATUS_0, decoder.decode(STATUS_0, payloads["battery.cells[0]"]))
    resist = values(RESIST_0, decoder.decode(RESIST_0, payloads["battery.cells_resist[0]"]))
    assert decoder.errors == {}
    for row in rows:
        cell = row["cell"]
        if row["object"] == "battery.cells[0]":
            assert status["rctmon_battery_cell_voltage_volts"][cell] == float(row["voltage_volts"])
            assert status["rctmon_battery_cell_temperature_celsius"][cell] == float(row["temperature_celsius"])
        else:
            assert resist["rctmon_battery_cell_resistance_ohms"][cell] == pytest.approx(float(row["resistance_ohms"]))
    assert len(status["rctmon_battery_cell_voltage_volts"]) == len(resist["rctmon_battery_cell_resistance_ohms"]) == 24
    assert status["rctmon_battery_module_cell_voltage_spread_volts"] == {"": pytest.approx(0.009)}  # 3.318..3.327


@pytest.mark.parametrize("length", [0, 3, 4, 95, 97, 100, 192])
def test_a_short_or_long_payload_is_a_bad_payload_and_yields_nothing(length: int) -> None:
    decoder = Decoder()
    for object_id in (STATUS_0, RESIST_0):
        assert decoder.decode(object_id, bytes(range(256))[:length] if length <= 256 else bytes(length)) is INVALID
    assert decoder.errors == {"bad_payload": 2}


def test_a_cell_without_sense_is_counted_and_left_out_but_its_module_still_reported() -> None:
    decoder = Decoder()
    cells = [(25, 3300, 0)] * 23 + [(255, 3301, 0)]  # a temperature byte of 255: no sensor, not 255 degC
    reading = decoder.decode(STATUS_0, status_payload(cells))
    assert reading is not INVALID
    assert decoder.errors == {"absurd_value": 1}
    got = values(STATUS_0, reading)
    assert len(got["rctmon_battery_cell_temperature_celsius"]) == 23
    assert "23" not in got["rctmon_battery_cell_temperature_celsius"]
    assert len(got["rctmon_battery_cell_voltage_volts"]) == 24


def test_a_reading_of_cells_is_small_plain_data() -> None:
    payloads, _ = real_cells()
    reading = (STATUS_0, Decoder().decode(STATUS_0, payloads["battery.cells[0]"]), 1)
    assert all(type(v) is int for record in reading[1] for v in record)  # type: ignore[union-attr]
    assert len(pickle.dumps(reading, protocol=pickle.HIGHEST_PROTOCOL)) < 250


def test_a_module_reading_becomes_a_line_per_cell_and_one_of_summaries() -> None:
    payloads, _ = real_cells()
    decoder = Decoder()
    encoder = LineEncoder("PS 6.0")
    lines = encoder.encode((STATUS_0, decoder.decode(STATUS_0, payloads["battery.cells[0]"]), 7))
    assert len(lines) == 25
    assert lines[0] == b"battery_module,inverter=PS\\ 6.0,module=0 cell_voltage_min=3.318,cell_voltage_max=3.327," \
                       b"cell_voltage_spread=0.009 7"
    assert b"battery_cell,cell=0,inverter=PS\\ 6.0,module=0 voltage=3.318,temperature=25.0 7" in lines
    resist = encoder.encode((RESIST_0, decoder.decode(RESIST_0, payloads["battery.cells_resist[0]"]), 8))
    assert len(resist) == 24
    assert resist[1] == b"battery_cell,cell=1,inverter=PS\\ 6.0,module=0 resistance=0.0013203125 8"
    assert encoder.invalid == encoder.unknown == 0
