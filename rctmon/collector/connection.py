"""One TCP connection to the inverter: read-only by construction, framed, counted.

`ReadOnlyLink` is the only object that ever holds the socket's write function, and its only operation takes object
ids and builds READ frames itself: no caller can hand it a command, a payload or raw bytes, so no bug elsewhere in
rctmon can change a setting of the inverter. Everything received goes through the `Framer`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Callable
from collections.abc import Iterable

from rctclient.frame import make_frame
from rctclient.registry import REGISTRY
from rctclient.types import Command
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


class ReadOnlyLink:
    """Send READ requests for registry objects, and nothing else.

    The frame is built here from the object id alone, and checked to be a READ before it is written.
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
    try:
        _, protocol = await asyncio.wait_for(
            loop.create_connection(lambda: InverterConnection(stats, on_frames), host, port), timeout)
    except asyncio.TimeoutError as exc:
        raise ConnectTimeout(f"no connection within {timeout:g} s") from exc
    except OSError as exc:
        raise LinkDown(describe(exc)) from exc
    stats.connects += 1
    assert isinstance(protocol, InverterConnection)
    return protocol


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
