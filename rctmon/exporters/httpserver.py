"""The HTTP endpoint: h11 parses, one asyncio event loop serves every connection, plain or TLS, within fixed bounds.

The endpoint faces the network, and issue 11 broke the hand-written one it replaces: a thread per TLS connection
(300 bare connections under TasksMax=256 killed the serving thread for good), a parser that answered a request
smuggled behind a second Content-Length and wrote a traceback per malformed request, and slow clients that held a
legitimate scrape past Prometheus' 10 s timeout. Here:

- h11 (strict RFC 9112, the parser under httpx and uvicorn) parses every request, with a parser of its own per
  request. What it lets through that this endpoint has no use for is refused on top: methods other than GET and
  HEAD, HTTP versions other than 1.x, Content-Length beside Transfer-Encoding, bodies over `max_body`, too many
  headers, an invalid Host or request target. A refusal is a 4xx, closes the connection, and is logged at most once
  per client a minute (`RefusalLog`), never with a traceback. Responses are the endpoint's own few fixed lines.
  A head that came alone in one read and was accepted is remembered by its bytes (`_heads`): a scraper sends the
  same one every time, and a request whose head is remembered costs a third of one parsed again.
- One event loop, no thread per connection. Connections are raw non-blocking sockets watched by the loop
  (`add_reader`/`add_writer`); TLS is an `ssl.SSLObject` over memory buffers, so a TLS connection costs an SSL
  object and no 256 KiB read buffer (asyncio's own TLS transport allocates one per connection), and the handshake is
  just more bytes with a deadline.
- Every connection is in one phase, and each phase has a deadline: a fresh connection must start its request (or
  TLS handshake) within `head_timeout` (`handshake_timeout` with TLS), a handshake complete within
  `handshake_timeout`, a request head within `head_timeout` of its first byte (dripping bytes do not extend it), a
  keep-alive connection may idle `keepalive_timeout`, a response must leave within `write_timeout`. Reads take at
  most `READ_SIZE` bytes at a time and stop while a response is being written, so what a connection holds is
  bounded by about two reads, the head limit and one response.
- One cap on connections of both kinds (`max_connections`, lowered to what RLIMIT_NOFILE allows). At the cap the
  endpoint still accepts, and closes the connection that has made the least progress (`SHED_ORDER`): one that
  finished and is lingering, then one that never sent a byte, then the longest-idle keep-alive one, then the one
  whose handshake or request head has been under way longest, a response being written last. A new client is
  always let in, and a scrape, which sends its request at once, is answered before anything sheds it.
- `serve()` raises when the listening socket can no longer accept, instead of serving nothing while the process
  lives on (the supervisor restarts a child that exits, not one that silently stopped serving).
"""

from __future__ import annotations

import asyncio
import email.utils
import enum
import errno
import ipaddress
import logging
import os
import re
import resource
import socket
import ssl
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Protocol

import h11

from rctmon import __version__

log = logging.getLogger("rctmon.prometheus.http")

SERVER_NAME = f"rctmon/{__version__}"
READ_SIZE = 16384  # bytes one read takes from a socket: the bound on what a connection buffers per read
TLS_HANDSHAKE_RECORD = 0x16  # the first byte of every TLS connection (a ClientHello record)
HEAD_CACHE_SIZE = 32  # request heads remembered (Endpoint._heads)
HEAD_CACHE_BYTES = 2048  # longer heads are not: Prometheus sends ~300 bytes
PIPELINE_BATCH = 16  # requests of one connection answered before the loop turns to the others
ACCEPT_BATCH = 64  # connections accepted in one turn of the loop
ACCEPT_BACKOFF = 1.0  # seconds without accepting when the process is out of descriptors and has none to give back
RESERVED_DESCRIPTORS = 32  # kept free of connections for the rest of the process (logs, channel, the probe)
METHODS = ("GET", "HEAD")
#: accept() errors that concern one client that gave up or was refused by a filter; the next one may be fine
#: (Linux passes pending network errors of the new socket through accept: accept(2), "Error handling").
CLIENT_GONE = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN, errno.ENOPROTOOPT,
                         errno.EHOSTDOWN, errno.ENONET, errno.EHOSTUNREACH, errno.EOPNOTSUPP, errno.ENETUNREACH,
                         errno.ETIMEDOUT, errno.ECONNRESET})
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: Host header and request-target authority: an IP literal or a name (RFC 3986 reg-name), and an optional port.
_AUTHORITY = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(:[0-9]{0,5})?")
_LINE_BREAK = re.compile(r"[\r\n\0]")
_PHRASES = {int(status): status.phrase for status in HTTPStatus}
_ABSOLUTE_FORM = re.compile(r"[Hh][Tt][Tt][Pp][Ss]?://(?P<authority>[^/?#]*)(?P<rest>[/?].*)?", re.DOTALL)

PLAIN_HTTP_REFUSED = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 48\r\n"
                      b"Connection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")


