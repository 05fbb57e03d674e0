"""The influxdb exporter child: readings -> spool -> a real write API (victoria-metrics) or a scripted fake.

The child runs in a forked process exactly as the supervisor runs it (become_child, then run_child),
driven through a Channel pair by a stand-in supervisor that keeps unacknowledged batches and replays them, so
"nothing lost" is checked end to end. Only the answers victoria-metrics never gives (401, 404, 400, 429, a hung
server) come from a small fake HTTP server.
"""

from __future__ import annotations

import http.server
import logging
import multiprocessing
import os
import re
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable
from collections.abc import Iterator

import pytest

from rctmon.catalog import SERIES_BY_NAME, Series
from rctmon.channel import Channel, ChannelClosed
from rctmon.config import Config, InfluxDBConfig
from rctmon.exporters import influxwriter, lineprotocol
from rctmon.exporters.influxwriter import Drainer, InfluxSender, InfluxStats, StatsBox
from rctmon.exporters.spool import Spool
from rctmon.inventory import Inventory
from rctmon.messages import Ack, Heartbeat, Reading, ReadingBatch, Started, Stop
from support import wait_messages
from support import REPO, wait_for
from vmserver import VictoriaMetrics, victoria, wait_until_down  # noqa: F401 - victoria is a fixture

INVERTER = "Haus Süd, WR=1"
TOKEN_SECRET = "s3cr3t-never-logged"
#: One series of each shape: float, scaled magnitude, enum, integer, string, and every kind of tag.
SAMPLE_SERIES: tuple[str, ...] = (
    "g_sync.p_ac_grid_sum_lp",  # grid power, float
    "energy.e_grid_feed_total",  # Wh, negative from the inverter -> positive J
    "prim_sm.state",  # enum -> integer
    "battery.cycles",  # int32 -> integer
    "android_description",  # string
    "dc_conv.dc_conv_struct[1].p_dc_lp",  # generator=b
    "g_sync.u_l_rms[2]",  # phase=3
    "battery.stack_cycles[2]",  # module=2, integer
    "db.core_temp",  # sensor=core
    "fault[1].flt",  # word=1
)


# --- readings ---------------------------------------------------------------------------------------------------


def raw_value(series: Series, n: int) -> Any:
    kind = lineprotocol.field_type(series)
    if kind is lineprotocol.FieldType.STRING:
        return f"text {n}"
    if kind is lineprotocol.FieldType.INTEGER:
        return n % 1000
    value = (n % 50) * 1.5  # within every unit's sane range (a core at 150 degC is no reading)
    return -value if series.row.magnitude else value


