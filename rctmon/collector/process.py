"""The collector process: keep one connection to the inverter, discover its inventory, poll it, report readings.

`Collector` is the long-running logic and knows nothing about processes: it reports through a `Sink`.
`CollectorJob` is what the collector child runs in the loop every child shares (rctmon.child): the collector as its
background work, reporting to the supervisor's channel; heartbeats, Stop and the supervisor going away are the
loop's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any, Protocol
from collections.abc import Awaitable, Sequence

from rctmon.catalog import OBJECTS, Tier, enabled_series
from rctmon.child import ChildContext, Job
from rctmon.collector.backfill import Backfill
from rctmon.collector.connection import (QUERYABLE, RECONNECT_WAIT_INITIAL, RECONNECT_WAIT_MAX, InverterConnection,
                                         LinkDown, Silence, describe, open_connection, reconnect_policy)
from rctmon.collector.discovery import INVENTORY_IDS, discover
from rctmon.collector.events import EventWatch
from rctmon.collector.framer import INVALID, Decoder, Frame
from rctmon.collector.scheduler import Poller, TierClock, Window, ids_by_tier
from rctmon.config import Config
from rctmon.exporters.spool import spool_path
from rctmon.inventory import Inventory
from rctmon.health_metrics import CHANNEL_FULL
from rctmon.messages import (BackfillBatch, CollectorStats, DeviceStatus, InverterEvents, Reading, ReadingBatch,
                             Stats)
from rctmon.statedir import record_path

log = logging.getLogger("rctmon.collector")

#: Readings wait at most this long for the rest of their burst before they are sent as one batch.
FLUSH_DELAY = 0.15
#: Every object whose answers the collector decodes: catalog series and inventory objects.
TRACKED_IDS: frozenset[int] = frozenset(OBJECTS) | frozenset(INVENTORY_IDS)


class Sink(Protocol):
    """Where the collector reports to (the supervisor's channel, or a test)."""

    def status(self, up: bool, reason: str) -> None: ...

    def inventory(self, inventory: Inventory) -> None: ...

    def readings(self, readings: tuple[Reading, ...]) -> None: ...

    def inverter_events(self, events: InverterEvents) -> None: ...


class Collector:
    """Connect, discover, poll by tier, batch readings; reconnect with backoff whenever the connection fails."""

    def __init__(self, config: Config, sink: Sink, stats: CollectorStats | None = None,
                 reconnect_wait: tuple[float, float] = (RECONNECT_WAIT_INITIAL, RECONNECT_WAIT_MAX),
                 backfill: Backfill | None = None) -> None:
        """`backfill` fills holes in the record from the inverter's logger (rctmon/collector/backfill.py)."""
        self._device = config.device
        self.backfill = backfill
        self._reconnect_wait = reconnect_wait
        self._sink = sink
        self.stats = stats if stats is not None else CollectorStats()
        self._window = Window(self._device.max_in_flight)  # kept across reconnects: it describes the peer
        self._decoder = Decoder(self.stats.decode_errors)
        self.inventory: Inventory | None = None
        self._tiers: dict[Tier, tuple[int, ...]] = {}
        self._pending: list[Reading] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._up: bool | None = None
        self._answered = False
        self.events = EventWatch(config, self._hand_on_events)

    @property
    def address(self) -> str:
        return f"{self._device.host}:{self._device.port}"

    async def run(self) -> None:
        """Run until cancelled. A session that got answers reconnects at once; failures back off (tenacity)."""
        while True:
            await reconnect_policy(*self._reconnect_wait)(self._session)

    async def _session(self) -> None:
        """One connection, from connect to loss. Return if the inverter answered on it, else raise why not."""
        device = self._device
        try:
            connection = await open_connection(device.host, device.port, device.connect_timeout, self.stats)
        except LinkDown as exc:
            self._set_up(False, str(exc))
            raise
        log.info("connected to %s", self.address)
        self._answered = False
        assert connection.link is not None
        poller = Poller(connection.link, self._window, self.stats, device.request_timeout, on_idle=self.flush)
        connection.on_frames = lambda frames, ns: self._on_frames(poller, frames, ns)
        ready = asyncio.Event()
        tasks = [asyncio.ensure_future(self._inventory_loop(poller, ready)),
                 asyncio.ensure_future(self._poll_loop(poller, ready)),
                 asyncio.ensure_future(self._watchdog(poller)),
                 asyncio.ensure_future(self.events.watch(poller, ready, lambda: self.inventory))]
        if self.backfill is not None:
            self.backfill.connected(self.stats.last_reading_ns)  # the hole, declared before this connection's readings
            tasks.append(asyncio.ensure_future(self._backfill_loop(self.backfill, poller, ready)))
        try:
            waiters: list[asyncio.Future[Any]] = [*tasks, connection.closed]
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            reason = self._why_ended(done, connection)
        finally:
            for task in tasks:
                task.cancel()
            connection.close()
            poller.close()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.flush()
        self._set_up(False, describe(reason))
        if not self._answered:
            raise reason

    @staticmethod
    def _why_ended(done: set[asyncio.Future[Any]], connection: InverterConnection) -> LinkDown:
        for future in done:
            if future is connection.closed:
                result = future.result()
                assert isinstance(result, LinkDown)
                return result
            exc = future.exception()
            if isinstance(exc, LinkDown):
                return exc
            if exc is not None:
                raise exc  # a bug: let the process die and the supervisor restart it
        raise RuntimeError("a collector task ended without a reason")

    def _on_frames(self, poller: Poller, frames: list[Frame], arrived_ns: int) -> None:
        """Decode answers for tracked objects (wherever they came from: the bridge copies the app's answers too)."""
        now = asyncio.get_running_loop().time()
        poller.heard()
        if not self._answered:
            self._answered = True
            self._set_up(True, f"connected to {self.address}")
        pending = self._pending
        decode = self._decoder.decode
        readings = 0
        for object_id, payload in frames:
            if object_id not in TRACKED_IDS:
                if object_id in QUERYABLE:
                    poller.resolve_query(object_id, payload, now)  # the backfill's or the event watch's
                continue
            value = decode(object_id, payload)
            if value is not INVALID and object_id in OBJECTS:
                pending.append((object_id, value, arrived_ns))  # type: ignore[arg-type]
                readings += 1
            poller.resolve(object_id, value, now)  # may flush when this answer completes a burst
        if readings:
            self.stats.readings += readings
            self.stats.last_reading_ns = arrived_ns
        if self._pending and self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(FLUSH_DELAY, self.flush)

    def _hand_on_events(self, events: InverterEvents) -> None:
        self.flush()  # readings taken before the events go first
        self._sink.inverter_events(events)

    def flush(self) -> None:
        """Send the readings collected so far as one batch."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._pending:
            batch = tuple(self._pending)
            self._pending.clear()
            self._sink.readings(batch)

    async def _inventory_loop(self, poller: Poller, ready: asyncio.Event) -> None:
        """Discover the inventory on every new connection, then check it again periodically."""
        intervals = self._device.intervals
        first = True
        while True:
            inventory = await discover(poller)
            self._apply_inventory(inventory, announce=first)
            first = False
            ready.set()
            # an incomplete inventory (an object did not answer) is completed sooner than a full one is re-checked
            await asyncio.sleep(intervals.static if inventory.complete else intervals.medium)

    def _apply_inventory(self, inventory: Inventory, announce: bool) -> None:
        changed = inventory != self.inventory
        self.inventory = inventory
        self.stats.inventory_complete = inventory.complete
        self._tiers = ids_by_tier(enabled_series(inventory))
        if changed:
            log.info("inventory: %s", inventory.summary())
        if changed or announce:
            self._sink.inventory(inventory)

    async def _poll_loop(self, poller: Poller, ready: asyncio.Event) -> None:
        """Ask each tier's objects when the tier is due; the poller paces the requests."""
        await ready.wait()
        loop = asyncio.get_running_loop()
        clock = TierClock(self._device.intervals, loop.time())
        while True:
            for tier in clock.due(loop.time()):
                poller.ask(self._tiers.get(tier, ()))
            await asyncio.sleep(max(0.0, clock.next_due() - loop.time()))

    async def _backfill_loop(self, backfill: Backfill, poller: Poller, ready: asyncio.Event) -> None:
        """Fill the record's holes once the inverter's name is known; then wait for the connection's end."""
        await ready.wait()
        assert self.inventory is not None
        await backfill.run(poller, self.inventory)
        await asyncio.get_running_loop().create_future()  # a task that ends would end the session

    async def _watchdog(self, poller: Poller) -> None:
        """Raise Silence when requests have gone unanswered for `silence_timeout` seconds.

        It looks every quarter of the timeout, so silence is found within 1.25 times it: waking every second would
        cost CPU in every idle second between polls, for a timeout of 30 s that is not exact anyway.
        """
        loop = asyncio.get_running_loop()
        limit = self._device.silence_timeout
        while True:
            await asyncio.sleep(limit / 4)
            since = poller.waiting_since
            if since is not None and loop.time() - since > limit:
                raise Silence(f"no answer for {limit:g} s")

    def _set_up(self, up: bool, reason: str) -> None:
        if up == self._up:
            return
        self._up = up
        if up:
            log.info("inverter at %s is answering", self.address)
        else:
            log.warning("inverter at %s is down: %s", self.address, reason)
        self._sink.status(up, reason)


class ChannelSink:
    """Report to the supervisor through the child's channel; count the readings a full channel refuses."""

    def __init__(self, context: ChildContext, stats: CollectorStats) -> None:
        self._context = context
        self._stats = stats
        self._refused = 0

    def _send(self, message: object, readings: int = 0) -> None:
        if self._context.send(message) or self._context.link is None or self._context.link.closed:
            return  # sent, or the supervisor is gone (the child is ending)
        if readings:
            dropped = self._stats.readings_dropped
            dropped[CHANNEL_FULL] = dropped.get(CHANNEL_FULL, 0) + readings
        self._refused += 1
        if self._refused == 1 or self._refused % 1000 == 0:
            log.warning("the supervisor is not reading; %d messages dropped (%d readings)", self._refused,
                        self._stats.readings_dropped.get(CHANNEL_FULL, 0))

    def status(self, up: bool, reason: str) -> None:
        self._send(DeviceStatus(up, reason))

    def inventory(self, inventory: Inventory) -> None:
        self._send(inventory)

    def readings(self, readings: tuple[Reading, ...]) -> None:
        self._send(ReadingBatch(readings), len(readings))

    def backfill(self, batch: BackfillBatch) -> bool:
        """Send what the backfill read; False when the channel refused it (the backfill reads it again later)."""
        return self._context.send(batch)

    def inverter_events(self, events: InverterEvents) -> None:
        self._send(events, len(events.events))  # an event the channel refused counts as a reading dropped


class CollectorJob(Job):
    """The collector child: the collector runs as the job's background work until Stop."""

    def __init__(self, context: ChildContext) -> None:
        super().__init__(context)
        self.counters = CollectorStats()
        config = context.config
        sink = ChannelSink(context, self.counters)
        # the backfill writes only to InfluxDB (Prometheus cannot take the past); its record lives beside the spool
        backfill = (Backfill(config, sink, self.counters, record_path(spool_path(config.influxdb, adopt=False)))
                    if config.history.backfill and config.influxdb.enable else None)
        self.collector = Collector(config, sink, self.counters, backfill=backfill)

    async def start(self) -> Sequence[Awaitable[object]]:
        return (self.collector.run(),)

    def stats(self) -> Stats:
        return {**dataclasses.asdict(self.counters), **self.collector.events.stats()}

    async def stop(self) -> None:
        self.collector.flush()  # readings of a burst cut short still reach the supervisor
        if self.collector.backfill is not None:
            self.collector.backfill.flush()