@dataclass(frozen=True)
class Limits:
    """What one client may take of the endpoint: every wait has a deadline, every buffer a bound."""

    #: Open connections, plain and TLS together. At the cap the one that made the least progress is closed for a
    #: new one (SHED_ORDER). Lowered at start to what RLIMIT_NOFILE leaves. An idle connection costs ~2 KB, a TLS
    #: one ~18 KB (measured), so a full endpoint holds at most ~20 MB for its clients.
    max_connections: int = 1024
    #: Seconds from the connect until a TLS handshake is complete (and, with TLS, until its first byte).
    handshake_timeout: float = 5.0
    #: Seconds a request head may take from its first byte until complete; also what a plain connection may wait
    #: before its first byte. Bytes that keep coming do not extend it.
    head_timeout: float = 10.0
    #: Seconds a connection may stay idle between requests. Longer than the usual scrape intervals (15-60 s), so a
    #: Prometheus server keeps its connection instead of connecting (and shaking hands) again for every scrape.
    keepalive_timeout: float = 75.0
    #: Seconds a response may take to leave, however slowly the client reads.
    write_timeout: float = 10.0
    #: Bytes of a request head held while it is incomplete (h11's max_incomplete_event_size): larger is refused with
    #: 431 (a head arriving complete within one more read may be up to READ_SIZE longer). Prometheus sends ~300 bytes;
    #: a browser on the landing page may send the host's cookies of other services on the same address.
    max_head: int = 32768
    max_headers: int = 100
    #: Bytes of a request body a GET or HEAD may carry (read and ignored); a larger one is refused with 413.
    max_body: int = 65536
    #: After the last response of a connection: seconds and bytes to read and discard what the client still sends.
    #: Closing with unread data sends a reset, which can overtake the response (lingering close).
    linger_timeout: float = 2.0
    linger_bytes: int = 262144


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Request:
    """A request as the application sees it. Header names are lower case; a repeated header keeps its first value.

    Requests with the same head are one object (Endpoint._heads): an application must not change `headers`.
    """

    method: str
    target: str
    path: str  # the target's path, also for the absolute form ("http://host/metrics?x" -> "/metrics")
    version: str  # "1.0" or "1.1"
    headers: dict[str, str]

    @property
    def line(self) -> str:
        """Return the request line, for the log."""
        return f"{self.method} {self.target[:200]!r} HTTP/{self.version}"


