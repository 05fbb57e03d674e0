"""A small HTTP/1.1 server for cached answers: one thread, non-blocking sockets, no periodic wake-up.

The endpoint used to run http.server with a thread per connection. A burst of 20 scrapers on fresh connections
then meant 20 thread starts and 20 threads handing the GIL around every socket call, and /metrics p99 went past
10 ms although the answer itself was cached (docs/performance.md, issue 6). Here one thread waits in `select` on
the listening socket, every plain-HTTP connection and a wake-up socketpair:

- A connection costs a file descriptor and a buffer, not a thread: a silent or slow client holds nothing but its
  own descriptor, and only until its deadline. The request head has a size limit and must be complete within
  `client_timeout` of its first byte (or of the connect), so dripping bytes does not extend it either.
- The select timeout is the nearest deadline, or none at all: with no connection open the thread sleeps until a
  client connects or `shutdown()` writes to the wake-up socket. (The old accept loop woke ten times a second to
  look for shutdown, ~1.1 ms CPU per second while idle.)
- The answer comes from a callable that must not block for long (here: the exposition cache); it runs in the loop.

TLS connections keep a thread each, handshake included. A non-blocking handshake and TLS record buffering (data
the SSL object holds that `select` cannot see) would have to be got right for a case that is not the one measured;
a thread per TLS connection is what the endpoint always did, and the loop never waits for a TLS client.
"""

from __future__ import annotations

import email.utils
import enum
import errno
import logging
import re
import selectors
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Callable

log = logging.getLogger("rctmon.prometheus.http")

_TLS_HANDSHAKE = 0x16  # first byte of every TLS connection: a ClientHello record
_RECV_SIZE = 65536
_PIPELINE_BATCH = 16  # requests of one connection answered before the loop turns to the others
_ACCEPT_BACKOFF = 1.0  # seconds without accepting after the process ran out of file descriptors
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token: what a header name may be
_VERSION = re.compile(r"HTTP/(\d)\.(\d)")
_METHODS = ("GET", "HEAD")

PLAIN_HTTP_REFUSED = (b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
                      b"\r\nClient sent an HTTP request to an HTTPS server.\n")


@dataclass(frozen=True)
class Limits:
    """What one client may take of the server; every wait has a deadline, every buffer a bound."""

    #: Seconds a request head may take from its first byte (or from the connect) until complete, and that a write
    #: may wait for the client to take bytes.
    client_timeout: float = 10.0
    #: Seconds a connection may stay idle between requests. Longer than the usual scrape intervals (15-60 s), so a
    #: Prometheus server keeps its connection instead of connecting again for every scrape.
    keepalive_timeout: float = 75.0
    #: Bytes of a request head (request line and headers). Prometheus sends ~300; a browser on the landing page
    #: may send the host's cookies of other services on the same address.
    max_head: int = 32768
    max_headers: int = 100
    #: Open plain-HTTP connections. At the limit the longest-idle keep-alive connection is closed for a new one;
    #: if none is idle, new connections wait in the listen backlog until one closes (at most `client_timeout`).
    max_connections: int = 256
    #: After a response that closes the connection: seconds and bytes to read and discard what the client still
    #: sends. Closing with unread data sends a reset, which can overtake the response (lingering close).
    linger_timeout: float = 2.0
    linger_bytes: int = 262144


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Request:
    """A parsed request head. Header names are lower case; a repeated header keeps its first value."""

    method: str
    target: str
    version: tuple[int, int]
    headers: dict[str, str]
    keep_alive: bool  # whether the connection may carry another request after this one's response

    @property
    def line(self) -> str:
        """Return the request line, for the log."""
        return f"{self.method} {self.target} HTTP/{self.version[0]}.{self.version[1]}"


