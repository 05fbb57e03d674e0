"""A connection of the history import's own: the daemon's link, framer and poller, reconnected when it drops.

`rctmon history` talks to the inverter like `rctmon inventory` does (and may run while the daemon does: the
inverter's bridge serves several clients). Logger answers are matched to their queries by the poller; the
inventory objects are decoded so that the import knows the inverter's name (its `inverter` tag). When the connection
drops, queries in flight are asked again on the next one; after `CONNECT_ATTEMPTS` failed connects in a row the
import gives up with the reason.
"""

from __future__ import annotations

import asyncio
import logging

from tenacity import stop_after_attempt

from rctmon.collector.connection import (QUERYABLE, InverterConnection, LinkDown, Silence, describe,
                                         open_connection, reconnect_policy)
from rctmon.collector.discovery import INVENTORY_IDS, NoAnswer, discover
from rctmon.collector.framer import Decoder, Frame
from rctmon.collector.scheduler import Poller, Window
from rctmon.config import Config
from rctmon.inventory import Inventory
from rctmon.messages import CollectorStats

log = logging.getLogger("rctmon.history")

CONNECT_ATTEMPTS = 5
CONNECT_WAIT_INITIAL = 0.5
CONNECT_WAIT_MAX = 8.0
NAME_ROUNDS = 2
_INVENTORY = frozenset(INVENTORY_IDS)


class Unreachable(Exception):
    """The inverter could not be reached, or stopped answering for good; the message says why."""


class Session:
    """One inverter connection at a time, opened on demand; `query` survives reconnects."""

    def __init__(self, config: Config) -> None:
        self._device = config.device
        self.stats = CollectorStats()
        self._decoder = Decoder(self.stats.decode_errors)
        self._window = Window(self._device.max_in_flight)  # kept across reconnects: it describes the peer
        self._connection: InverterConnection | None = None
        self._poller: Poller | None = None
        self._opening: asyncio.Task[Poller] | None = None
        self._watchers: list[asyncio.Task[None]] = []
        self.unmatched = 0  # logger answers that answered none of our queries (another client's, or garbled)
        self.reconnects = 0
        self.inventory: Inventory | None = None
        self._closed = False

    @property
    def address(self) -> str:
        return f"{self._device.host}:{self._device.port}"

    async def open(self) -> Inventory:
        """Connect and discover the inverter's name and identity; return its inventory."""
        poller = await self._current()
        try:
            self.inventory = await discover(poller, name_rounds=NAME_ROUNDS)
        except NoAnswer as exc:
            raise Unreachable(f"connected, but {exc}") from exc
        return self.inventory

    async def query(self, object_id: int, timestamp: int) -> bytes | None:
        """Ask the logger; after a lost connection ask again on the next one."""
        while True:
            poller = await self._current()
            answer = await poller.query(object_id, timestamp)
            if answer is not None or poller is self._poller:
                return answer

    async def _current(self) -> Poller:
        if self._closed:
            raise Unreachable("closed")
        if self._poller is not None:
            return self._poller
        if self._opening is None or self._opening.done():
            self._opening = asyncio.ensure_future(self._connect())
        return await asyncio.shield(self._opening)

    async def _connect(self) -> Poller:
        device = self._device
        # the daemon's policy (exponential wait with jitter), bounded: a command gives up and says why
        policy = reconnect_policy(CONNECT_WAIT_INITIAL, CONNECT_WAIT_MAX)
        policy.stop = stop_after_attempt(CONNECT_ATTEMPTS)
        try:
            connection: InverterConnection = await policy(open_connection, device.host, device.port,
                                                          device.connect_timeout, self.stats)
        except (OSError, asyncio.TimeoutError) as exc:
            raise Unreachable(describe(exc)) from exc
        assert connection.link is not None
        poller = Poller(connection.link, self._window, self.stats, device.request_timeout)
        connection.on_frames = lambda frames, ns: self._on_frames(poller, frames)
        self._connection, self._poller = connection, poller
        self._watchers = [asyncio.ensure_future(self._watch(connection, poller))]
        return poller

    async def _watch(self, connection: InverterConnection, poller: Poller) -> None:
        """Close the connection when it is lost or silent for `silence_timeout`; queries in flight get None."""
        loop = asyncio.get_running_loop()
        limit = self._device.silence_timeout
        reason: LinkDown
        while True:
            try:
                reason = await asyncio.wait_for(asyncio.shield(connection.closed), limit / 4)
                break
            except asyncio.TimeoutError:
                since = poller.waiting_since
                if since is not None and loop.time() - since > limit:
                    reason = Silence(f"no answer for {limit:g} s")
                    break
        if self._poller is poller:
            self._poller = self._connection = None
            self.reconnects += 1
            log.warning("connection to %s lost (%s); reconnecting", self.address, describe(reason))
        connection.close()
        poller.close()

    def _on_frames(self, poller: Poller, frames: list[Frame]) -> None:
        now = asyncio.get_running_loop().time()
        poller.heard()
        for object_id, payload in frames:
            if object_id in QUERYABLE:
                if not poller.resolve_query(object_id, payload, now):
                    self.unmatched += 1
            elif object_id in _INVENTORY:
                poller.resolve(object_id, self._decoder.decode(object_id, payload), now)

    def close(self) -> None:
        self._closed = True
        for task in self._watchers:
            task.cancel()
        if self._opening is not None and not self._opening.done():
            self._opening.cancel()
        if self._poller is not None:
            self._poller.close()
        if self._connection is not None:
            self._connection.close()
        self._poller = self._connection = None
