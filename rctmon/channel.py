"""A message channel between the supervisor and one child that never blocks either side.

`multiprocessing.Pipe` blocks the sender once the kernel buffer is full, and `multiprocessing.Queue` hides that
behind a feeder thread (which would make forking the supervisor unsafe). A hung child must never stall the
supervisor, and a slow supervisor must never stall the collector, so each side of a `Channel` keeps its own
outgoing buffer and writes only what the socket takes right now. Messages are pickled and length-prefixed.

A fresh pair is made for every child incarnation, so a replacement never inherits a stream a killed child may
have left half-written.
"""

from __future__ import annotations

import errno
import pickle
import socket
import struct

_LENGTH = struct.Struct(">I")
_READ_CHUNK = 1 << 18
DEFAULT_MAX_PENDING = 64 << 20  # bytes waiting to be written before `send` refuses more


class ChannelClosed(EOFError):
    """The other end has gone away."""


class Channel:
    """One end of a socketpair carrying pickled messages."""

    def __init__(self, sock: socket.socket, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._out = bytearray()
        self._in = bytearray()
        self._max_pending = max_pending
        self.closed = False

    @classmethod
    def pair(cls, max_pending: int = DEFAULT_MAX_PENDING) -> tuple[Channel, Channel]:
        """Return two connected ends: (supervisor side, child side)."""
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        return cls(a, max_pending), cls(b, max_pending)

    def fileno(self) -> int:
        return self._sock.fileno()

    @property
    def pending_bytes(self) -> int:
        return len(self._out)

    def send(self, message: object) -> bool:
        """Queue a message and write what the socket takes; return False (message not queued) when full."""
        if self.closed:
            return False
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        if self._out and len(self._out) + len(data) > self._max_pending:
            return False
        self._out += _LENGTH.pack(len(data))
        self._out += data
        self.flush()
        return True

    def flush(self) -> None:
        """Write as much of the outgoing buffer as the socket takes without waiting."""
        while self._out and not self.closed:
            try:
                sent = self._sock.send(self._out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.EBADF):
                    self.closed = True
                    return
                raise
            del self._out[:sent]

    def receive(self) -> list[object]:
        """Return every complete message that has arrived, without waiting; raise ChannelClosed at EOF."""
        eof = False
        while True:
            try:
                chunk = self._sock.recv(_READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in (errno.ECONNRESET, errno.EBADF):
                    eof = True
                    break
                raise
            if not chunk:
                eof = True
                break
            self._in += chunk
            if len(chunk) < _READ_CHUNK:
                break
        messages = self._parse()
        if eof and not messages:
            self.closed = True
            raise ChannelClosed("peer closed the channel")
        return messages

    def _parse(self) -> list[object]:
        messages: list[object] = []
        buf, pos = self._in, 0
        while len(buf) - pos >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buf, pos)
            end = pos + _LENGTH.size + length
            if end > len(buf):
                break
            messages.append(pickle.loads(bytes(buf[pos + _LENGTH.size:end])))
            pos = end
        if pos:
            del buf[:pos]
        return messages

    def close(self) -> None:
        self.closed = True
        try:
            self._sock.close()
        except OSError:
            pass