@dataclass(frozen=True)
class Response:
    """What the application answers; the endpoint adds Server, Date, Content-Length and connection handling."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


class App(Protocol):
    """What an endpoint serves: the answer to each request, and the request its self-probe sends."""

    @property
    def probe_path(self) -> str: ...

    @property
    def probe_headers(self) -> Sequence[tuple[str, str]]: ...

    def __call__(self, request: Request) -> Response: ...


#: Every status the endpoint refuses a request with: its own checks and h11's hints (400, 431, 501).
REFUSAL_STATUSES: tuple[int, ...] = (400, 413, 431, 501, 505)


class Refused(Exception):
    """A request the endpoint answers by itself with `status`, then closes the connection."""

    def __init__(self, status: HTTPStatus, detail: str) -> None:
        super().__init__(f"{status.value} {status.phrase}: {detail}")
        self.status = status
        self.detail = detail


class Phase(enum.Enum):
    FRESH = "fresh"  # connected, not a byte yet
    HANDSHAKE = "handshake"  # TLS handshake under way
    HEAD = "head"  # a request (head, or the body of a GET) under way
    WRITING = "writing"  # a response is leaving; reading stops meanwhile
    IDLE = "idle"  # keep-alive, between requests
    CLOSING = "closing"  # the last response is leaving; then LINGERING
    LINGERING = "lingering"  # done and the write side shut: discarding input until the client closes


#: Which connection is closed for a new one at the cap: the first non-empty group, in it the one longest in its
#: phase. Finished ones first, then those that never sent anything, then idle keep-alive ones (a Prometheus server
#: between scrapes reconnects at its next scrape), then those mid-way through a handshake or request head, and a
#: response being written last.
SHED_ORDER: tuple[tuple[Phase, ...], ...] = (
    (Phase.LINGERING, Phase.CLOSING),
    (Phase.FRESH,),
    (Phase.IDLE,),
    (Phase.HANDSHAKE, Phase.HEAD),
    (Phase.WRITING,),
)
_READING = frozenset({Phase.FRESH, Phase.HANDSHAKE, Phase.HEAD, Phase.IDLE, Phase.LINGERING})


def _phase_timeouts(limits: Limits, tls: bool) -> dict[Phase, float]:
    return {
        Phase.FRESH: limits.handshake_timeout if tls else limits.head_timeout,
        Phase.HANDSHAKE: limits.handshake_timeout,
        Phase.HEAD: limits.head_timeout,
        Phase.WRITING: limits.write_timeout,
        Phase.IDLE: limits.keepalive_timeout,
        Phase.CLOSING: limits.write_timeout,
        Phase.LINGERING: limits.linger_timeout,
    }


@dataclass
class EndpointStats:
    """What the endpoint did with its clients, for the health metrics and the tests."""

    accepted: int = 0
    answered: int = 0
    heads_reused: int = 0  # requests answered without parsing: the same bytes as a head parsed before
    refused: Counter[int] = field(default_factory=Counter)  # by status
    shed: int = 0  # closed at the cap (or when out of descriptors) to let a new client in
    timed_out: Counter[str] = field(default_factory=Counter)  # by phase
    tls_failed: int = 0  # handshakes that failed (not TLS, no common cipher, a reset mid-way)


class RefusalLog:
    """Log refusals at most once per client per `interval`, and at most `per_interval` lines in all.

    The table of clients is bounded (oldest forgotten first), so a client can cost a line a minute and a flood
    from many addresses costs `per_interval` lines a minute; what is not logged is counted and said in the next line.
    """

    def __init__(self, interval: float = 60.0, max_clients: int = 1024, per_interval: int = 20) -> None:
        self._interval = interval
        self._max_clients = max_clients
        self._per_interval = per_interval
        self._last: OrderedDict[str, float] = OrderedDict()
        self._window_start = -interval
        self._in_window = 0
        self._unlogged = 0

    def refused(self, client: str, status: int, detail: str) -> None:
        now = time.monotonic()
        last = self._last.get(client)
        if now - self._window_start >= self._interval:
            self._window_start, self._in_window = now, 0
        if (last is not None and now - last < self._interval) or self._in_window >= self._per_interval:
            self._unlogged += 1
            return
        self._last[client] = now
        self._last.move_to_end(client)
        while len(self._last) > self._max_clients:
            self._last.popitem(last=False)
        self._in_window += 1
        unlogged, self._unlogged = self._unlogged, 0
        log.warning("refused a request from %s with %d: %s (more from this client are not logged for %g s%s)",
                    client, status, detail, self._interval,
                    f"; {unlogged} refusals not logged since the last line" if unlogged else "")


def client_key(address: object) -> str:
    """Return who a peer address is for the refusal log: the IPv4 address, or the /64 of an IPv6 address."""
    host = address[0] if isinstance(address, tuple) and address else str(address)
    try:
        ip = ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return str(host)[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def request_path(target: str) -> str | None:
    """Return the path of an origin-form or absolute-form request target, None when it is neither or malformed."""
    if target.startswith("/"):
        return target.split("?", 1)[0]
    absolute = _ABSOLUTE_FORM.fullmatch(target)
    if absolute is None or _AUTHORITY.fullmatch(absolute["authority"]) is None:
        return None
    return (absolute["rest"] or "/").split("?", 1)[0] or "/"


def keeps_alive(request: Request) -> bool:
    """Return whether the connection may carry another request after this one's response (h11's rule)."""
    tokens = {token.strip().lower() for token in request.headers.get("connection", "").split(",")}
    return request.version == "1.1" and "close" not in tokens


class _Tls:
    """A server-side TLS session over memory buffers: bytes from the network in, application data out, and back."""

    __slots__ = ("obj", "incoming", "outgoing", "established", "closed")

    def __init__(self, context: ssl.SSLContext) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.established = False
        self.closed = False  # the client sent close_notify

    def receive(self, data: memoryview) -> bytes:
        """Take bytes from the network; return the application data they complete. Raise ssl.SSLError."""
        self.incoming.write(data)
        if not self.established:
            try:
                self.obj.do_handshake()
            except ssl.SSLWantReadError:
                return b""
            self.established = True
        chunks = []
        while True:
            try:
                chunk = self.obj.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.closed = True
                break
            if not chunk:
                self.closed = True
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def to_send(self) -> bytes:
        """Return the TLS records waiting to go to the network (handshake messages, alerts, tickets)."""
        return self.outgoing.read()

    def encrypt(self, data: bytes) -> bytes:
        """Return the TLS records carrying `data`. Raise ssl.SSLError (the session failed or was closed)."""
        if data:  # (writing nothing is an error to some OpenSSL versions)
            self.obj.write(data)
        return self.outgoing.read()

    def close_notify(self) -> bytes:
        try:
            self.obj.unwrap()
        except ssl.SSLError:  # SSLWantReadError: ours is written, the client's is not awaited
            pass
        return self.outgoing.read()


class _Connection:
    """One connection's state in the event loop."""

    __slots__ = ("sock", "fd", "address", "tls", "http", "phase", "since", "deadline", "timer", "pending", "reading",
                 "request", "head", "body_bytes", "answered", "keep_alive", "discarded", "closed")

    def __init__(self, sock: socket.socket, address: object) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.address = address
        self.tls: _Tls | None = None
        self.http: h11.Connection | None = None  # a parser for each request, from its first byte: _next_request
        self.phase = Phase.FRESH
        self.since = 0.0  # loop time the connection entered its phase
        self.deadline = 0.0  # loop time it is closed unless it leaves its phase before
        self.timer: asyncio.TimerHandle | None = None  # due at the deadline or before (then it looks again)
        self.pending: bytearray | None = None  # bytes the socket has not taken yet
        self.reading = False  # registered with the loop for reading
        self.request: Request | None = None
        self.head: bytes | None = None  # the bytes of `request` if they came in one read, alone: see Endpoint._heads
        self.body_bytes = 0
        self.answered = False  # the response to `request` has left
        self.keep_alive = False  # and the connection may carry another request
        self.discarded = 0
        self.closed = False

    @property
    def client(self) -> str:
        """Return who this is for the log (worked out only when something is logged)."""
        return client_key(self.address)