class Readings:
    """Makes batches of readings with distinct millisecond timestamps (victoria-metrics keeps milliseconds)."""

    def __init__(self) -> None:
        self.n = 0
        self.base_ns = (time.time_ns() // 1_000_000 - 600_000) * 1_000_000  # ten minutes ago, on a ms boundary

    def batch(self, count: int = len(SAMPLE_SERIES)) -> tuple[Reading, ...]:
        readings = []
        for _ in range(count):
            series = SERIES_BY_NAME[SAMPLE_SERIES[self.n % len(SAMPLE_SERIES)]]
            # sub-millisecond digits show that the original timestamp, not the write time, is stored
            readings.append((series.object_id, raw_value(series, self.n), self.base_ns + self.n * 1_000_000 + 789))
            self.n += 1
        return tuple(readings)


def expected_sample(reading: Reading, inverter: str = INVERTER) -> tuple[str, tuple[tuple[str, str], ...], int]:
    """Return (victoria-metrics series name, labels, ms timestamp) the documented schema gives a reading."""
    object_id, _, ts = reading
    series = next(s for s in SERIES_BY_NAME.values() if s.object_id == object_id)
    labels = tuple(sorted((("inverter", inverter),) + series.labels))
    return f"{series.row.measurement}_{series.row.field}", labels, ts // 1_000_000


def stored(server: VictoriaMetrics) -> set[tuple[str, tuple[tuple[str, str], ...], int]]:
    return {(name, labels, ts) for name, labels, ts, _ in server.export()}


# --- the child under test and a stand-in supervisor ---------------------------------------------------------------


def _child_main(config: Config, channel: Channel, parent_fd: int, log_path: str, overrides: dict[str, Any]) -> None:
    from rctmon.child import run_child
    from rctmon.proc import become_child
    from rctmon.registry import CHILD_BY_NAME

    os.close(parent_fd)  # else the child would never see the supervisor's end close
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    from rctmon.exporters import influxdb

    for name, value in overrides.items():  # "NAME": of influxwriter; "influxdb.NAME": of the exporter module
        module, _, attribute = name.rpartition(".")
        setattr(influxdb if module else influxwriter, attribute, value)
    become_child("influxdb")
    run_child(CHILD_BY_NAME["influxdb"], config, channel)


@dataclass
class Child:
    """A forked influxdb child plus what a supervisor keeps for it: the unacknowledged batches."""

    config: Config
    log_path: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    channel: Channel | None = None
    process: multiprocessing.process.BaseProcess | None = None
    acked: int = 0
    heartbeats: list[Heartbeat] = field(default_factory=list)
    started: bool = False
    backlog: dict[int, ReadingBatch] = field(default_factory=dict)
    seq: int = 0
    sent_at: dict[int, float] = field(default_factory=dict)
    max_ack_lag: float = 0.0

    def start(self, inventory: Inventory | None = None) -> Child:
        ours, theirs = Channel.pair()
        context = multiprocessing.get_context("fork")
        self.process = context.Process(target=_child_main, name="test-influxdb",
                                       args=(self.config, theirs, ours.fileno(), str(self.log_path), self.overrides))
        self.process.start()
        theirs.close()
        self.channel, self.started = ours, False
        wait_for(lambda: self.pump() or self.started, 20, message="Started from the influxdb child")
        if inventory is not None:
            self.channel.send(inventory)
        for seq in sorted(self.backlog):  # replay what the previous incarnation had not made durable
            self.channel.send(self.backlog[seq])
        return self

    def send(self, readings: tuple[Reading, ...]) -> int:
        self.seq += 1
        batch = ReadingBatch(readings, self.seq)
        self.backlog[self.seq] = batch
        self.sent_at[self.seq] = time.monotonic()
        assert self.channel is not None and self.channel.send(batch)
        return self.seq

    def pump(self, timeout: float = 0.0) -> bool:
        """Receive what the child sent; return False once its channel closed."""
        assert self.channel is not None
        try:
            messages = wait_messages(self.channel, timeout)
        except ChannelClosed:
            return False
        now = time.monotonic()
        for message in messages:
            if isinstance(message, Ack):
                for seq in [s for s in self.backlog if s <= message.seq]:
                    del self.backlog[seq]
                    self.max_ack_lag = max(self.max_ack_lag, now - self.sent_at.pop(seq))
                self.acked = max(self.acked, message.seq)
            elif isinstance(message, Heartbeat):
                self.heartbeats.append(message)
            elif isinstance(message, Started):
                self.started = True
        return True

    def wait_acked(self, seq: int, timeout: float = 10.0) -> None:
        wait_for(lambda: self.pump(0.05) and self.acked >= seq, timeout, interval=0.0, message=f"Ack({seq})")

    @property
    def stats(self) -> InfluxStats:
        return InfluxStats(**self.heartbeats[-1].stats)  # type: ignore[arg-type]

    def stop(self, timeout: float = 10.0) -> float:
        """Send Stop; return how long the child took to exit."""
        assert self.channel is not None and self.process is not None
        began = time.monotonic()
        self.channel.send(Stop())
        while self.process.is_alive() and time.monotonic() - began < timeout:
            self.pump(0.05)
        self.process.join(timeout)
        self.pump()
        return time.monotonic() - began

    def kill9(self) -> None:
        assert self.process is not None
        assert self.process.pid is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.join(10)

    def cleanup(self) -> None:
        if self.process is not None and self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        if self.channel is not None:
            self.channel.close()

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8") if self.log_path.exists() else ""


@pytest.fixture
def make_child(tmp_path: Path) -> Iterator[Callable[..., Child]]:
    """Build influxdb children on one spool; every one is killed after the test whatever happens."""
    children: list[Child] = []

    def make(url: str, overrides: dict[str, Any] | None = None, **influx: Any) -> Child:
        settings = InfluxDBConfig(enable=True, url=url, token=f"rctmon:{TOKEN_SECRET}", org="rct", bucket="rct",
                                  flush_interval=0.2, timeout=5.0, spool_path=str(tmp_path / "spool.sqlite"))
        config = Config(influxdb=replace(settings, **influx))
        child = Child(config, tmp_path / f"influxdb-{len(children)}.log", dict(overrides or {}))
        children.append(child)
        return child

    try:
        yield make
    finally:
        for child in children:
            child.cleanup()


# --- a fake InfluxDB for the answers victoria-metrics never gives ------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    hang: bool = False


class FakeInflux:
    """An HTTP server on loopback answering writes from a script (then 204), recording what it accepted."""

    def __init__(self, script: list[Answer], reject: Callable[[bytes], bool] | None = None) -> None:
        self.script = list(script)
        self.reject = reject  # a line for which this is true makes the request a 400
        self.requests: list[tuple[float, int, bytes]] = []  # (monotonic time, status answered, body)
        self.accepted: list[bytes] = []
        self.release = threading.Event()
        self.lock = threading.Lock()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                answer = fake.answer_for(body)
                if answer.hang:
                    fake.release.wait(60)
                    return
                payload = answer.body.encode()
                self.send_response(answer.status)
                for key, value in answer.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer_for(self, body: bytes) -> Answer:
        with self.lock:
            if self.script:
                answer = self.script.pop(0)
            elif self.reject is not None and any(self.reject(line) for line in body.split(b"\n")):
                answer = Answer(400, {"Content-Type": "application/json"},
                                '{"code":"invalid","message":"unable to parse line"}')
            else:
                answer = Answer(204)
            self.requests.append((time.monotonic(), answer.status, body))
            if answer.status == 204:
                self.accepted.extend(body.split(b"\n"))
        return answer

    def __enter__(self) -> FakeInflux:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def json_error(status: int, message: str) -> Answer:
    return Answer(status, {"Content-Type": "application/json"}, f'{{"code":"x","message":"{message}"}}')


# --- line protocol and the documented schema -----------------------------------------------------------------------


def test_lines_carry_measurement_tags_typed_field_and_the_reading_timestamp() -> None:
    encoder = lineprotocol.LineEncoder("Haus Süd, WR=1")
    name = SERIES_BY_NAME

    def encode(reading: Any) -> bytes:
        (line,) = encoder.encode(reading)  # a reading of one value is one line
        return line

    assert encode((name["g_sync.u_l_rms[2]"].object_id, 231.5, 17)) == (
        "grid_phase,inverter=Haus\\ Süd\\,\\ WR\\=1,phase=3 voltage=231.5 17".encode())
    assert encode((name["prim_sm.state"].object_id, 4, 18)).endswith(b" state=4i 18")
    assert encode((name["energy.e_grid_feed_total"].object_id, -2, 19)).endswith(b" feed_energy_total=7200.0 19")
    assert encode((name["android_description"].object_id, 'a "b" \\c\nd', 20)).endswith(
        b' name="a \\"b\\" \\\\c d" 20')
    assert encode((name["battery.stack_cycles[2]"].object_id, 12, 21)) == (
        "battery_module,inverter=Haus\\ Süd\\,\\ WR\\=1,module=2 cycles=12i 21".encode())


def test_values_that_cannot_be_fields_are_dropped_and_counted() -> None:
    encoder = lineprotocol.LineEncoder("x")
    power = SERIES_BY_NAME["g_sync.p_ac_grid_sum_lp"].object_id
    state = SERIES_BY_NAME["prim_sm.state"].object_id
    readings: list[Any] = [(power, float("nan"), 1), (power, float("inf"), 2), (power, 1e300, 3), (power, "x", 4),
                           (state, 2.5, 5), (state, None, 6), (power, 7, 7), (999999, 1, 8)]
    lines = encoder.encode_all(readings)
    assert lines == [b"grid,inverter=x power=7.0 7"]
    assert encoder.invalid == 6 and encoder.unknown == 1


def test_inverter_tag_falls_back_to_serial_then_unknown_once_the_inventory_is_complete() -> None:
    assert lineprotocol.inverter_tag(Inventory(name="PS 6.0")) == "PS 6.0"
    assert lineprotocol.inverter_tag(Inventory(name="", serial="123", complete=False)) is None
    assert lineprotocol.inverter_tag(Inventory(name="", serial="123", complete=True)) == "123"
    assert lineprotocol.inverter_tag(Inventory(complete=True)) == lineprotocol.FALLBACK_INVERTER


def test_every_field_keeps_one_type() -> None:
    """InfluxDB refuses a point whose field type differs from the one already stored."""
    types: dict[tuple[str, str], lineprotocol.FieldType] = {}
    for series in SERIES_BY_NAME.values():
        kind = lineprotocol.field_type(series)
        assert kind is not None, series.object_name
        key = (series.row.measurement, series.row.field)
        assert types.setdefault(key, kind) is kind, key


def test_docs_list_every_measurement_field_and_tag_of_the_catalog() -> None:
    """docs/influxdb.md carries the generated schema table; regenerate with python -m rctmon.exporters.lineprotocol."""
    doc = (Path(REPO) / "docs" / "influxdb.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- schema:begin -->\n(.*?)<!-- schema:end -->", doc, re.S)
    assert match, "docs/influxdb.md lacks the schema markers"
    assert match.group(1) == lineprotocol.schema_markdown()


# --- the child against victoria-metrics --------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_points_arrive_with_the_documented_schema_and_original_timestamps(victoria: VictoriaMetrics,  # noqa: F811
                                                                          make_child: Callable[..., Child]) -> None:
    readings = Readings()
    child = make_child(victoria.url).start()
    early = readings.batch()  # before anyone knows the inverter's name: held, acknowledged, not lost
    child.wait_acked(child.send(early))
    assert child.channel is not None
    child.channel.send(Inventory(name=INVERTER, complete=True))
    later = [readings.batch() for _ in range(5)]
    for batch in later:
        child.send(batch)
    child.wait_acked(child.seq)
    everything = [r for batch in [early, *later] for r in batch]
    expected = {expected_sample(r) for r in everything}
    wait_for(lambda: expected <= stored(victoria), 20, message="every reading in victoria-metrics")
    assert len(stored(victoria)) == len(expected)

    values = {(name, ts): value for name, _, ts, value in victoria.export()}
    feed = SERIES_BY_NAME["energy.e_grid_feed_total"]
    for object_id, raw, ts in everything:
        if object_id == feed.object_id:
            assert values[("grid_feed_energy_total", ts // 1_000_000)] == -raw * 3600  # type: ignore[operator]
        if object_id == SERIES_BY_NAME["prim_sm.state"].object_id:
            assert values[("inverter_state", ts // 1_000_000)] == raw

    assert child.stop() < 2.0
    assert child.process is not None and child.process.exitcode == 0
    assert child.stats.points_written == len(everything) and child.stats.spool_points == 0
    assert child.stats.state == "ok" and child.stats.last_write_timestamp > 0
    assert TOKEN_SECRET not in child.log()


def feed_for(child: Child, readings: Readings, seconds: float, sent: list[Reading],
             check: Callable[[], None] | None = None) -> None:
    """Send a batch every 50 ms for `seconds`, collecting acks; the outage tests' 'collector'."""
    now = time.monotonic()
    deadline, due = now + seconds, now
    while now < deadline:
        if now >= due:
            batch = readings.batch()
            sent.extend(batch)
            child.send(batch)
            due += 0.05
        child.pump(max(0.0, due - now))
        if check is not None:
            check()
        now = time.monotonic()


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_an_outage_of_20_s_loses_nothing_and_acks_never_stop(victoria: VictoriaMetrics,  # noqa: F811
                                                             make_child: Callable[..., Child]) -> None:
    readings, sent = Readings(), []  # type: Readings, List[Reading]
    child = make_child(victoria.url, overrides={"BACKOFF_MAX": 2.0}, batch_size=200).start(
        Inventory(name=INVERTER, complete=True))
    feed_for(child, readings, 2.0, sent)
    victoria.stop()
    wait_until_down(victoria)
    outage_began = len(sent)
    child.max_ack_lag = 0.0

    def acks_keep_coming() -> None:
        assert child.max_ack_lag < 1.0, f"an ack took {child.max_ack_lag:.2f} s during the outage"

    feed_for(child, readings, 21.0, sent, acks_keep_coming)
    during = sent[outage_began:]
    assert child.stats.spool_points > 0 and child.stats.write_errors.get("connection", 0) > 0
    assert child.stats.state == "unreachable"
    victoria.start()
    feed_for(child, readings, 2.0, sent)
    child.wait_acked(child.seq)
    expected = {expected_sample(r) for r in sent}
    wait_for(lambda: expected <= stored(victoria), 30, interval=0.5, message="every reading after the outage")
    assert {expected_sample(r) for r in during} <= stored(victoria)
    assert child.stop() < 2.0
    assert "accepts writes again" in child.log()
    assert child.log().count("cannot write to InfluxDB") == 1  # once per outage, not once per retry


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_kill_9_while_points_wait_for_a_dead_server_loses_nothing(make_child: Callable[..., Child],
                                                                  tmp_path: Path) -> None:
    server = VictoriaMetrics(data_dir=str(tmp_path / "vm"))  # created, not started: the server is down
    inventory = Inventory(name=INVERTER, complete=True)
    try:
        readings, sent = Readings(), []  # type: Readings, List[Reading]
        first = make_child(server.url, overrides={"BACKOFF_MAX": 1.0}).start(inventory)
        feed_for(first, readings, 2.0, sent)
        for _ in range(5):  # some batches are surely not acknowledged at the moment of the kill
            batch = readings.batch()
            sent.extend(batch)
            first.send(batch)
        first.kill9()
        assert first.acked > 0
        unacked = len(first.backlog)

        server.start()
        second = make_child(server.url, overrides={"BACKOFF_MAX": 1.0})
        second.backlog, second.seq, second.sent_at = first.backlog, first.seq, first.sent_at
        second.start(inventory)  # replays the batches the first child had not acknowledged
        second.wait_acked(second.seq)
        expected = {expected_sample(r) for r in sent}
        wait_for(lambda: expected <= stored(server), 30, interval=0.5, message="every reading after the kill")
        assert second.stop() < 2.0
        held = re.search(r"holds (\d+) points", second.log())
        assert held and int(held.group(1)) > 0, "the new child should have found the killed one's points"
        # Replayed batches may have been in the spool already (their Ack died with the child): they are written
        # twice with the same timestamps, which the server stores once.
        assert unacked >= 0
    finally:
        server.close()


# --- answers retrying cannot fix, hung servers, rejected lines ------------------------------------------------


@pytest.mark.timeout(60)
def test_bad_token_then_unknown_bucket_are_logged_once_counted_and_nothing_blocks(
        make_child: Callable[..., Child]) -> None:
    script = [json_error(401, "unauthorized access")] * 3 + [json_error(404, "bucket 'rct' not found")] * 3
    with FakeInflux(script) as fake:
        readings, sent = Readings(), []  # type: Readings, List[Reading]
        child = make_child(fake.url, overrides={"SLOW_RETRY": 0.5}).start(Inventory(name=INVERTER, complete=True))

        def acks_keep_coming() -> None:
            assert child.max_ack_lag < 1.0

        feed_for(child, readings, 2.0, sent, acks_keep_coming)
        wait_for(lambda: child.pump(0.05) is not None and len(fake.requests) >= 7, 20, interval=0,
                 message="401s, 404s and then a 204")
        feed_for(child, readings, 0.5, sent, acks_keep_coming)
        child.wait_acked(child.seq)
        expected = {f"{r[2]}".encode() for r in sent}
        wait_for(lambda: expected <= {line.rsplit(b" ", 1)[-1] for line in fake.accepted}, 20,
                 message="every point accepted in the end")
        # counters travel in heartbeats (every proc.HEARTBEAT_INTERVAL): wait for one sent after the drain
        wait_for(lambda: child.pump(0.1) and child.stats.spool_points == 0 and child.stats.write_errors, 15,
                 interval=0, message="a heartbeat after the drain")
        assert child.stats.write_errors == {"unauthorized": 3, "not_found": 3}
        assert child.stats.state == "ok"
        assert child.stop() < 2.0
    log = child.log()
    assert log.count("HTTP 401") == 1 and "check influxdb.token" in log and "retried every 0 s" not in log
    assert log.count("HTTP 404") == 1 and "create bucket 'rct' in org 'rct'" in log
    assert "points are kept in the spool" in log and "accepts writes again" in log
    assert TOKEN_SECRET not in log


@pytest.mark.timeout(60)
def test_a_hung_server_delays_neither_acks_nor_stop(make_child: Callable[..., Child], tmp_path: Path) -> None:
    with FakeInflux([Answer(204, hang=True)] * 100) as fake:
        readings, sent = Readings(), []  # type: Readings, List[Reading]
        child = make_child(fake.url, timeout=30.0).start(Inventory(name=INVERTER, complete=True))

        def acks_keep_coming() -> None:
            assert child.max_ack_lag < 1.0

        feed_for(child, readings, 3.0, sent, acks_keep_coming)
        child.wait_acked(child.seq)
        assert fake.requests, "the writer should be stuck in a request"
        assert child.stop() < 2.0
    spool = Spool(tmp_path / "spool.sqlite", 10_000_000)
    try:
        assert {line.rsplit(b" ", 1)[-1] for line in spool.iter_lines()} == {f"{r[2]}".encode() for r in sent}
    finally:
        spool.close()


def _broken_sender(settings: InfluxDBConfig) -> Any:
    raise RuntimeError("a bug in the writer")


@pytest.mark.timeout(30)
def test_the_child_exits_with_status_1_when_its_drain_thread_ends(make_child: Callable[..., Child]) -> None:
    child = make_child("http://127.0.0.1:9", overrides={"influxdb.InfluxSender": _broken_sender})
    child.start(Inventory(name=INVERTER, complete=True))
    assert child.process is not None
    child.process.join(10)
    assert child.process.exitcode == 1
    log = child.log()
    assert "a bug in the writer" in log and "the InfluxDB drain thread has ended" in log


def _drainer(tmp_path: Path, url: str, **settings: Any) -> tuple[Spool, StatsBox, Drainer]:
    config = replace(InfluxDBConfig(url=url, token="t", bucket="b", flush_interval=0.05, timeout=5.0), **settings)
    spool = Spool(tmp_path / "spool.sqlite", 1_000_000)
    stats = StatsBox()
    return spool, stats, Drainer(spool, lambda: InfluxSender(config), config, stats)


@pytest.mark.timeout(30)
def test_server_errors_and_429_are_retried_honouring_retry_after(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(influxwriter, "BACKOFF_MULTIPLIER", 0.05)
    monkeypatch.setattr(influxwriter, "BACKOFF_JITTER", 0.05)
    script = [json_error(503, "busy"), Answer(429, {"Retry-After": "1"}), json_error(500, "oops")]
    with FakeInflux(script) as fake:
        spool, stats, drainer = _drainer(tmp_path, fake.url)
        try:
            spool.append([b"m f=1 1", b"m f=2 2"])
            drainer.start()
            # the counters move just after the points leave the spool: wait for them, not for the spool
            wait_for(lambda: stats.snapshot(0).points_written == 2, 20, message="the points written after retries")
            assert spool.count == 0
            times = [t for t, _, _ in fake.requests]
            assert [status for _, status, _ in fake.requests] == [503, 429, 500, 204]
            assert times[2] - times[1] >= 0.95  # Retry-After: 1
            assert times[1] - times[0] < 0.9 and times[3] - times[2] < 0.9  # backoff, not Retry-After
            snapshot = stats.snapshot(spool.count)
            assert snapshot.write_errors == {"server": 2, "rate_limited": 1}
            assert snapshot.points_written == 2 and fake.accepted == [b"m f=1 1", b"m f=2 2"]
        finally:
            drainer.stop(2.0)
            spool.close()


@pytest.mark.timeout(30)
def test_rejected_lines_are_isolated_dropped_and_counted(tmp_path: Path) -> None:
    good = [f"m f={i} {i}".encode() for i in range(1000)]
    bad = {123, 124, 777}
    lines = [b"bad" + line if i in bad else line for i, line in enumerate(good)]
    with FakeInflux([], reject=lambda line: line.startswith(b"bad")) as fake:
        spool, stats, drainer = _drainer(tmp_path, fake.url, batch_size=400)
        try:
            spool.append(lines)
            drainer.start()
            def settled() -> bool:
                snapshot = stats.snapshot(0)
                return snapshot.points_written + snapshot.points_dropped == 1000

            wait_for(settled, 20, message="every line written or dropped")
            assert spool.count == 0
            snapshot = stats.snapshot(0)
            assert snapshot.points_dropped == 3 and snapshot.points_written == 997
            assert set(fake.accepted) == {line for i, line in enumerate(good) if i not in bad}
            assert len(fake.requests) < 60  # bisection, not one request per line
        finally:
            drainer.stop(2.0)
            spool.close()


def _count_peeks(spool: Spool) -> list[float]:
    """Record when the drain thread looks into the spool (monotonic times)."""
    peeks: list[float] = []
    peek = spool.peek

    def counting(limit: int) -> list[tuple[int, bytes]]:
        peeks.append(time.monotonic())
        return peek(limit)

    spool.peek = counting  # type: ignore[method-assign]
    return peeks


@pytest.mark.timeout(30)
def test_the_drainer_sleeps_while_the_spool_is_empty_and_a_commit_wakes_it(tmp_path: Path) -> None:
    """Issue 6: no look into an empty spool on a timer; points that arrive together go out in one request."""
    with FakeInflux([]) as fake:
        spool, stats, drainer = _drainer(tmp_path, fake.url, flush_interval=0.3)
        peeks = _count_peeks(spool)
        try:
            drainer.start()
            time.sleep(1.0)  # three flush intervals
            assert peeks == []
            first = time.monotonic()
            for i in range(3):  # the batches of one poll, 50 ms apart
                spool.append([f"m f={i} {i}".encode()])
                drainer.points_spooled()
                time.sleep(0.05)
            wait_for(lambda: stats.snapshot(0).points_written == 3, 10, message="the three points written")
            assert len(fake.requests) == 1 and fake.requests[0][2] == b"m f=0 0\nm f=1 1\nm f=2 2"
            assert fake.requests[0][0] - first >= 0.25  # the flush interval ran from the first commit
            looked = len(peeks)
            time.sleep(1.0)
            assert len(peeks) == looked, "the drainer woke up with nothing to send"
        finally:
            assert drainer.stop(2.0)
            spool.close()


@pytest.mark.timeout(30)
def test_stop_ends_the_idle_wait_the_flush_interval_and_a_backoff_sleep_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(influxwriter, "BACKOFF_MULTIPLIER", 30.0)
    monkeypatch.setattr(influxwriter, "BACKOFF_JITTER", 0.0)
    for phase in ("idle", "flush interval", "backoff"):
        with FakeInflux([json_error(503, "busy")] * 10) as fake:
            spool, stats, drainer = _drainer(tmp_path, fake.url, flush_interval=30.0 if phase != "backoff" else 0.01)
            try:
                drainer.start()
                if phase != "idle":
                    spool.append([b"m f=1 1"])
                    drainer.points_spooled()
                if phase == "backoff":
                    wait_for(lambda stats=stats: stats.snapshot(0).write_errors.get("server") == 1, 10, message="a 503")
                time.sleep(0.2)
                began = time.monotonic()
                assert drainer.stop(2.0), phase
                assert time.monotonic() - began < 0.5, phase
            finally:
                spool.close()
