"""The built-in simulator, seen from the wire: a client built from rctclient's make_frame and ReceiveFrame only
(tests/simclient.py).

The collector is not used here on purpose: these tests pin what the simulator sends, so that the collector's tests
can rely on it.
"""

from __future__ import annotations

import functools
import math
import os
import random
import re
import select
import signal
import socket
import struct
import subprocess
import time
from typing import Any, Callable
from collections.abc import Iterator, Sequence

import pytest
from rctclient.frame import ReceiveFrame, make_frame
from rctclient.registry import REGISTRY
from rctclient.types import Command, DataType
from rctclient.utils import CRC16, encode_value

from rctmon.catalog import SERIES
from rctmon.inventory import ALL_OBJECTS, MODULE_OBJECTS, Inventory
from rctmon.simulator import SimulatorOptions, SimulatorThread
from rctmon.simulator.plant import DAY_SECONDS, EFFICIENCY, Plant
from rctmon.simulator.values import decode_any, resolve_all
from rctmon.simulator.wire import Request, RequestParser, crc16, response_frame
from simclient import IDS, NAMES, Client, connections, simulators
from support import FIXTURES, rctmon_command, stop_process, wait_for

PYTHON_TYPES = {DataType.FLOAT: float, DataType.STRING: str, DataType.BOOL: bool}


@pytest.fixture
def simulator() -> Iterator[Callable[..., SimulatorThread]]:
    """Start simulators with the given options; every one is stopped when the test ends, pass or fail."""
    with simulators() as start:
        yield start


@pytest.fixture
def clients() -> Iterator[Callable[[int], Client]]:
    with connections() as connect:
        yield connect


def value_of(frame: ReceiveFrame) -> Any:
    return decode_any(REGISTRY.get_by_id(frame.id).response_data_type, frame.data)


# --- framing ------------------------------------------------------------------------------------------------------

def test_answer_frames_are_byte_for_byte_what_rctclient_builds() -> None:
    rng = random.Random(7)
    ids = [info.object_id for info in REGISTRY.all()][:200] + [0x2B2B2D2D, 0x2D000000]
    payloads = [b"", b"+", b"-", b"+-+-", bytes(range(256)), bytes(251), bytes(252), bytes(400)]
    payloads += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60))) for _ in range(200)]
    for object_id in ids:
        for payload in rng.sample(payloads, 8) + payloads[:8]:
            command = Command.RESPONSE if len(payload) <= 251 else Command.LONG_RESPONSE
            assert response_frame(object_id, payload) == make_frame(command, object_id, payload)
    for length in range(0, 40):
        data = bytes(rng.randrange(256) for _ in range(length))
        assert crc16(data) == CRC16(data)


def test_answers_look_like_a_real_inverters(simulator: Callable[..., SimulatorThread],
                                            clients: Callable[[int], Client]) -> None:
    """The 0x00 before each answer and the NUL-padded string, as recorded from a real PS 6.0 BA3L."""
    with open(os.path.join(FIXTURES, "real-single.tsv"), encoding="utf-8") as fixture:
        recorded = next(line.split("\t")[0] for line in fixture if "\tandroid_description\t" in line)
    sim = simulator(name="PS 6.0 BA3L")
    client = clients(sim.port)
    client.read(["android_description"])
    assert bytes(client.raw) == bytes.fromhex(recorded)