def _parser(max_head: int) -> h11.Connection:
    return h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)


class Endpoint:
    """Serve `app` on a listening socket bound elsewhere (by the supervisor), plain HTTP or TLS, until cancelled.

    `serve()` runs in the caller's event loop; `probe()` asks the endpoint for the app's probe path over loopback,
    through the listening socket, TLS and credentials included.
    """

    def __init__(self, listen_socket: socket.socket, app: App, tls: ssl.SSLContext | None = None,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        self.socket = listen_socket
        self.app = app
        self.tls = tls
        self.limits = limits
        self.stats = EndpointStats()
        self.refusals = RefusalLog()
        self.max_connections = limits.max_connections  # lowered by serve() to what RLIMIT_NOFILE allows
        self._timeouts = _phase_timeouts(limits, tls is not None)
        self._phases: dict[Phase, OrderedDict[_Connection, None]] = {phase: OrderedDict() for phase in Phase}
        self._connections: set[_Connection] = set()
        self._buffer = bytearray(READ_SIZE)  # one for all: each read is handed on before the next one
        self._view = memoryview(self._buffer)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listen_fd = -1
        self._failure: asyncio.Future[None] | None = None
        self._accepting = False
        self._resume: asyncio.TimerHandle | None = None
        #: Request heads h11 parsed and the endpoint accepted, by their exact bytes, most recent last. A scraper
        #: sends the same head every time, and identical bytes parse identically: a head found here skips h11's
        #: parsing (about half of what a request costs). Only heads that came alone in one read, without a body.
        self._heads: OrderedDict[bytes, Request] = OrderedDict()
        self._shed_logged_at = -60.0
        self._failure_logged_at = -60.0
        self._pause_logged_at = -60.0
        self._date = (0, "")

    @property
    def connections(self) -> int:
        return len(self._connections)

    # --- life cycle -------------------------------------------------------------------------------------------------

    async def serve(self) -> None:
        """Serve until cancelled; raise OSError if the listening socket can no longer accept connections."""
        if self._failure is not None:
            raise RuntimeError("this endpoint is serving already")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._failure = loop.create_future()
        self.max_connections = _connection_budget(self.limits.max_connections)
        self.socket.setblocking(False)  # a client that resets between readiness and accept() must not block
        self._listen_fd = self.socket.fileno()
        self._accept_on(True)
        try:
            await self._failure
        finally:
            self._accept_on(False)
            if self._resume is not None:
                self._resume.cancel()
            for connection in list(self._connections):
                self._close(connection)
            self._failure = None

    async def probe(self, timeout: float) -> bool:
        """Return whether a GET of the app's probe path over loopback is answered with 200 within `timeout`.

        A real request through the listening socket: the accept path, TLS, the parser, credentials and the app.
        """
        try:
            return await asyncio.wait_for(self._probe_once(), timeout)
        except (OSError, asyncio.TimeoutError, h11.ProtocolError, ssl.SSLError) as exc:
            log.debug("the endpoint's probe failed: %r", exc)
            return False

    async def _probe_once(self) -> bool:
        host, port = self.socket.getsockname()[:2]
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        context = None
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # our own certificate, reached through our own socket
        reader, writer = await asyncio.open_connection(host, port, ssl=context)
        try:
            client = h11.Connection(h11.CLIENT)
            authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            headers = [("Host", authority), ("Connection", "close"), *self.app.probe_headers]
            writer.write(client.send(h11.Request(method="GET", target=self.app.probe_path, headers=headers)))
            writer.write(client.send(h11.EndOfMessage()))
            status = 0
            while True:
                event = client.next_event()
                if event is h11.NEED_DATA:
                    client.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    return status == 200 and isinstance(event, h11.EndOfMessage)
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, ssl.SSLError):
                pass

    # --- accepting --------------------------------------------------------------------------------------------------

    def _accept_on(self, on: bool) -> None:
        assert self._loop is not None
        if on and not self._accepting:
            self._loop.add_reader(self._listen_fd, self._accept)
        elif not on and self._accepting:
            self._loop.remove_reader(self._listen_fd)
        self._accepting = on

    def _accept(self) -> None:
        """Accept what is waiting (up to ACCEPT_BATCH), shedding a connection for each one past the cap."""
        try:
            for _ in range(ACCEPT_BATCH):
                try:
                    sock, address = self.socket.accept()
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    if exc.errno in CLIENT_GONE:
                        continue
                    if exc.errno in OUT_OF_DESCRIPTORS:
                        if self._shed("out of descriptors"):
                            continue
                        self._pause_accepting(exc)
                        return
                    raise
                if len(self._connections) >= self.max_connections:
                    self._shed(f"at the limit of {self.max_connections} connections")
                try:
                    self._adopt(sock, address)
                except Exception:  # noqa: BLE001 - rctmon's bug: it costs this connection, not the endpoint
                    log.exception("taking the connection of %s failed", client_key(address))
                    sock.close()
        except Exception as exc:  # noqa: BLE001 - serve() raises it: an endpoint that cannot accept must not linger
            self._accept_on(False)
            assert self._failure is not None
            if not self._failure.done():
                self._failure.set_exception(OSError(f"the endpoint can no longer accept connections: {exc}"))

    def _pause_accepting(self, exc: OSError) -> None:
        """Stop accepting for a while: the listening socket stays readable, and retrying at once would spin."""
        assert self._loop is not None
        if self._loop.time() - self._pause_logged_at >= 60.0:
            self._pause_logged_at = self._loop.time()
            log.warning("cannot accept connections: %s; trying again every %g s (logged once a minute)", exc,
                        ACCEPT_BACKOFF)
        self._accept_on(False)
        self._resume = self._loop.call_later(ACCEPT_BACKOFF, self._accept_on, True)

    def _shed(self, why: str) -> bool:
        """Close the connection that made the least progress (SHED_ORDER); return False if there is none."""
        for group in SHED_ORDER:
            fronts = [next(iter(self._phases[phase])) for phase in group if self._phases[phase]]
            if fronts:
                victim = min(fronts, key=lambda c: c.since)
                self.stats.shed += 1
                assert self._loop is not None
                now = self._loop.time()
                if now - self._shed_logged_at >= 60.0:
                    self._shed_logged_at = now
                    log.warning("%s: closing the connections that made the least progress (first: %s, %s for "
                                "%.1f s; this is logged once a minute)", why, victim.client, victim.phase.value,
                                now - victim.since)
                self._close(victim)
                return True
        return False

    def _adopt(self, sock: socket.socket, address: object) -> None:
        assert self._loop is not None
        self.stats.accepted += 1
        try:
            sock.setblocking(False)
            # A partial segment at the end of a response would otherwise wait for the client's delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # not TCP (a Unix socket in a test), or already reset
            pass
        connection = _Connection(sock, address)
        self._connections.add(connection)
        self._enter(connection, Phase.FRESH)
        self._guarded(connection, self._readable)  # the request usually came with the connect: save a loop turn

    # --- phases and deadlines ---------------------------------------------------------------------------------------

    def _enter(self, connection: _Connection, phase: Phase) -> None:
        assert self._loop is not None
        if connection.closed:
            return
        self._phases[connection.phase].pop(connection, None)
        self._phases[phase][connection] = None
        connection.phase = phase
        connection.since = now = self._loop.time()
        connection.deadline = now + self._timeouts[phase]
        # A timer due before the new deadline stays: when it fires it looks again. Most phase changes move the
        # deadline later (a fresh connection answered and kept alive), so a request costs no timer of its own.
        timer = connection.timer
        if timer is None or timer.when() > connection.deadline:
            if timer is not None:
                timer.cancel()
            connection.timer = self._loop.call_at(connection.deadline, self._expire, connection)
        self._want_read(connection, phase in _READING and connection.pending is None)

    def _expire(self, connection: _Connection) -> None:
        assert self._loop is not None
        connection.timer = None
        if connection.closed:
            return
        if self._loop.time() < connection.deadline:
            connection.timer = self._loop.call_at(connection.deadline, self._expire, connection)
            return
        if connection.phase is not Phase.LINGERING:
            self.stats.timed_out[connection.phase.value] += 1
            log.debug("closing the connection of %s: %s for %g s", connection.client, connection.phase.value,
                      self._timeouts[connection.phase])
        self._close(connection)

    def _want_read(self, connection: _Connection, on: bool) -> None:
        assert self._loop is not None
        if on and not connection.reading:
            self._loop.add_reader(connection.fd, self._guarded_readable, connection)
        elif not on and connection.reading:
            self._loop.remove_reader(connection.fd)
        connection.reading = on

    def _close(self, connection: _Connection) -> None:
        if connection.closed:
            return
        assert self._loop is not None
        connection.closed = True
        self._connections.discard(connection)
        self._phases[connection.phase].pop(connection, None)
        if connection.timer is not None:
            connection.timer.cancel()
        self._want_read(connection, False)
        if connection.pending is not None:
            self._loop.remove_writer(connection.fd)
            connection.pending = None
        try:
            connection.sock.close()
        except OSError:
            pass

    # --- reading ----------------------------------------------------------------------------------------------------

    def _guarded_readable(self, connection: _Connection) -> None:
        self._guarded(connection, self._readable)

    def _guarded(self, connection: _Connection, step: Callable[[_Connection], None]) -> None:
        """Run one step of a connection; a bug there costs that connection (logged), never the loop."""
        try:
            step(connection)
        except Exception:  # noqa: BLE001 - logged with its traceback: this is rctmon's bug, not the client's
            log.exception("serving %s failed; closing its connection", connection.client)
            self._close(connection)

    def _readable(self, connection: _Connection) -> None:
        try:
            count = connection.sock.recv_into(self._view)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # reset: that client is gone
            log.debug("connection of %s failed: %s", connection.client, exc)
            self._close(connection)
            return
        if count == 0:  # the client closed (between requests, or giving up on one)
            self._close(connection)
            return
        data = self._view[:count]
        if connection.phase is Phase.LINGERING:
            connection.discarded += count
            if connection.discarded > self.limits.linger_bytes:
                self._close(connection)
            return
        if self.tls is not None:
            plain = self._decrypt(connection, data)
            if plain is None:
                return
            if plain:  # (an empty read would tell h11 that the client closed)
                self._received(connection, plain)
            if connection.tls is not None and connection.tls.closed and not connection.closed:
                self._close(connection)
            return
        self._received(connection, data)

    def _decrypt(self, connection: _Connection, data: memoryview) -> bytes | None:
        """Return the application data `data` completes on a TLS connection; None if the connection ended."""
        assert self.tls is not None
        if connection.tls is None:
            if data[0] != TLS_HANDSHAKE_RECORD:
                self._refuse_plain_http(connection)
                return None
            connection.tls = _Tls(self.tls)
            self._enter(connection, Phase.HANDSHAKE)
        tls = connection.tls
        was_established = tls.established
        try:
            plain = tls.receive(data)
        except ssl.SSLError as exc:
            self.stats.tls_failed += 1
            log.debug("TLS with %s failed: %s", connection.client, exc)
            self._send_raw(connection, tls.to_send())  # the alert, if the socket takes it now
            self._close(connection)
            return None
        self._send_raw(connection, tls.to_send())  # handshake messages, session tickets
        if connection.closed:
            return None
        if tls.established and not was_established:
            self._enter(connection, Phase.HEAD)  # the request is due now
        return plain

    def _refuse_plain_http(self, connection: _Connection) -> None:
        """Answer plain HTTP on the HTTPS endpoint with 400, as Prometheus' own web config does."""
        self.stats.refused[400] += 1
        self.refusals.refused(connection.client, 400, "plain HTTP sent to the HTTPS endpoint")
        self._enter(connection, Phase.CLOSING)
        if self._send_raw(connection, PLAIN_HTTP_REFUSED):
            self._linger(connection)

    def _received(self, connection: _Connection, data: bytes | memoryview) -> None:
        waiting = connection.phase in (Phase.FRESH, Phase.IDLE)
        if waiting:
            # RFC 9112 2.2: empty lines before a request line are to be ignored (some clients end a body with one).
            data = bytes(data).lstrip(b"\r\n")
            if not data:
                return
        if waiting and connection.http is None and len(data) <= HEAD_CACHE_BYTES:
            head = bytes(data)
            known = self._heads.get(head)
            if known is not None:
                self._heads.move_to_end(head)
                self.stats.heads_reused += 1
                self._respond(connection, known)
                self._advance(connection)
                return
            connection.head = head
        else:
            connection.head = None
        if connection.http is None:
            connection.http = _parser(self.limits.max_head)
        parser = connection.http
        parser.receive_data(bytes(data))
        self._advance(connection)
        if waiting and connection.http is parser and connection.phase in (Phase.FRESH, Phase.IDLE):
            # A request began and is not complete: its head is due within head_timeout from now. (One that came
            # whole was answered above, without this phase and its deadline.)
            self._enter(connection, Phase.HEAD)

    # --- requests and responses -------------------------------------------------------------------------------------

    def _advance(self, connection: _Connection) -> None:
        """Take the connection as far as it goes without waiting: answer complete requests, start the next one."""
        answered = 0
        while not connection.closed and connection.pending is None:
            if connection.answered:  # the response has left
                if not self._next_request(connection):
                    return
            if connection.http is None:  # nothing of a next request yet
                self._want_read(connection, connection.phase in _READING)
                return
                answered += 1
                if answered >= PIPELINE_BATCH:  # a client pipelining hundreds must not hold the loop
                    assert self._loop is not None
                    self._want_read(connection, False)
                    self._loop.call_soon(self._guarded, connection, self._advance)
                    return
            try:
                event = connection.http.next_event()
                if event is h11.NEED_DATA:
                    self._want_read(connection, connection.phase in _READING)
                    return
                if event is h11.PAUSED:  # cannot be: the parser is replaced once its request is complete
                    log.debug("closing the connection of %s: h11 paused in %s", connection.client,
                              connection.http.states)
                    self._close(connection)
                    return
                self._event(connection, event)
            except h11.RemoteProtocolError as exc:
                self._refuse(connection, Refused(HTTPStatus(exc.error_status_hint), str(exc)))
                return
            except Refused as refused:
                self._refuse(connection, refused)
                return

    def _next_request(self, connection: _Connection) -> bool:
        """Start on the next request after a response; return False when the connection ends instead.

        Each request gets a parser of its own, fed with what the client sent after the last one: h11 parses, and
        the endpoint writes its responses itself (h11's sending side cost 52 of 86 microseconds per request here).
        """
        if not connection.keep_alive:
            self._finish(connection)
            return False
        after = connection.http.trailing_data[0] if connection.http is not None else b""
        connection.http = None
        connection.request = None
        connection.body_bytes = 0
        connection.answered = False
        if after:
            connection.http = _parser(self.limits.max_head)
            connection.http.receive_data(after)
        self._enter(connection, Phase.HEAD if after else Phase.IDLE)
        return True

    def _event(self, connection: _Connection, event: object) -> None:
        if isinstance(event, h11.Request):
            connection.request = self._accept_request(event)
        elif isinstance(event, h11.Data):
            connection.body_bytes += len(event.data)
            if connection.body_bytes > self.limits.max_body:
                raise Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"a body over {self.limits.max_body} bytes")
        elif isinstance(event, h11.EndOfMessage):
            assert connection.request is not None and connection.http is not None
            if connection.head is not None and connection.body_bytes == 0 and not connection.http.trailing_data[0]:
                self._heads[connection.head] = connection.request  # it was this request, whole and alone
                if len(self._heads) > HEAD_CACHE_SIZE:
                    self._heads.popitem(last=False)
            connection.head = None
            self._respond(connection, connection.request)
        elif isinstance(event, h11.ConnectionClosed):
            self._close(connection)

    def _accept_request(self, event: h11.Request) -> Request:
        """Return the request h11 parsed if this endpoint serves it; raise Refused for what h11 lets through."""
        version = event.http_version.decode("ascii", "replace")
        if version not in ("1.0", "1.1"):
            raise Refused(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, f"HTTP/{version[:10]}")
        method = event.method.decode("ascii", "replace")
        if method not in METHODS:
            raise Refused(HTTPStatus.NOT_IMPLEMENTED, f"method {method[:20]!r}")
        if len(event.headers) > self.limits.max_headers:
            raise Refused(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"more than {self.limits.max_headers} headers")
        headers: dict[str, str] = {}
        for name, value in event.headers.raw_items():  # (iterating the Headers sequence itself is several times slower)
            headers.setdefault(name.decode("ascii").lower(), value.decode("latin-1"))
        if "content-length" in headers and "transfer-encoding" in headers:
            # RFC 9112 6.3: the two disagree about where the request ends, the classic way to smuggle one.
            raise Refused(HTTPStatus.BAD_REQUEST, "both Content-Length and Transfer-Encoding")
        if int(headers.get("content-length", "0")) > self.limits.max_body:
            raise Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"a body over {self.limits.max_body} bytes")
        host = headers.get("host")
        if host is not None and _AUTHORITY.fullmatch(host) is None:
            raise Refused(HTTPStatus.BAD_REQUEST, f"invalid Host {host[:100]!r}")
        target = event.target.decode("latin-1")
        path = request_path(target)
        if path is None:
            raise Refused(HTTPStatus.BAD_REQUEST, f"invalid request target {target[:100]!r}")
        return Request(method, target, path, version, headers)


    def _respond(self, connection: _Connection, request: Request) -> None:
        connection.keep_alive = keeps_alive(request)
        connection.answered = True
        with_body = request.method != "HEAD"
        try:
            response = self.app(request)
            data = self._serialize(response, connection.keep_alive, with_body)
        except Exception:  # noqa: BLE001 - a bug in the application must cost one request, never the endpoint
            assert self._loop is not None
            if self._loop.time() - self._failure_logged_at >= 60.0:  # a client repeating the request: one a minute
                self._failure_logged_at = self._loop.time()
                log.exception("answering %s failed (logged once a minute)", request.line)
            response = Response(HTTPStatus.INTERNAL_SERVER_ERROR, b"internal error; see rctmon's log\n")
            data = self._serialize(response, connection.keep_alive, with_body)
        self.stats.answered += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug('%s - "%s" %d %d', connection.client, request.line, response.status, len(response.body))
        if not self._send(connection, data) and not connection.closed:
            self._enter(connection, Phase.WRITING)  # the rest leaves when the client reads; then the next request

    def _serialize(self, response: Response, keep_alive: bool, with_body: bool) -> bytes:
        """Return the status line, headers and body of a response (HEAD: the headers GET would get, no body)."""
        extra = [f"{name}: {value}" for name, value in response.headers]
        if _LINE_BREAK.search(response.content_type) or any(_LINE_BREAK.search(line) for line in extra):
            raise ValueError(f"a line break in a header of the response: {response!r:.200}")  # the app's bug
        lines = [f"HTTP/1.1 {response.status} {_PHRASES[response.status]}", f"Server: {SERVER_NAME}",
                 f"Date: {self._http_date()}", f"Content-Type: {response.content_type}",
                 f"Content-Length: {len(response.body)}", *extra]
        if not keep_alive:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head + response.body if with_body else head

    def _refuse(self, connection: _Connection, refused: Refused) -> None:
        """Answer a request the endpoint does not serve by itself, log it (rate-limited) and close the connection."""
        status = refused.status
        self.stats.refused[status.value] += 1
        self.refusals.refused(connection.client, status.value, refused.detail)
        self._enter(connection, Phase.CLOSING)
        self._finish(connection, self._serialize(Response(status, f"{status.phrase}\n".encode()), False, True))

    def _finish(self, connection: _Connection, last: bytes = b"") -> None:
        """Send the last bytes of the connection and, on TLS, its close_notify; then shut the write side and linger."""
        if connection.phase is not Phase.CLOSING:
            self._enter(connection, Phase.CLOSING)
        tls = connection.tls
        if tls is not None and tls.established:
            try:
                last = tls.encrypt(last) + tls.close_notify()
            except ssl.SSLError as exc:  # the client ended the session first
                log.debug("TLS with %s ended: %s", connection.client, exc)
                self._close(connection)
                return
        if self._send_raw(connection, last):
            self._linger(connection)

    # --- writing ----------------------------------------------------------------------------------------------------

    def _send(self, connection: _Connection, data: bytes) -> bool:
        """Send application data (encrypted on TLS); return whether the socket took all of it at once."""
        if connection.tls is not None:
            try:
                data = connection.tls.encrypt(data)
            except ssl.SSLError as exc:  # the client ended the session first
                log.debug("TLS with %s ended: %s", connection.client, exc)
                self._close(connection)
                return False
        return self._send_raw(connection, data)

    def _send_raw(self, connection: _Connection, data: bytes) -> bool:
        """Send bytes as they are; return whether all left now. The rest waits for the loop, reading paused."""
        assert self._loop is not None
        if connection.closed:
            return False
        if connection.pending is not None:
            connection.pending += data
            return False
        sent = 0
        view = memoryview(data)
        while sent < len(data):  # on loopback a second send often takes what the first left: the kernel moved it on
            try:
                taken = connection.sock.send(view[sent:])
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.debug("connection of %s failed: %s", connection.client, exc)
                self._close(connection)
                return False
            sent += taken
        if sent < len(data):
            connection.pending = bytearray(data[sent:])
            self._want_read(connection, False)
            self._loop.add_writer(connection.fd, self._guarded, connection, self._writable)
            return False
        return True

    def _writable(self, connection: _Connection) -> None:
        assert self._loop is not None and connection.pending is not None
        while connection.pending:
            try:
                sent = connection.sock.send(connection.pending)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("connection of %s failed: %s", connection.client, exc)
                self._close(connection)
                return
            del connection.pending[:sent]
        self._loop.remove_writer(connection.fd)
        connection.pending = None
        self._drained(connection)

    def _drained(self, connection: _Connection) -> None:
        """Go on once everything queued has left: the next request, or the end of the connection."""
        phase = connection.phase
        if phase is Phase.WRITING:
            self._advance(connection)
        elif phase is Phase.CLOSING:
            self._linger(connection)
        elif phase in _READING:
            self._want_read(connection, True)

    def _linger(self, connection: _Connection) -> None:
        """Shut the write side (the client sees the end) and discard its input until it closes, for a while."""
        try:
            connection.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(connection)
            return
        self._enter(connection, Phase.LINGERING)

    def _http_date(self) -> str:
        """Return the Date header's value, formatted once a second."""
        now = int(time.time())
        second, text = self._date
        if second != now:
            text = email.utils.formatdate(now, usegmt=True)
            self._date = (now, text)
        return text


def _connection_budget(wanted: int) -> int:
    """Return how many connections fit in the descriptors RLIMIT_NOFILE leaves this process, at most `wanted`."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 64
    budget = soft - in_use - RESERVED_DESCRIPTORS
    if budget < wanted:
        log.info("RLIMIT_NOFILE (%d) leaves room for %d connections to the endpoint, not %d", soft, max(budget, 1),
                 wanted)
    return max(1, min(wanted, budget))