@dataclass(frozen=True)
class Response:
    """What the application answers; the server adds the status line, framing and connection headers."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


App = Callable[[Request], Response]


class HttpError(Exception):
    """A request the server answers by itself and then closes the connection: malformed, too large, unsupported."""

    def __init__(self, status: HTTPStatus, detail: str) -> None:
        super().__init__(f"{status.value} {status.phrase}: {detail}")
        self.status = status
        self.detail = detail


class RequestReader:
    """Collect a connection's bytes and cut complete request heads off them, within the size limits.

    A request with a body (Content-Length above 0, or Transfer-Encoding) is taken, but marked not keep-alive: a
    GET or HEAD has no use for a body, and closing afterwards is simpler than framing one correctly.
    """

    def __init__(self, max_head: int, max_headers: int) -> None:
        self._buf = bytearray()
        self._scanned = 0  # bytes already searched for the end of the head: a dripping client costs O(n), not O(n^2)
        self._max_head = max_head
        self._max_headers = max_headers

    @property
    def pending(self) -> bool:
        """Return whether bytes of a next request are buffered."""
        return bool(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def take(self) -> Request | None:
        """Return the next complete request, None if its head is incomplete; raise HttpError if it is unacceptable."""
        buf = self._buf
        if self._scanned == 0 and bytes(buf[:1]) in (b"\r", b"\n"):
            # RFC 9112 2.2: empty lines before a request line are to be ignored (some clients end a body with one).
            del buf[:len(buf) - len(buf.lstrip(b"\r\n"))]
        start = max(0, self._scanned - 2)
        found = [(i, i + 3) for i in (buf.find(b"\n\r\n", start),) if i >= 0]
        found += [(i, i + 2) for i in (buf.find(b"\n\n", start),) if i >= 0]
        if not found:
            self._scanned = len(buf)
            if len(buf) > self._max_head:
                raise HttpError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"head over {self._max_head} bytes")
            return None
        end, rest = min(found)
        if end > self._max_head:
            raise HttpError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"head over {self._max_head} bytes")
        head = bytes(buf[:end])
        del buf[:rest]
        self._scanned = 0
        return parse_head(head, self._max_headers)


def parse_head(head: bytes, max_headers: int) -> Request:
    """Return the request a head (without its empty last line) states; raise HttpError when it is malformed."""
    lines = head.decode("latin-1").split("\n")
    parts = lines[0].rstrip("\r").split(" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"bad request line {lines[0][:100]!r}")
    method, target, version_text = parts
    version_match = _VERSION.fullmatch(version_text)
    if version_match is None:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"bad HTTP version {version_text[:20]!r}")
    version = (int(version_match[1]), int(version_match[2]))
    if version[0] != 1:
        raise HttpError(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, f"HTTP/{version[0]}.{version[1]}")
    if len(lines) - 1 > max_headers:
        raise HttpError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"more than {max_headers} headers")
    headers: dict[str, str] = {}
    for raw in lines[1:]:
        line = raw.rstrip("\r")
        name, colon, value = line.partition(":")
        # No folded lines and no space before the colon: both are ways to smuggle a header past a proxy.
        if not colon or not _TOKEN.fullmatch(name):
            raise HttpError(HTTPStatus.BAD_REQUEST, f"bad header line {line[:100]!r}")
        headers.setdefault(name.lower(), value.strip(" \t"))
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    keep_alive = "close" not in tokens if version >= (1, 1) else "keep-alive" in tokens
    length = headers.get("content-length", "0").strip()
    if not length.isdigit():
        raise HttpError(HTTPStatus.BAD_REQUEST, f"bad Content-Length {length[:20]!r}")
    if int(length) > 0 or "transfer-encoding" in headers:
        keep_alive = False
    return Request(method, target, version, headers, keep_alive)


class _Phase(enum.Enum):
    READING = "reading"  # waiting for (the rest of) a request head
    WRITING = "writing"  # a response is queued and not yet taken by the socket
    LINGERING = "lingering"  # the response is out and the write side shut: discarding input until the client closes


class _Connection:
    """One plain-HTTP connection's state in the event loop."""

    __slots__ = ("sock", "peer", "reader", "phase", "idle", "deadline", "events", "out", "sent", "close_after",
                 "discarded")

    def __init__(self, sock: socket.socket, peer: object, limits: Limits, now: float) -> None:
        self.sock = sock
        self.peer = peer
        self.reader = RequestReader(limits.max_head, limits.max_headers)
        self.phase = _Phase.READING
        self.idle = False  # between keep-alive requests, no byte of the next one yet
        self.deadline = now + limits.client_timeout
        self.events = 0  # what the selector watches for; 0 = not registered
        self.out = memoryview(b"")
        self.sent = 0
        self.close_after = False
        self.discarded = 0