def test_request_parser_resynchronises_after_garbage() -> None:
    reads = [make_frame(Command.READ, info.object_id) for info in REGISTRY.all()[:300]]
    write = make_frame(Command.WRITE, IDS["battery.soc_target"], encode_value(DataType.FLOAT, 0.5))
    junk = [b"AT+\r", b"\x2b\x3c\xe1\x01", b"+", b"-+", b"\x00\xff+\x05\xff", b"garbage", reads[3][:5]]
    rng = random.Random(3)
    stream = b""
    for i, frame in enumerate(reads):
        stream += rng.choice(junk) + frame if i % 3 == 0 else frame
        if i == 100:
            stream += write
    parser = RequestParser()
    got = []
    pos = 0
    while pos < len(stream):  # arbitrary chunking, down to single bytes
        size = rng.choice((1, 2, 7, 64, 500))
        got.extend(parser.feed(stream[pos:pos + size]))
        pos += size
    read_ids = [r.object_id for r in got if r.command == Command.READ]
    assert read_ids == [info.object_id for info in REGISTRY.all()[:300]]
    assert [r.object_id for r in got if r.command == Command.WRITE] == [IDS["battery.soc_target"]]
    assert parser.garbage_bytes > 0


# --- inventory and values -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("generators,modules,power_switch", [(2, 3, True), (1, 0, False), (0, 7, True)])
def test_inventory_objects_answer_as_configured(simulator: Callable[..., SimulatorThread],
                                                clients: Callable[[int], Client],
                                                generators: int, modules: int, power_switch: bool) -> None:
    sim = simulator(name="Garage", generators=generators, battery_modules=modules, power_switch=power_switch)
    values = clients(sim.port).read(ALL_OBJECTS)
    inventory = Inventory.from_values(values)
    assert (inventory.name, inventory.generators, inventory.battery_modules, inventory.power_switch,
            inventory.complete) == ("Garage", ("a", "b")[:generators], modules, power_switch, True)
    assert inventory.serial and inventory.software_version and inventory.parameter_file
    assert inventory == sim.options.inventory()  # what collector tests can expect
    assert [values[name] != 0 for name in MODULE_OBJECTS] == [i < modules for i in range(7)]


def test_every_catalog_series_answers_a_plausible_value_of_its_type(
        simulator: Callable[..., SimulatorThread], clients: Callable[[int], Client]) -> None:
    resolved = resolve_all()
    unspecific = [s.object_name for s in SERIES if resolved[s.object_id].rule.value is None]
    assert not unspecific, f"catalog series answered with a registry default: {unspecific}"

    sim = simulator(generators=2, battery_modules=3, power_switch=True)
    values = clients(sim.port).read([s.object_name for s in SERIES])
    for series in SERIES:
        value = values[series.object_name]
        assert value in sim.sent_values(series.object_id)
        if series.elements is not None:  # a module's cells: every one of them plausible to the catalog
            records = series.elements.records(value)
            assert len(series.samples(records)) == len(series.sample_labels), series.metric
            continue
        assert type(value) is PYTHON_TYPES.get(series.data_type, int), series.object_name
        if isinstance(value, float):
            assert math.isfinite(value) and abs(value) < 1e8, series.object_name

    for name in ("battery.soc", "battery.soc_target", "power_mng.soc_min", "battery.soh"):
        assert 0.0 < values[name] <= 1.0, name
    for period in ("day", "month", "year", "total"):
        assert values[f"energy.e_grid_feed_{period}"] <= 0.0  # the inverter counts feed-in negative
        assert values[f"energy.e_grid_load_{period}"] > 0.0
    assert values["energy.e_grid_feed_total"] < 0.0
    for counter in ("ac", "grid_feed", "grid_load", "load"):  # equal on the first of a month, of a year
        day, month, year, total = (abs(values[f"energy.e_{counter}_{p}"]) for p in ("day", "month", "year", "total"))
        assert day <= month <= year < total, counter
    for i in range(3):
        assert 200.0 < values[f"g_sync.u_l_rms[{i}]"] < 260.0
        assert 200.0 < values[f"rb485.u_l_grid[{i}]"] < 260.0
        assert 49.5 < values[f"rb485.f_grid[{i}]"] < 50.5
        lowest, highest = (values[f"battery.cells_stat[{i}].{stat}.value"] for stat in ("u_min", "u_max"))
        assert 2.0 < lowest < highest < 4.5
        assert values[f"battery.module_sn[{i}]"] and values[f"battery.stack_cycles[{i}]"] > 0
    assert values["battery.module_sn[3]"] == "" and values["battery.stack_cycles[3]"] == 0
    assert 49.5 < values["grid_pll[0].f"] < 50.5
    assert values["dc_conv.dc_conv_struct[0].p_dc_lp"] > 0.0  # the simulated day starts with the sun up
    assert values["dc_conv.dc_conv_struct[1].p_dc_lp"] > 0.0
    assert 10.0 < values["db.temp1"] < 80.0 and 10.0 < values["battery.temperature"] < 45.0
    assert values["battery.min_cell_voltage"] < values["battery.max_cell_voltage"]


