"""The whole daemon against the simulator: every cell of every module, the external generator and the insulation
resistances on /metrics, with the values the simulator sent (issue 12)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rctmon.simulator import SimulatorOptions, SimulatorThread
from support import wait_for
from test_daemon import Daemon, Samples

MODULES, CELLS = 3, 24
CELL_METRICS = ("rctmon_battery_cell_voltage_volts", "rctmon_battery_cell_temperature_celsius",
                "rctmon_battery_cell_resistance_ohms")
EXTERNAL = ("rctmon_external_power_watts", "rctmon_external_energy_day_joules", "rctmon_external_energy_month_joules",
            "rctmon_external_energy_year_joules", "rctmon_external_energy_joules_total")
NAME = "Garage PS 6.0"


def options(external_generator: bool) -> SimulatorOptions:
    """`rctmon simulator --generators 2 --battery-modules 3 [--external-generator]`, answering quickly."""
    return SimulatorOptions(name=NAME, generators=2, battery_modules=MODULES, power_switch=True,
                            external_generator=external_generator, latency_ms=5)


def by_metric(samples: Samples, metric: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Return {labels without `inverter`: value} of one metric's samples."""
    return {tuple((k, v) for k, v in labels if k != "inverter"): value
            for (name, labels), value in samples.items() if name == metric}


def cells(samples: Samples, metric: str) -> dict[tuple[int, int], float]:
    return {(int(dict(labels)["module"]), int(dict(labels)["cell"])): value
            for labels, value in by_metric(samples, metric).items()}


def complete(samples: Samples, external: bool) -> Samples | None:
    """Return the samples once every cell, the insulation and (if wanted) the external generator are there."""
    if any(len(cells(samples, metric)) < MODULES * CELLS for metric in CELL_METRICS):
        return None
    if len(by_metric(samples, "rctmon_inverter_insulation_resistance_ohms")) < 3:
        return None
    if external and any(not by_metric(samples, metric) for metric in EXTERNAL):
        return None
    return samples


@pytest.fixture
def run(tmp_path: Path) -> Iterator:
    started: list[tuple[SimulatorThread, Daemon]] = []

    def start(external_generator: bool) -> tuple[SimulatorThread, Daemon]:
        sim = SimulatorThread(options(external_generator)).start()
        daemon = Daemon(tmp_path, sim.port)
        started.append((sim, daemon))
        return sim, daemon

    yield start
    for sim, daemon in started:
        daemon.stop()
        sim.stop()


@pytest.mark.timeout(60)
def test_every_cell_the_external_generator_and_the_insulation_arrive_as_sent(run) -> None:
    sim, daemon = run(external_generator=True)
    samples = wait_for(lambda: complete(daemon.scrape(), external=True), 40, interval=0.25,
                       message="every cell, the insulation and the external generator on /metrics")

    voltages, temperatures = cells(samples, CELL_METRICS[0]), cells(samples, CELL_METRICS[1])
    resistances = cells(samples, CELL_METRICS[2])
    assert set(voltages) == set(temperatures) == set(resistances) == {
        (m, c) for m in range(MODULES) for c in range(CELLS)}
    for m in range(MODULES):
        sent_status = sim.sent_values(f"battery.cells[{m}]")
        sent_resist = sim.sent_values(f"battery.cells_resist[{m}]")
        for c in range(CELLS):
            # one of the answers the simulator sent, converted: mV / 1000, degC, milliohm / 1000
            assert voltages[(m, c)] in {s[c].voltage_mv / 1000 for s in sent_status}, (m, c)
            assert temperatures[(m, c)] in {float(s[c].temperature_c) for s in sent_status}, (m, c)
            assert resistances[(m, c)] in {r[c].resistance_mohm / 1000 for r in sent_resist}, (m, c)
        # the module's summaries come from one of those answers too
        spread = by_metric(samples, "rctmon_battery_module_cell_voltage_spread_volts")[(("module", str(m)),)]
        assert spread in {(max(x.voltage_mv for x in s) - min(x.voltage_mv for x in s)) / 1000 for s in sent_status}
        low = by_metric(samples, "rctmon_battery_module_cell_voltage_min_volts")[(("module", str(m)),)]
        assert low in {min(x.voltage_mv for x in s) / 1000 for s in sent_status}

    insulation = by_metric(samples, "rctmon_inverter_insulation_resistance_ohms")
    for pole, name in (("total", "iso_struct.Riso"), ("positive", "iso_struct.Rp"), ("negative", "iso_struct.Rn")):
        assert insulation[(("pole", pole),)] in sim.sent_values(name)
    assert by_metric(samples, "rctmon_external_power_watts")[()] in sim.sent_values("io_board.s0_external_power")
    total = by_metric(samples, "rctmon_external_energy_joules_total")[()]
    assert total in {wh * 3600 for wh in sim.sent_values("energy.e_ext_total")} and total > 0


@pytest.mark.timeout(60)
def test_without_an_external_generator_none_of_its_series_exist(run) -> None:
    sim, daemon = run(external_generator=False)
    samples = wait_for(lambda: complete(daemon.scrape(), external=False), 40, interval=0.25,
                       message="every cell and the insulation on /metrics")
    # Every series of the slow tier has been read by now (cells are slow): the external generator's would be too.
    assert not [name for name, _ in samples if name.startswith("rctmon_external_")]
    assert sim.sent_values("io_board.io1_usage")  # asked, with the inventory
    assert not sim.sent_values("io_board.s0_external_power") and not sim.sent_values("energy.e_ext_total")  # not polled