_LISTENER = object()
_WAKE = object()


class HttpServer:
    """Serve `app` on a listening socket bound elsewhere: plain HTTP from one event loop, TLS from a thread each.

    `serve_forever()` runs the loop in the calling thread until `shutdown()` is called from another one.
    """

    def __init__(self, listen_socket: socket.socket, app: App, tls: ssl.SSLContext | None = None,
                 server_name: str = "rctmon", limits: Limits = DEFAULT_LIMITS) -> None:
        self.socket = listen_socket
        self.tls = tls
        self.limits = limits
        self._app = app
        self._server_name = server_name
        # Non-blocking accept: a client that resets between select() and accept() must not stall the loop.
        listen_socket.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._connections: dict[int, _Connection] = {}
        self._listening = False
        self._resume_accept_at: float | None = None  # after running out of file descriptors
        self._lock = threading.Lock()
        self._shutdown_requested = False
        self._serving = False
        self._done = threading.Event()
        self._date = (0, "")

    # --- life cycle -------------------------------------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Serve until `shutdown()`; close every open plain-HTTP connection before returning."""
        with self._lock:
            if self._shutdown_requested:
                return
            self._serving = True
        try:
            self._selector.register(self._wake_r, selectors.EVENT_READ, _WAKE)
            self._listen(True)
            while self._step():
                pass
        finally:
            for connection in list(self._connections.values()):
                self._close(connection)
            self._listen(False)
            self._selector.unregister(self._wake_r)
            self._done.set()

    def shutdown(self, timeout: float | None = None) -> None:
        """Make `serve_forever()` return, and wait until it has (unless it never ran)."""
        with self._lock:
            self._shutdown_requested = True
            serving = self._serving
        try:
            self._wake_w.send(b"x")
        except OSError:  # full or closed: a wake-up is pending or nobody is listening
            pass
        if serving:
            self._done.wait(timeout)

    def server_close(self) -> None:
        """Close the listening socket (this process's copy of it), the selector and the wake-up sockets."""
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
        self.socket.close()

    # --- the event loop ---------------------------------------------------------------------------------------------

    def _step(self) -> bool:
        """Wait for the next events or deadline and handle them; return False when shutdown was asked for."""
        for key, mask in self._selector.select(self._timeout()):
            if key.data is _WAKE:
                return False
            if key.data is _LISTENER:
                self._accept()
                continue
            connection: _Connection = key.data
            if connection.sock.fileno() < 0:  # closed earlier in this round (evicted)
                continue
            if connection.phase is _Phase.LINGERING:
                self._guarded(connection, self._discard)
            elif mask & selectors.EVENT_WRITE:
                self._guarded(connection, self._advance)
            else:
                self._guarded(connection, self._read)
        self._expire()
        return True

    def _guarded(self, connection: _Connection, action: Callable[[_Connection], None]) -> None:
        """Run one step of a connection; whatever fails closes that connection, never the loop."""
        try:
            action(connection)
        except OSError as exc:  # reset, broken pipe: that client is gone
            log.debug("connection from %s failed: %s", connection.peer, exc)
            self._close(connection)
        except Exception:  # noqa: BLE001 - a bug must cost one connection; the loop is the whole endpoint
            log.exception("serving %s failed", connection.peer)
            self._close(connection)

    def _timeout(self) -> float | None:
        """Return seconds until the nearest deadline, or None (wait for events only) when there is none."""
        deadlines = [c.deadline for c in self._connections.values()]  # at most max_connections: a scan is cheap
        if self._resume_accept_at is not None:
            deadlines.append(self._resume_accept_at)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _expire(self) -> None:
        now = time.monotonic()
        if self._resume_accept_at is not None and now >= self._resume_accept_at:
            self._resume_accept_at = None
            self._listen(True)
        for connection in [c for c in self._connections.values() if c.deadline <= now]:
            log.debug("connection from %s timed out while %s", connection.peer, connection.phase.value)
            self._close(connection)

    def _listen(self, on: bool) -> None:
        if on and not self._listening:
            self._selector.register(self.socket, selectors.EVENT_READ, _LISTENER)
        elif not on and self._listening:
            self._selector.unregister(self.socket)
        self._listening = on

    def _accept(self) -> None:
        """Accept every pending connection there is room for."""
        while True:
            if len(self._connections) >= self.limits.max_connections and not self._evict_idle():
                self._listen(False)  # the backlog holds them; _close listens again
                return
            try:
                sock, peer = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # The listening socket stays readable: without a pause the loop would spin on it.
                    log.warning("cannot accept connections for %g s: %s", _ACCEPT_BACKOFF, exc)
                    self._listen(False)
                    self._resume_accept_at = time.monotonic() + _ACCEPT_BACKOFF
                    return
                continue  # ECONNABORTED and the like: that client gave up, the next one may be waiting
            # The whole response leaves in one send, but a partial segment at its end would still wait for the
            # client's delayed ACK (40 ms on Linux) under Nagle's algorithm.
            _no_delay(sock)
            if self.tls is not None:
                threading.Thread(target=self._serve_tls, args=(sock, peer), name="rctmon-https",
                                 daemon=True).start()
                continue
            sock.setblocking(False)
            connection = _Connection(sock, peer, self.limits, time.monotonic())
            self._connections[sock.fileno()] = connection
            self._guarded(connection, self._read)  # the request usually came with the connect: save a select round

    def _evict_idle(self) -> bool:
        """Close the keep-alive connection idle longest to make room; return False if no connection is idle."""
        idle = [c for c in self._connections.values() if c.idle]
        if not idle:
            return False
        self._close(min(idle, key=lambda c: c.deadline))
        return True

    def _read(self, connection: _Connection) -> None:
        try:
            chunk = connection.sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            self._watch(connection, selectors.EVENT_READ)
            return
        if not chunk:  # the client closed (between requests, or giving up on one)
            self._close(connection)
            return
        if connection.idle:
            connection.idle = False
            connection.deadline = time.monotonic() + self.limits.client_timeout
        connection.reader.feed(chunk)
        self._advance(connection)

    def _advance(self, connection: _Connection) -> None:
        """Take the connection as far as it goes without waiting: answer buffered requests, send, or shut.

        At most `_PIPELINE_BATCH` requests in one go: a client that pipelines hundreds must not hold the loop. The
        rest wait for the next round, through a write event (the socket is writable at once).
        """
        answered = 0
        while True:
            if connection.phase is _Phase.WRITING:
                if not self._send(connection):
                    self._watch(connection, selectors.EVENT_WRITE)
                    return
                if connection.close_after:
                    self._linger(connection)
                    return
                connection.phase = _Phase.READING
                connection.idle = not connection.reader.pending
                timeout = self.limits.keepalive_timeout if connection.idle else self.limits.client_timeout
                connection.deadline = time.monotonic() + timeout
            try:
                request = connection.reader.take()
            except HttpError as error:
                log.debug("refusing a request from %s: %s", connection.peer, error)
                self._queue(connection, self._error_response(error), close=True)
                continue
            if request is None:
                self._watch(connection, selectors.EVENT_READ)
                return
            data, keep_alive = self._respond(request, connection.peer)
            self._queue(connection, data, close=not keep_alive)
            answered += 1
            if answered >= _PIPELINE_BATCH:
                self._watch(connection, selectors.EVENT_WRITE)
                return

    def _queue(self, connection: _Connection, data: bytes, close: bool) -> None:
        connection.phase = _Phase.WRITING
        connection.out = memoryview(data)
        connection.sent = 0
        connection.close_after = close
        connection.deadline = time.monotonic() + self.limits.client_timeout

    def _send(self, connection: _Connection) -> bool:
        """Send what the socket takes of the queued response; return whether all of it is out."""
        while connection.sent < len(connection.out):
            try:
                sent = connection.sock.send(connection.out[connection.sent:])
            except (BlockingIOError, InterruptedError):
                return False
            connection.sent += sent
            connection.deadline = time.monotonic() + self.limits.client_timeout  # progress: the client reads
        connection.out = memoryview(b"")
        return True

    def _linger(self, connection: _Connection) -> None:
        """Shut the write side (the client sees the end) and discard its input until it closes, for a while."""
        connection.sock.shutdown(socket.SHUT_WR)
        connection.phase = _Phase.LINGERING
        connection.idle = False
        connection.deadline = time.monotonic() + self.limits.linger_timeout
        self._discard(connection)

    def _discard(self, connection: _Connection) -> None:
        while True:
            try:
                chunk = connection.sock.recv(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                self._watch(connection, selectors.EVENT_READ)
                return
            connection.discarded += len(chunk)
            if not chunk or connection.discarded > self.limits.linger_bytes:
                self._close(connection)
                return

    def _watch(self, connection: _Connection, events: int) -> None:
        if connection.events == events:
            return
        if connection.events:
            self._selector.modify(connection.sock, events, connection)
        else:
            self._selector.register(connection.sock, events, connection)
        connection.events = events

    def _close(self, connection: _Connection) -> None:
        if self._connections.pop(connection.sock.fileno(), None) is None:
            return
        if connection.events:
            self._selector.unregister(connection.sock)
            connection.events = 0
        _close_quietly(connection.sock)
        if not self._listening and self._resume_accept_at is None and self._serving_loop():
            self._listen(True)  # paused at max_connections: there is room again

    def _serving_loop(self) -> bool:
        return self._serving and not self._done.is_set() and not self._shutdown_requested

    # --- answers ----------------------------------------------------------------------------------------------------

    def _respond(self, request: Request, peer: object) -> tuple[bytes, bool]:
        """Return the response's bytes and whether the connection stays open for another request."""
        keep_alive = request.keep_alive
        if request.method not in _METHODS:
            response = Response(HTTPStatus.NOT_IMPLEMENTED, f"Unsupported method {request.method}\n".encode())
            keep_alive = False
        else:
            try:
                response = self._app(request)
            except Exception:  # noqa: BLE001 - a bug in the application must cost one request, never the server
                log.exception("answering %s failed", request.line)
                response = Response(HTTPStatus.INTERNAL_SERVER_ERROR, b"internal error; see rctmon's log\n")
        if log.isEnabledFor(logging.DEBUG):
            log.debug('%s - "%s" %d %d', peer, request.line, response.status, len(response.body))
        return self._serialize(response, keep_alive, request.version, request.method != "HEAD"), keep_alive

    def _error_response(self, error: HttpError) -> bytes:
        body = f"{error.status.phrase}: {error.detail}\n".encode()
        return self._serialize(Response(error.status, body), keep_alive=False, version=(1, 1), send_body=True)

    def _serialize(self, response: Response, keep_alive: bool, version: tuple[int, int], send_body: bool) -> bytes:
        lines: list[str] = [
            f"HTTP/1.1 {int(response.status)} {HTTPStatus(response.status).phrase}",
            f"Server: {self._server_name}",
            f"Date: {self._http_date()}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
        ]
        lines += [f"{name}: {value}" for name, value in response.headers]
        if not keep_alive:
            lines.append("Connection: close")
        elif version < (1, 1):
            lines.append("Connection: keep-alive")  # an HTTP/1.0 client assumes close unless told
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head + response.body if send_body else head

    def _http_date(self) -> str:
        """Return the Date header's value, formatted once a second (the loop and TLS threads share it)."""
        now = int(time.time())
        second, text = self._date
        if second != now:
            text = email.utils.formatdate(now, usegmt=True)
            self._date = (now, text)
        return text

    # --- TLS: a thread per connection -------------------------------------------------------------------------------

    def _serve_tls(self, sock: socket.socket, peer: object) -> None:
        """Run in the connection's thread: refuse plain HTTP, do the handshake, then answer requests in turn."""
        try:
            sock.settimeout(self.limits.client_timeout)
            first = sock.recv(1, socket.MSG_PEEK)
            if not first:
                return
            if first[0] != _TLS_HANDSHAKE:
                _refuse(sock)
                return
            assert self.tls is not None
            sock = self.tls.wrap_socket(sock, server_side=True)  # the handshake, under the socket's timeout
            self._serve_blocking(sock, peer)
        except OSError as exc:  # timeouts, resets and failed handshakes (ssl.SSLError) concern this client only
            log.debug("connection from %s failed: %s", peer, exc)
        except Exception:  # noqa: BLE001 - logged; the thread ends, the server goes on
            log.exception("serving %s failed", peer)
        finally:
            _close_quietly(sock)

    def _serve_blocking(self, sock: socket.socket, peer: object) -> None:
        """Answer requests on a blocking socket with the loop's parser, limits and deadlines."""
        limits = self.limits
        reader = RequestReader(limits.max_head, limits.max_headers)
        idle = False
        deadline = time.monotonic() + limits.client_timeout
        while True:
            try:
                request = reader.take()
            except HttpError as error:
                log.debug("refusing a request from %s: %s", peer, error)
                sock.settimeout(limits.client_timeout)
                sock.sendall(self._error_response(error))
                _drain(sock, limits.linger_timeout, limits.linger_bytes)
                return
            if request is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                sock.settimeout(remaining)
                chunk = sock.recv(_RECV_SIZE)
                if not chunk:
                    return
                if idle:
                    idle = False
                    deadline = time.monotonic() + limits.client_timeout
                reader.feed(chunk)
                continue
            data, keep_alive = self._respond(request, peer)
            sock.settimeout(limits.client_timeout)
            sock.sendall(data)
            if not keep_alive:
                _drain(sock, limits.linger_timeout, limits.linger_bytes)
                return
            idle = not reader.pending
            deadline = time.monotonic() + (limits.keepalive_timeout if idle else limits.client_timeout)


def _refuse(sock: socket.socket) -> None:
    """Answer a plain-HTTP request on the HTTPS endpoint with 400, as Prometheus' own web config does.

    The client's unread request is drained before closing: closing with unread data would send a reset that can
    overtake the answer.
    """
    sock.sendall(PLAIN_HTTP_REFUSED)
    _drain(sock, 1.0, 65536)


def _drain(sock: socket.socket, timeout: float, limit: int) -> None:
    """Shut the write side (the client sees the end) and discard what the client still sends, for a while.

    Closing with unread data sends a reset, which can overtake the response. On a TLS socket `shutdown` drops the
    TLS layer, so what is discarded is raw records: nothing is decrypted for nothing.
    """
    sock.shutdown(socket.SHUT_WR)
    deadline = time.monotonic() + timeout
    drained = 0
    while drained <= limit:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        sock.settimeout(remaining)
        chunk = sock.recv(_RECV_SIZE)
        if not chunk:
            return
        drained += len(chunk)


def _no_delay(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:  # not TCP
        pass


def _close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