def test_absent_parts_answer_zeros(simulator: Callable[..., SimulatorThread],
                                   clients: Callable[[int], Client]) -> None:
    sim = simulator(generators=1, battery_modules=0, power_switch=False)
    values = clients(sim.port).read(["battery.soc", "g_sync.p_acc_lp", "battery.module_sn[0]", "rb485.available",
                                     "rb485.version_main", "dc_conv.dc_conv_struct[1].p_dc_lp",
                                     "dc_conv.dc_conv_struct[0].p_dc_lp", "energy.e_dc_total[1]"])
    assert values == {**values, "battery.soc": 0.0, "g_sync.p_acc_lp": 0.0, "battery.module_sn[0]": "",
                      "rb485.available": False, "rb485.version_main": 0, "dc_conv.dc_conv_struct[1].p_dc_lp": 0.0,
                      "energy.e_dc_total[1]": 0.0}
    assert values["dc_conv.dc_conv_struct[0].p_dc_lp"] > 0.0


def test_every_registry_object_answers_decodably(simulator: Callable[..., SimulatorThread],
                                                 clients: Callable[[int], Client]) -> None:
    """Objects outside the catalog get type-correct defaults (long ones as LONG_RESPONSE); UNKNOWN ones are silent."""
    sim = simulator()
    objects = [info for info in REGISTRY.all() if info.response_data_type != DataType.UNKNOWN]
    client = clients(sim.port)
    values = client.read([info.name for info in objects])
    assert len(values) == len(objects)
    assert any(f.command == Command.LONG_RESPONSE for f in client.frames)


def test_plant_moves_plausibly_over_a_simulated_day() -> None:
    now = [0.0]
    plant = Plant(2, 3, True, clock=lambda: now[0])
    totals = ("ac", "dc0", "dc1", "grid_load", "household")
    previous = {key: plant.energy(key, "total") for key in totals + ("grid_feed",)}
    socs, powers, day_resets = [], [], 0
    last_day = plant.energy("household", "day")
    for _ in range(int(DAY_SECONDS * 1.5)):
        now[0] += 1.0
        plant.advance_to(now[0])
        for key in totals:
            assert plant.energy(key, "total") >= previous[key]
            previous[key] = plant.energy(key, "total")
        assert plant.energy("grid_feed", "total") <= previous["grid_feed"]  # negative, growing in magnitude
        previous["grid_feed"] = plant.energy("grid_feed", "total")
        day_resets += plant.energy("household", "day") < last_day
        last_day = plant.energy("household", "day")
        assert 0.0 <= plant.soc <= 1.0
        assert plant.ac_power == pytest.approx(EFFICIENCY * (sum(plant.generator_power) + plant.battery_power))
        assert plant.grid_power == pytest.approx(plant.load - plant.ac_power)
        assert sum(plant.grid_phase) == pytest.approx(plant.grid_power)
        socs.append(plant.soc)
        powers.append(plant.generator_power[0])
    assert day_resets == 1
    assert min(powers) == 0.0 and max(powers) > 3000.0  # night and noon
    assert max(socs) - min(socs) > 0.3  # the battery charges by day and discharges at night
    assert previous["grid_feed"] < -2769942.25  # the day's surplus went to the grid


