"""The `influxdb` child process: receive readings, make them durable, acknowledge; a thread writes them out.

    supervisor --ReadingBatch(seq)--> main thread --lines--> spool (sqlite, WAL) --Ack(seq)--> supervisor
                                                              spool --drain thread--> InfluxDB

The main thread never talks to InfluxDB, so a hung, absent or refusing InfluxDB cannot delay an acknowledgement,
and the supervisor's backlog (which holds every batch until its Ack) stays small. An Ack is sent only after the
batch (and every earlier one) is committed to the spool, so a batch is always either in the supervisor's backlog or
in the spool: kill -9 of this process loses nothing, and the supervisor replays unacknowledged batches to the next
incarnation. A batch replayed after being spooled (the Ack was lost with the process) is written twice with the
same series and timestamps, which InfluxDB stores as one point.

Readings that arrive before the inverter's name (the `inverter` tag) is known are held in the spool as raw
readings and become points as soon as an Inventory names the inverter.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from typing import Callable
from collections.abc import Sequence

from rctmon.channel import Channel, ChannelClosed
from rctmon.config import Config
from rctmon.exporters.influxwriter import Drainer, InfluxSender, StatsBox
from rctmon.exporters.lineprotocol import EXPORTED_IDS, LineEncoder, inverter_tag
from rctmon.exporters.spool import Spool, SpoolLocked, spool_path
from rctmon.inventory import Inventory
from rctmon.messages import Ack, DeviceStatus, Heartbeat, ReadingBatch, Started, Stop
from rctmon.proc import HEARTBEAT_INTERVAL, Every, resource_usage

log = logging.getLogger("rctmon.influxdb")

PROCESS = "influxdb"
FINAL_FLUSH = 1.0  # seconds a healthy writer gets on Stop to send what the last flush interval collected
STOP_JOIN = 0.5  # seconds to wait for the drain thread after that (a write in flight is abandoned)
MAX_READINGS_PER_COMMIT = 20000  # a long replay is committed (and acknowledged) in slices


class Receiver:
    """The main thread's work: turn batches into spooled points (or held readings) and track what to ack."""

    def __init__(self, spool: Spool, stats: StatsBox, on_spooled: Callable[[], None] | None = None) -> None:
        """`on_spooled` runs after every commit that added points: the drain thread sleeps until told (it does
        not poll an empty spool)."""
        self.spool = spool
        self.stats = stats
        self._on_spooled = on_spooled
        self.encoder: LineEncoder | None = None
        self.acked = 0  # highest seq made durable
        self._pending: list[ReadingBatch] = []
        self._pending_readings = 0

    def add(self, batch: ReadingBatch) -> None:
        """Queue a batch for the next commit; commit early when a slice is full."""
        self._pending.append(batch)
        self._pending_readings += len(batch.readings)
        if self._pending_readings >= MAX_READINGS_PER_COMMIT:
            self.commit()

    def commit(self) -> int:
        """Make every queued batch durable in one transaction; return the seq that may now be acknowledged."""
        if not self._pending:
            return self.acked
        readings = [r for batch in self._pending for r in batch.readings]
        if self.encoder is not None:
            invalid_before = self.encoder.invalid
            lines = self.encoder.encode_all(readings)
            dropped = self.spool.append(lines)
            self._note_invalid(self.encoder.invalid - invalid_before)
            if lines:
                self._spooled()
        else:
            dropped = self.spool.hold([r for r in readings if r[0] in EXPORTED_IDS])
        self.stats.dropped(dropped)
        self.acked = max(self.acked, max(batch.seq for batch in self._pending))
        self._pending.clear()
        self._pending_readings = 0
        return self.acked

    def inventory(self, inventory: Inventory) -> None:
        """Tag readings with the inverter's name from now on; turn held readings into points."""
        name = inverter_tag(inventory)
        if name is None or (self.encoder is not None and self.encoder.inverter == name):
            return
        self.commit()  # batches received before this message belong to the previous name (or are held)
        if self.encoder is not None:
            log.info("the inverter is now called %r; new points carry inverter=%r", name, name)
        self.encoder = LineEncoder(name)
        encoder = self.encoder
        if self.spool.held_count:
            invalid_before = encoder.invalid
            released = self.spool.release_held(encoder.encode_all)
            self._note_invalid(encoder.invalid - invalid_before)
            self._spooled()
            log.info("%d readings taken before the inverter's name was known are now points (inverter=%r)",
                     released, name)

    def _spooled(self) -> None:
        if self._on_spooled is not None:
            self._on_spooled()

    def _note_invalid(self, count: int) -> None:
        if count:
            # NaN, infinite or absurd values and strings where numbers belong cannot be fields; never silent.
            self.stats.dropped(count)
            log.debug("%d readings with values InfluxDB cannot store were dropped", count)


