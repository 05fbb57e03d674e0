"""Nothing is dropped without a count (issue 11): a full disk costs no reading, a refused message is counted.

The influxdb exporter's job runs in this process on a real spool file, made full the way sqlite's own tests do it
(`PRAGMA max_page_count`: SQLITE_FULL as soon as the file must grow): nothing is acknowledged until it can be
stored, so the supervisor's backlog keeps it. The supervisor's side is the real Supervisor's backlog and sending,
driven over real channels.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from rctmon import supervisor as sv
from rctmon.channel import Channel
from rctmon.child import ChildContext
from rctmon.config import Config, InfluxDBConfig
from rctmon.exporters import influxdb
from rctmon.exporters.influxdb import InfluxExporter
from rctmon.inventory import Inventory
from rctmon.messages import Ack, DeviceStatus, ReadingBatch
from rctmon.registry import CHILD_BY_NAME, COLLECTOR
from test_influxdb_exporter import Readings

pytestmark = pytest.mark.timeout(30)
SLICE = 200  # readings per commit slice in these tests (influxdb.MAX_READINGS_PER_COMMIT)
BATCH = 50


class RecordingContext(ChildContext):
    """What the exporter sends, kept for the test instead of going to a supervisor."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__("influxdb", config, loop, None)
        self.sent: list[object] = []

    def send(self, message: object) -> bool:
        self.sent.append(message)
        return True

    def acks(self) -> list[Ack]:
        acks, self.sent = [m for m in self.sent if isinstance(m, Ack)], []
        return acks


@pytest.fixture
def exporter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InfluxExporter]:
    monkeypatch.setattr(influxdb, "MAX_READINGS_PER_COMMIT", SLICE)
    loop = asyncio.new_event_loop()
    config = Config(influxdb=InfluxDBConfig(enable=True, url="http://127.0.0.1:9", spool_path=str(tmp_path / "s")))
    job = InfluxExporter(RecordingContext(config, loop))  # not started: no drain thread, the spool keeps it all
    try:
        yield job
    finally:
        job.spool.close()
        loop.close()


def _db(job: InfluxExporter) -> sqlite3.Connection:
    conn = job.spool._db  # white box: the pragma is per connection
    assert conn is not None
    return conn


def _disk_full(job: InfluxExporter, full: bool) -> None:
    pages = _db(job).execute("PRAGMA page_count").fetchone()[0]
    _db(job).execute(f"PRAGMA max_page_count = {pages if full else 1073741823}")


def test_nothing_is_acknowledged_while_the_disk_is_full_and_nothing_is_lost_or_doubled_after(
        exporter: InfluxExporter) -> None:
    context = exporter.context
    assert isinstance(context, RecordingContext)
    readings = Readings()
    batches = [ReadingBatch(readings.batch(BATCH), seq) for seq in range(1, 21)]
    exporter.receive([Inventory(name="Haus", complete=True), batches[0]])
    assert context.acks() == [Ack(1)]

    _disk_full(exporter, True)
    exporter.receive(batches[1:3])
    assert context.acks() == [] and exporter.spool.store_failure == "the disk is full"
    exporter.receive(batches[3:12])  # past a slice: the newer ones are let go (the supervisor keeps them)
    assert context.acks() == []
    kept = exporter.receiver.forgot_after
    assert kept is not None and 4 <= kept < 12

    _disk_full(exporter, False)
    exporter.receive([batches[12]])  # the next arrival stores what is pending and asks for the rest again
    assert context.acks() == [Ack(kept, resend=True)]
    exporter.receive([batches[13]])  # sent before the supervisor began again: it comes again after the marker
    exporter.receive([Ack(kept)] + batches[kept:14])
    assert context.acks() == [Ack(14)]

    stored = list(exporter.spool.iter_lines())
    assert len(stored) == len(set(stored)) == 14 * BATCH
    stats = exporter.stats()
    assert stats["points_dropped"] == 0 and stats["spool_points"] == 14 * BATCH


def test_the_supervisor_sends_the_backlog_again_after_the_ack_that_asks_for_it(tmp_path: Path) -> None:
    supervisor = sv.Supervisor(Config())
    ours, theirs = Channel.pair()
    try:
        child = supervisor.children["influxdb"] = sv.Child(CHILD_BY_NAME["influxdb"])
        child.incarnation = sv.Incarnation(1, None, ours, 0.0, 0.0)
        collector = sv.Child(COLLECTOR)
        for n in range(1, 6):
            supervisor._on_batch(collector, ReadingBatch(((n, float(n), n),)))
        supervisor._on_ack(child, Ack(2, resend=True))
        ours.flush()
        received = [m.seq if isinstance(m, ReadingBatch) else m for m in _receive_all(theirs)]
        assert received == [1, 2, 3, 4, 5, Ack(2), 3, 4, 5]
        assert [b.seq for b in child.backlog] == [3, 4, 5]
    finally:
        ours.close()
        theirs.close()
        supervisor._close()


def _receive_all(channel: Channel) -> list[object]:
    messages: list[object] = []
    while True:
        got = channel.receive()
        if not got:
            return messages
        messages += got


@pytest.fixture
def stalled_prometheus() -> Iterator[tuple[sv.Supervisor, sv.Child, Channel]]:
    """A real Supervisor with a prometheus child on a real channel (the supervisor's end); the child reads nothing."""
    supervisor = sv.Supervisor(Config())
    ours, theirs = Channel.pair(max_pending=1024)
    try:
        child = supervisor.children["prometheus"] = sv.Child(CHILD_BY_NAME["prometheus"])
        child.incarnation = sv.Incarnation(1, None, ours, 0.0, 0.0)
        yield supervisor, child, ours
    finally:
        ours.close()
        theirs.close()
        supervisor._close()


def _fill(channel: Channel) -> None:
    while channel.send(ReadingBatch(((1, "x" * 100_000, 1),))):  # nobody reads the other end: it fills
        pass


def test_messages_a_full_channel_refuses_are_counted_by_process_and_kind(
        stalled_prometheus: tuple[sv.Supervisor, sv.Child, Channel]) -> None:
    """Issue 11: the supervisor's failed sends of Inventory, DeviceStatus, Health and Stop were not counted."""
    supervisor, child, channel = stalled_prometheus
    dropped = supervisor.health().stats["supervisor"]["messages_dropped"]
    assert dropped == {("prometheus", kind): 0 for kind in ("inventory", "device_status", "health", "stop")}
    _fill(channel)
    supervisor._broadcast(DeviceStatus(up=True))
    supervisor._send_health()
    supervisor._request_stop(child)
    dropped = supervisor.health().stats["supervisor"]["messages_dropped"]
    assert dropped == {("prometheus", "inventory"): 0, ("prometheus", "device_status"): 1,
                       ("prometheus", "health"): 1, ("prometheus", "stop"): 1}


class Novel:
    """A message kind added after MESSAGE_KINDS was written (at module level: channels pickle their messages)."""


def test_a_refused_message_of_a_kind_without_a_label_is_counted_by_its_class_not_a_crash(
        stalled_prometheus: tuple[sv.Supervisor, sv.Child, Channel]) -> None:
    """The supervisor's loop must not die on a KeyError when a message kind added later is refused."""
    supervisor, child, channel = stalled_prometheus
    _fill(channel)
    assert not supervisor._send(child, Novel())
    assert supervisor.health().stats["supervisor"]["messages_dropped"][("prometheus", "Novel")] == 1