# --- protocol behaviour -------------------------------------------------------------------------------------------

def test_unknown_objects_and_writes_get_no_answer(simulator: Callable[..., SimulatorThread],
                                                  clients: Callable[[int], Client]) -> None:
    sim = simulator()
    client = clients(sim.port)
    unknown = 0x0BADBEEF
    assert unknown not in NAMES
    target = IDS["battery.soc_target"]
    client.sock.sendall(make_frame(Command.READ, unknown)
                        + make_frame(Command.WRITE, target, encode_value(DataType.FLOAT, 0.123))
                        + make_frame(Command.READ, IDS["android_description"]))
    first = client.wait_responses(1)[0]
    assert NAMES[first.id] == "android_description"  # answers come in order: nothing came for the first two
    assert (sim.stats.unknown, sim.stats.writes_ignored) == (1, 1)
    assert client.read(["battery.soc_target"])["battery.soc_target"] != pytest.approx(0.123)


def test_a_write_answer_registered_for_a_type_answers_writes_of_that_type_only(
        simulator: Callable[..., SimulatorThread], clients: Callable[[int], Client]) -> None:
    """The hook for the logger and the event table: Simulator.write_answers, by registry type."""
    sim = simulator()
    asked: list[bytes] = []

    def answer(request: Request) -> tuple[bytes, Any]:
        asked.append(request.payload)
        payload = request.payload + struct.pack(">If", 1_700_000_000, 42.5)
        return payload, decode_any(DataType.TIMESERIES, payload)

    sim.simulator.write_answers[DataType.TIMESERIES] = answer
    client = clients(sim.port)
    stamp = struct.pack(">I", 1_700_000_300)
    client.sock.sendall(make_frame(Command.WRITE, IDS["logger.minutes_ubat_log_ts"], stamp)
                        + make_frame(Command.WRITE, IDS["battery.soc_target"], encode_value(DataType.FLOAT, 0.5))
                        + make_frame(Command.READ, IDS["android_description"]))
    first, second = client.wait_responses(2)
    assert (NAMES[first.id], NAMES[second.id]) == ("logger.minutes_ubat_log_ts", "android_description")
    assert asked == [stamp] and first.data == stamp + struct.pack(">If", 1_700_000_000, 42.5)
    assert sim.sent_values("logger.minutes_ubat_log_ts") == [decode_any(DataType.TIMESERIES, first.data)]
    assert sim.stats.writes_ignored == 1  # the FLOAT one


def test_latency_delays_answers_without_serialising_a_pipeline(simulator: Callable[..., SimulatorThread],
                                                               clients: Callable[[int], Client]) -> None:
    latency, count = 0.04, 30
    sim = simulator(latency_ms=latency * 1000)
    client = clients(sim.port)
    single = []
    for _ in range(3):
        start = time.monotonic()
        client.read(["battery.soc"])
        single.append(time.monotonic() - start)
    one = min(single)
    assert one >= latency * 0.9
    names = [s.object_name for s in SERIES[:count]]
    start = time.monotonic()
    client.read(names)
    pipelined = time.monotonic() - start
    assert pipelined < one * count / 3, (pipelined, one)


def test_several_clients_are_answered_concurrently(simulator: Callable[..., SimulatorThread],
                                                   clients: Callable[[int], Client]) -> None:
    sim = simulator()
    first, second = clients(sim.port), clients(sim.port)
    first.send_reads(["battery.soc"] * 50)
    second.send_reads(["android_description"] * 50)
    assert {f.id for f in first.wait_responses(50)} == {IDS["battery.soc"]}
    assert {f.id for f in second.wait_responses(50)} == {IDS["android_description"]}
    assert sim.stats.connections == 2 and sim.stats.mirrored == 0


# --- faults -------------------------------------------------------------------------------------------------------