def _heartbeat(stats: StatsBox, spool: Spool) -> Heartbeat:
    rss, cpu = resource_usage()
    return Heartbeat(process=PROCESS, pid=os.getpid(), rss_bytes=rss, cpu_seconds=cpu,
                     stats=stats.snapshot(spool.count + spool.held_count))


def _handle(messages: Sequence[object], receiver: Receiver) -> bool:
    """Apply received messages in order; return True on Stop."""
    for message in messages:
        if isinstance(message, ReadingBatch):
            receiver.add(message)
        elif isinstance(message, Inventory):
            receiver.inventory(message)
        elif isinstance(message, Stop):
            return True
        elif isinstance(message, DeviceStatus):
            pass  # readings simply stop while the inverter is away; nothing to do here
        else:
            log.debug("ignoring unexpected message %r", type(message).__name__)
    return False


def run(config: Config, channel: Channel) -> None:
    """Run the influxdb exporter until Stop or until the supervisor goes away."""
    settings = config.influxdb
    path = spool_path(settings)
    try:
        spool = Spool(path, settings.spool_max_points)
    except SpoolLocked as exc:
        log.error("%s", exc)  # says who holds it and what to do; no hint about permissions
        raise
    except (OSError, sqlite3.Error) as exc:
        log.error("cannot open the InfluxDB spool %s: %s; check the directory's permissions and free space, or set "
                  "influxdb.spool_path", path, exc)
        raise
    stats = StatsBox()
    drainer = Drainer(spool, lambda: InfluxSender(settings), settings, stats)
    receiver = Receiver(spool, stats, drainer.points_spooled)
    log.info("writing to InfluxDB at %s (bucket %s); spool %s holds %d points", settings.url, settings.bucket,
             path, spool.count + spool.held_count)
    drainer.start()
    channel.send(Started(PROCESS))
    heartbeat = Every(HEARTBEAT_INTERVAL)
    stopping = False
    ack_sent = 0
    try:
        while not stopping:
            if heartbeat.due():
                channel.send(_heartbeat(stats, spool))
            try:
                # Heartbeats are the only timed wake-up of an idle child: the drain thread sleeps until a commit.
                messages = channel.wait(heartbeat.remaining())
            except ChannelClosed:
                receiver.commit()  # nobody is left to ack to; what arrived is durable anyway
                return
            stopping = _handle(messages, receiver)
            # An Ack the full channel refused is sent again with the next one (Acks are cumulative).
            if receiver.commit() > ack_sent and channel.send(Ack(receiver.acked)):
                ack_sent = receiver.acked
            if not drainer.alive and not stopping:
                # Without the thread nothing reaches InfluxDB: exit, and the supervisor starts a fresh child.
                raise RuntimeError("the InfluxDB drain thread has died (see above)")
        if drainer.healthy and spool.count:
            drainer.wait_drained(FINAL_FLUSH)
        channel.send(_heartbeat(stats, spool))
        channel.flush()
    finally:
        if drainer.stop(STOP_JOIN):
            spool.close()  # otherwise the thread may still use it; the process is about to end anyway
        log.info("stopped; %d points stay in the spool", spool.count + spool.held_count)


__all__ = ["run", "Receiver"]
