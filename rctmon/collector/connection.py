"""One TCP connection to the inverter: read-only by construction, framed, counted.

`ReadOnlyLink` is the only object that ever holds the socket's write function. It has two operations, and both
build their frames themselves from plain integers: `read` takes object ids and sends READ frames; `query` takes
(object id, timestamp) pairs and sends the one WRITE the protocol forces on a reader, the question to the inverter's
logger or event table (objects whose registry answer type is TIMESERIES or EVENT_TABLE), with a payload that is
nothing but a sane 4-byte timestamp. No caller can hand it a command, a payload or raw bytes, so no bug elsewhere in
rctmon can change a setting of the inverter. Everything received goes through the `Framer`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import time
from typing import Callable
from collections.abc import Iterable, Mapping

from rctclient.frame import make_frame
from rctclient.registry import REGISTRY
from rctclient.types import Command, DataType
from tenacity import AsyncRetrying, before_sleep_log, retry_if_exception_type, wait_exponential, wait_random

from rctmon.collector.framer import RESPONSE_TYPES, Frame, Framer
from rctmon.messages import CollectorStats

log = logging.getLogger("rctmon.collector.connection")
frame_log = logging.getLogger("rctmon.frames")

#: Longest pause between reconnect attempts: an inverter that is off at night is retried this often.
RECONNECT_WAIT_MAX = 60.0
RECONNECT_WAIT_INITIAL = 1.0


class LinkDown(OSError):
    """The connection to the inverter failed or ended; the message says why in a few words."""


class ConnectTimeout(LinkDown):
    """The TCP connect did not complete in time."""


class Silence(LinkDown):
    """The inverter stopped answering while the connection stayed open."""


class ConnectionClosed(LinkDown):
    """The inverter (or something between) closed or reset the connection."""


#: The registry answer types whose objects are asked by writing a timestamp: the logger's time series and the event
#: table. A WRITE to any other object cannot be expressed.
QUERY_TYPES: frozenset[DataType] = frozenset({DataType.TIMESERIES, DataType.EVENT_TABLE})
#: Object ids a query may go to, with their answer type.
QUERYABLE: Mapping[int, DataType] = {oid: t for oid, t in RESPONSE_TYPES.items() if t in QUERY_TYPES}
#: The earliest timestamp a query may carry (2000-01-01 00:00:00 UTC): the inverter's records start there.
EARLIEST_QUERY = 946_684_800
#: How far beyond this machine's clock a query may reach: the inverter's clock is its local wall clock read as UTC,
#: up to 14 hours ahead of the true instant, and a little adrift.
QUERY_AHEAD = 86_400
_TIMESTAMP = struct.Struct(">i")  # the registry's request type of every logger object is INT32


def query_payload(timestamp: int, now: float | None = None) -> bytes:
    """Return the 4-byte payload of a logger query; raise TypeError or ValueError for anything but a sane timestamp.

    The check is on the exact type: a bool, a float, or an IntEnum member is no timestamp, however it compares.
    """
    if type(timestamp) is not int:
        raise TypeError(f"a query timestamp is an int, got {type(timestamp).__name__}")
    latest = int(time.time() if now is None else now) + QUERY_AHEAD
    if not EARLIEST_QUERY <= timestamp <= latest:
        raise ValueError(f"query timestamp {timestamp} is not between 2000-01-01 and one day from now")
    return _TIMESTAMP.pack(timestamp)


class ReadOnlyLink:
    """Send READ requests for registry objects, and logger queries; nothing else.

    Every frame is built here from integers alone and checked to be what it must be before it is written: a READ
    with no payload, or a WRITE of one 4-byte timestamp to an object whose answer type is TIMESERIES or EVENT_TABLE.
    """

    __slots__ = ("_write", "_stats", "_cache")

    def __init__(self, write: Callable[[bytes], None], stats: CollectorStats) -> None:
        self._write = write
        self._stats = stats
        self._cache: dict[int, bytes] = {}

    def _frame(self, object_id: int) -> bytes:
        # checked before the cache: 2509844671.0 == 2509844671 would find a cached frame
        if type(object_id) is not int:  # bool and IntEnum members (a Command!) are refused on purpose
            raise TypeError(f"an object id is an int, got {type(object_id).__name__}")
        frame = self._cache.get(object_id)
        if frame is None:
            if object_id not in RESPONSE_TYPES:
                raise ValueError(f"object id 0x{object_id:08X} is not in the rctclient registry")
            frame = make_frame(Command.READ, object_id)
            if frame[1] != Command.READ:  # the id and checksum may be escaped, the command byte never is
                raise AssertionError("make_frame built something other than a READ")
            self._cache[object_id] = frame
        return frame

    def read(self, object_ids: Iterable[int]) -> int:
        """Send one READ request per object id in a single write; return the number of requests sent."""
        frames = [self._frame(object_id) for object_id in object_ids]
        if not frames:
            return 0
        data = b"".join(frames)
        self._write(data)
        self._stats.frames_sent += len(frames)
        self._stats.bytes_sent += len(data)
        if frame_log.isEnabledFor(logging.DEBUG):
            for frame in frames:
                frame_log.debug("sent READ %s", frame.hex())
        return len(frames)

    @staticmethod
    def check_query(object_id: int, timestamp: int) -> bytes:
        """Return the payload of a logger query; raise TypeError or ValueError if the link would refuse it."""
        if type(object_id) is not int:  # bool and IntEnum members are refused on purpose, as for READ
            raise TypeError(f"an object id is an int, got {type(object_id).__name__}")
        if object_id not in QUERYABLE:
            raise ValueError(f"object 0x{object_id:08X} is not a logger time series or the event table")
        return query_payload(timestamp)

    def _query_frame(self, object_id: int, timestamp: int) -> bytes:
        payload = self.check_query(object_id, timestamp)
        frame = make_frame(Command.WRITE, object_id, payload)
        # The command byte is never escaped; a WRITE frame of a 4-byte payload is 13 bytes before escaping.
        if frame[1] != Command.WRITE or frame[2] != 4 + len(payload) or len(payload) != 4:
            raise AssertionError("make_frame built something other than a logger query")
        return frame

    def query(self, requests: Iterable[tuple[int, int]]) -> int:
        """Send one logger query per (object id, timestamp) in a single write; return the number sent.

        The inverter answers with the entries its logger (or event table) recorded before the timestamp.
        """
        frames = [self._query_frame(object_id, timestamp) for object_id, timestamp in requests]
        if not frames:
            return 0
        data = b"".join(frames)
        self._write(data)
        self._stats.frames_sent += len(frames)
        self._stats.bytes_sent += len(data)
        if frame_log.isEnabledFor(logging.DEBUG):
            for frame in frames:
                frame_log.debug("sent WRITE (logger query) %s", frame.hex())
        return len(frames)


FramesHandler = Callable[[list[Frame], int], None]


def _name(object_id: int) -> str:
    try:
        return REGISTRY.get_by_id(object_id).name
    except KeyError:
        return f"0x{object_id:08X}"


class InverterConnection(asyncio.Protocol):
    """asyncio protocol of the inverter connection: feeds received bytes to the framer, hands on valid answers."""

    def __init__(self, stats: CollectorStats, on_frames: FramesHandler | None = None) -> None:
        self._stats = stats
        self.on_frames = on_frames
        self._framer = Framer(stats.decode_errors)
        self._transport: asyncio.Transport | None = None
        self.link: ReadOnlyLink | None = None
        self.closed: asyncio.Future[LinkDown] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:  # requests are small and latency matters; do not let Nagle hold them back
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.link = ReadOnlyLink(transport.write, self._stats)

    def data_received(self, data: bytes) -> None:
        arrived_ns = time.time_ns()
        self._stats.bytes_received += len(data)
        frames = self._framer.feed(data)
        if not frames:
            return
        self._stats.frames_received += len(frames)
        if frame_log.isEnabledFor(logging.DEBUG):
            for object_id, payload in frames:
                frame_log.debug("received %s = %s", _name(object_id), payload.hex())
        if self.on_frames is not None:
            self.on_frames(frames, arrived_ns)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            reason = describe(exc) if exc is not None else "connection closed by the inverter"
            self.closed.set_result(ConnectionClosed(reason))

    def eof_received(self) -> bool | None:
        return False  # close our side too

    def close(self) -> None:
        """Close the connection at once, dropping anything not yet sent."""
        if self._transport is not None:
            self._transport.abort()
        if not self.closed.done():
            self.closed.set_result(ConnectionClosed("closed by rctmon"))


async def open_connection(host: str, port: int, timeout: float, stats: CollectorStats,
                          on_frames: FramesHandler | None = None) -> InverterConnection:
    """Connect to the inverter; raise LinkDown (an OSError) with a short reason when that fails."""
    loop = asyncio.get_running_loop()
    connecting = asyncio.ensure_future(
        loop.create_connection(lambda: InverterConnection(stats, on_frames), host, port))
    try:
        # not asyncio.wait_for: before Python 3.12 it swallows a cancel that arrives in the same loop pass as the
        # connection (CPython gh-86296), and a cancelled collector would carry on polling
        await asyncio.wait((connecting,), timeout=timeout)
    except asyncio.CancelledError:
        _abandon(connecting)
        raise
    if not connecting.done():
        _abandon(connecting)
        raise ConnectTimeout(f"no connection within {timeout:g} s")
    try:
        _, protocol = connecting.result()
    except OSError as exc:
        raise LinkDown(describe(exc)) from exc
    stats.connects += 1
    assert isinstance(protocol, InverterConnection)
    return protocol


def _abandon(connecting: asyncio.Future[tuple[asyncio.Transport, InverterConnection]]) -> None:
    """Give up a connect: cancel it, or close the connection it made after all."""
    if not connecting.done():
        connecting.cancel()
    elif not connecting.cancelled() and connecting.exception() is None:
        connecting.result()[0].abort()


def describe(exc: BaseException) -> str:
    """Return a short lower-case reason for a connection failure, for logs and DeviceStatus."""
    if isinstance(exc, LinkDown):
        return str(exc)
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        # asyncio words a refused connect as "Connect call failed (...)"; the errno says it plainly
        text = os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc))
        if text:
            return text[0].lower() + text[1:]
    return str(exc) or type(exc).__name__


def reconnect_policy(wait_initial: float = RECONNECT_WAIT_INITIAL,
                     wait_max: float = RECONNECT_WAIT_MAX) -> AsyncRetrying:
    """Return the one retry policy for connecting: on OSError and timeouts, forever, exponential wait with jitter.

    Refused connections, resets and silence are normal for an inverter (it is off at night without a battery);
    waiting longer after each failure keeps rctmon from looping hot while it is away.
    """
    return AsyncRetrying(
        retry=retry_if_exception_type((OSError, asyncio.TimeoutError)),
        wait=wait_exponential(multiplier=wait_initial, max=wait_max) + wait_random(0, wait_initial),
        before_sleep=before_sleep_log(log, logging.INFO),
        reraise=True,
    )