def request_many(client: Client, sim: SimulatorThread, names: Sequence[str], count: int) -> None:
    """Send `count` reads cycling through `names` and wait until the simulator has taken them all in."""
    client.send_reads([names[i % len(names)] for i in range(count)])
    wait_for(lambda: sim.stats.requests >= count, 10, 0.01, "the simulator to receive every request")


def test_drop_rate_is_honoured(simulator: Callable[..., SimulatorThread], clients: Callable[[int], Client]) -> None:
    sim = simulator(drop_rate=0.2, seed=1)
    client = clients(sim.port)
    request_many(client, sim, ["battery.soc", "g_sync.p_ac_load_sum_lp"], 2000)
    stats = sim.stats
    assert 0.16 < stats.dropped / 2000 < 0.24
    assert stats.answered == 2000 - stats.dropped
    client.wait_responses(stats.answered)


def test_corrupted_answers_are_never_valid_frames_with_other_values(
        simulator: Callable[..., SimulatorThread], clients: Callable[[int], Client]) -> None:
    sim = simulator(corrupt_rate=0.1, seed=2)
    client = clients(sim.port)
    names = [s.object_name for s in SERIES if s.data_type == DataType.FLOAT][:40]
    request_many(client, sim, names, 2000)
    client.sync()
    stats = sim.stats
    assert 0.07 < stats.corrupted / stats.answered < 0.13
    answers = [f for f in client.responses() if NAMES[f.id] in names]
    assert 2000 - stats.corrupted - 3 <= len(answers) <= 2000
    for frame in answers:  # what a client decodes was sent intact; corrupted answers are recorded apart
        assert value_of(frame) in sim.sent_values(frame.id)
    assert sum(len(sim.corrupted_values(name)) for name in names + ["android_description"]) == stats.corrupted


def test_noise_is_interleaved_and_answers_still_arrive(simulator: Callable[..., SimulatorThread],
                                                       clients: Callable[[int], Client]) -> None:
    sim = simulator(noise_rate=0.3, seed=3)
    client, bystander = clients(sim.port), clients(sim.port)
    # copies go only to clients the simulator has accepted; under load that can lag behind our connect()
    wait_for(lambda: sim.stats.connections >= 2, 10, message="both clients accepted")
    asked = ["battery.soc", "android_description"]
    request_many(client, sim, asked, 1000)
    client.sync()
    stats = sim.stats
    assert 0.25 < stats.noise / 1000 < 0.35
    responses = client.responses()
    assert sum(1 for f in responses if NAMES[f.id] in asked) >= 1001
    unsolicited = [f for f in responses if NAMES[f.id] not in asked]
    assert unsolicited and all(value_of(f) in sim.sent_values(f.id) for f in responses)
    raw = bytes(client.raw)
    assert b"AT+\r" in raw and b"\x2b\x3c\xe1" in raw and b"\x2d\x2b" in raw
    assert any(f.command == Command.READ for f in client.frames)  # echoed requests
    # The bridge copies answers to every other connected client.
    wait_for(lambda: bystander.receive_once(5) and len(bystander.responses()) >= 100, 10, 0,
             "copies at the bystander")
    assert sim.stats.mirrored > 0


def test_a_seed_makes_faults_reproducible(simulator: Callable[..., SimulatorThread],
                                          clients: Callable[[int], Client]) -> None:
    def run(seed: int) -> tuple[int, int, int]:
        sim = simulator(drop_rate=0.2, corrupt_rate=0.2, noise_rate=0.2, seed=seed)
        request_many(clients(sim.port), sim, ["android_description", "battery.soc"], 300)
        stats = sim.stats
        return stats.dropped, stats.corrupted, stats.noise

    first = run(11)
    assert run(11) == first
    assert run(12) != first


def test_disconnect_every_closes_each_connection(simulator: Callable[..., SimulatorThread],
                                                 clients: Callable[[int], Client]) -> None:
    sim = simulator(disconnect_every=0.3)
    for attempt in (1, 2):
        client = clients(sim.port)
        start = time.monotonic()
        assert client.read(["android_description"])
        while client.receive_once(10):
            pass
        assert time.monotonic() - start >= 0.25
        counted = functools.partial(lambda n: sim.stats.disconnects == n, attempt)
        wait_for(counted, 5, 0.01, "the disconnect to be counted")
    assert sim.stats.connections == 2


def test_offline_refuses_connections_until_online_again(simulator: Callable[..., SimulatorThread],
                                                        clients: Callable[[int], Client]) -> None:
    sim = simulator()
    port = sim.port
    client = clients(port)
    client.read(["android_description"])
    sim.set_online(False)
    try:
        assert not client.receive_once(5)
    except ConnectionResetError:
        pass
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    sim.set_online(True)
    assert sim.port == port
    assert clients(port).read(["android_description"])["android_description"] == "rctmon simulator"


# --- speed and the command line -------------------------------------------------------------------------------------

def test_throughput_at_zero_latency(simulator: Callable[..., SimulatorThread]) -> None:
    """The perf work needs over 2000 readings/s through the daemon; the simulator must be far faster than that."""
    sim = simulator()
    frames = [make_frame(Command.READ, s.object_id) for s in SERIES]
    total, window = 20000, 200
    with socket.create_connection(("127.0.0.1", sim.port), timeout=10) as sock:
        start = time.monotonic()
        sent = received = 0
        tail = b""
        sock.sendall(b"".join(frames[i % len(frames)] for i in range(window)))
        sent = window
        while received < total:
            data = tail + sock.recv(65536)
            assert data != tail, "connection closed"
            answers = data.count(b"\x00+")  # "+" is escaped inside frames: each answer starts exactly so
            received += answers
            tail = data[-1:]
            more = min(answers, total - sent)
            if more:
                sock.sendall(b"".join(frames[(sent + i) % len(frames)] for i in range(more)))
                sent += more
        rate = total / (time.monotonic() - start)
    print(f"simulator throughput: {rate:.0f} answers/s")
    assert rate > 2000


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_cli_prints_its_port_and_stops_cleanly(signum: int) -> None:
    command = rctmon_command("simulator", "--port", "0", "--battery-modules", "1", "--name", "CLI")
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            assert ready, "no output from the simulator"
            line = proc.stdout.readline().decode()
            match = re.fullmatch(r"rctmon simulator listening on 127\.0\.0\.1:(\d+)\n", line)
            assert match, line
            client = Client(int(match.group(1)))
            try:
                values = client.read(["android_description", "battery.stack_software_version[1]"])
            finally:
                client.close()
            assert values == {"android_description": "CLI", "battery.stack_software_version[1]": 0}
            proc.send_signal(signum)
            assert proc.wait(15) == 0
        finally:
            stop_process(proc)


def test_options_from_the_command_line() -> None:
    from rctmon.cli import build_parser
    from rctmon.simulator import options_from_args

    args = build_parser().parse_args(["simulator", "--port", "0", "--name", "Roof", "--generators", "1",
                                      "--battery-modules", "0", "--no-power-switch", "--latency-ms", "60",
                                      "--drop-rate", "0.1", "--corrupt-rate", "0.05", "--noise-rate", "0.2",
                                      "--disconnect-every", "10", "--seed", "4", "--external-generator"])
    assert options_from_args(args) == SimulatorOptions(
        port=0, name="Roof", generators=1, battery_modules=0, power_switch=False, external_generator=True,
        latency_ms=60.0, drop_rate=0.1, corrupt_rate=0.05, noise_rate=0.2, disconnect_every=10.0, seed=4)
    assert options_from_args(build_parser().parse_args(["simulator"])) == SimulatorOptions(port=8899)
    with pytest.raises(SystemExit) as exited:
        options_from_args(build_parser().parse_args(["simulator", "--drop-rate", "1.5"]))
    assert exited.value.code == 2
