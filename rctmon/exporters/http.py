"""The HTTP(S) server of the Prometheus endpoint: /metrics, a landing page, optional TLS and basic auth.

prometheus_client's own `start_http_server` binds its socket with a backlog of 5, so a burst of scrapers overflows
it and waits for a 1 s TCP retransmit. This server runs on the socket the supervisor bound (its backlog, and the
port kept across restarts of the child) with one thread per connection, so a slow or stuck client only ever holds
its own thread: every socket has a timeout, and a TLS handshake happens in the connection's thread, never in the
accepting one. The exposition is rendered once and shared by concurrent scrapes (`ExpositionCache`).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hmac
import http.client
import http.server
import logging
import socket
import socketserver
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from rctmon import __version__
from rctmon.config import PrometheusConfig

log = logging.getLogger("rctmon.prometheus.http")

CLIENT_TIMEOUT = 10.0  # seconds a client may take per read or write (and idle between keep-alive requests)
RENDER_MIN_AGE = 0.1  # seconds: concurrent scrapes within this share one rendering, even if data changed
RENDER_MAX_AGE = 1.0  # seconds: render again after this even if nothing changed (stale values must vanish)
POLL_INTERVAL = 0.1  # seconds the accept loop takes to notice shutdown()
_TLS_HANDSHAKE = 0x16  # first byte of every TLS connection: a ClientHello record

LANDING_PAGE = f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>rctmon</title></head>
<body>
<h1>rctmon</h1>
<p>Monitoring daemon for RCT Power inverters, version {__version__}.</p>
<p><a href="/metrics">Metrics</a></p>
</body>
</html>
""".encode("utf-8")

PLAIN_HTTP_REFUSED = (b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
                      b"\r\nClient sent an HTTP request to an HTTPS server.\n")


@dataclass
class _Rendered:
    body: bytes
    at: float  # monotonic time of rendering
    generation: int  # data generation it shows
    gzipped: Optional[bytes] = None


class ExpositionCache:
    """Render the registry for concurrent scrapes at most every `min_age` seconds, one rendering at a time.

    A rendering is reused while younger than `min_age`, or while the data it shows has not changed and it is
    younger than `max_age`. When it has to be renewed, one scrape renders; the scrapes that arrive meanwhile get
    the previous rendering at once if it is younger than `max_age` (and otherwise wait for the new one). So under
    20 concurrent scrapers at most one of them pays for a rendering, and nothing older than `max_age` is served.
    """

    def __init__(self, registry: Collector, generation: Callable[[], int], min_age: float = RENDER_MIN_AGE,
                 max_age: float = RENDER_MAX_AGE) -> None:
        self._registry = registry
        self._generation = generation
        self._min_age = min_age
        self._max_age = max_age
        self._render_lock = threading.Lock()
        self._gzip_lock = threading.Lock()
        self._by_type: Dict[str, _Rendered] = {}

    def _usable(self, rendered: Optional[_Rendered]) -> bool:
        if rendered is None:
            return False
        age = time.monotonic() - rendered.at
        return age < self._min_age or (age < self._max_age and rendered.generation == self._generation())

    def get(self, accept: str, want_gzip: bool) -> Tuple[bytes, str]:
        """Return (body, content type) in the format the Accept header negotiates, gzipped if asked."""
        encoder, content_type = choose_encoder(accept)
        rendered = self._by_type.get(content_type)
        if not self._usable(rendered):
            must_wait = rendered is None or time.monotonic() - rendered.at >= self._max_age
            if self._render_lock.acquire(blocking=must_wait):
                try:
                    rendered = self._by_type.get(content_type)
                    if not self._usable(rendered):
                        generation = self._generation()  # before rendering: a change meanwhile renders again
                        rendered = _Rendered(encoder(self._registry), time.monotonic(), generation)
                        self._by_type[content_type] = rendered
                finally:
                    self._render_lock.release()
        assert rendered is not None
        if not want_gzip:
            return rendered.body, content_type
        if rendered.gzipped is None:
            with self._gzip_lock:
                if rendered.gzipped is None:
                    # Level 1: the text still shrinks to about a sixth, at 60 % of the CPU time of level 6.
                    rendered.gzipped = gzip.compress(rendered.body, compresslevel=1, mtime=0)
        return rendered.gzipped, content_type


def accepts_gzip(header: str) -> bool:
    """Return whether an Accept-Encoding header allows gzip (and does not rule it out with q=0)."""
    for item in header.split(","):
        token, _, params = item.partition(";")
        if token.strip().lower() in ("gzip", "x-gzip"):
            q = params.strip().lower()
            return not (q.startswith("q=") and _float(q[2:]) == 0.0)
    return False


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 1.0


@dataclass(frozen=True)
class BasicAuth:
    """The one user and password the endpoint accepts."""

    username: bytes
    password: bytes

    def allows(self, header: Optional[str]) -> bool:
        """Return whether an Authorization header carries exactly this user and password."""
        if not header or not header[:6].lower() == "basic ":
            return False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, sep, password = decoded.partition(b":")
        # Compare both in full, whatever the first result: timing must not tell which one was wrong.
        user_ok = hmac.compare_digest(user, self.username)
        password_ok = hmac.compare_digest(password, self.password)
        return bool(sep) and user_ok and password_ok


def basic_auth(config: PrometheusConfig) -> Optional[BasicAuth]:
    """Return the configured credentials, or None when the endpoint is open (neither user nor password set)."""
    if not (config.basic_auth_username or config.basic_auth_password):
        return None
    return BasicAuth(config.basic_auth_username.encode("utf-8"), config.basic_auth_password.encode("utf-8"))


def tls_context(config: PrometheusConfig) -> Optional[ssl.SSLContext]:
    """Return a server TLS context from the configured certificate and key, or None for plain HTTP."""
    if not config.tls_cert_file:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.tls_cert_file, config.tls_key_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise OSError(f"prometheus.tls_cert_file/tls_key_file: cannot load {config.tls_cert_file} and "
                      f"{config.tls_key_file}: {exc}") from exc
    return context


class _Handler(http.server.BaseHTTPRequestHandler):
    """Answer one connection's requests (keep-alive: several in a row)."""

    protocol_version = "HTTP/1.1"
    server_version = f"rctmon/{__version__}"
    timeout = CLIENT_TIMEOUT
    server: "EndpointServer"

    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        self._answer(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        auth = self.server.auth
        if auth is not None and not auth.allows(self.headers.get("Authorization")):
            self._send(401, b"Unauthorized\n", "text/plain; charset=utf-8", send_body,
                       [("WWW-Authenticate", 'Basic realm="rctmon", charset="UTF-8"')])
            return
        route = _ROUTES.get(urlsplit(self.path).path)
        if route is None:
            self._send(404, b"Not found. Metrics are at /metrics\n", "text/plain; charset=utf-8", send_body)
            return
        route(self, send_body)

    def _metrics(self, send_body: bool) -> None:
        want_gzip = accepts_gzip(self.headers.get("Accept-Encoding", ""))
        try:
            body, content_type = self.server.cache.get(self.headers.get("Accept", ""), want_gzip)
        except Exception:  # noqa: BLE001 - a bug in a collector must cost one scrape, never the server
            log.exception("rendering the exposition failed")
            self._send(500, b"rendering the metrics failed; see rctmon's log\n", "text/plain; charset=utf-8",
                       send_body)
            return
        extra = [("Content-Encoding", "gzip")] if want_gzip else []
        self._send(200, body, content_type, send_body, extra + [("Vary", "Accept, Accept-Encoding")])

    def _landing(self, send_body: bool) -> None:
        self._send(200, LANDING_PAGE, "text/html; charset=utf-8", send_body)

    def _send(self, status: int, body: bytes, content_type: str, send_body: bool,
              headers: Optional[List[Tuple[str, str]]] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers or []:
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the signature http.server calls
        """Log requests at debug level; http.server would write every scrape to stderr."""
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s - %s", self.address_string(), format % args)


_ROUTES: Dict[str, Callable[[_Handler, bool], None]] = {
    "/metrics": _Handler._metrics,
    "/": _Handler._landing,
}


class EndpointServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """A threading HTTP server on a socket bound elsewhere (by the supervisor), with optional TLS and basic auth."""

    daemon_threads = True  # connection threads never keep the child alive after run() returns
    block_on_close = False

    def __init__(self, listen_socket: socket.socket, cache: ExpositionCache, auth: Optional[BasicAuth] = None,
                 tls: Optional[ssl.SSLContext] = None) -> None:
        socketserver.BaseServer.__init__(self, listen_socket.getsockname(), _Handler)
        self.socket = listen_socket
        # Non-blocking accept: a client that resets between select() and accept() must not stall the accept loop.
        listen_socket.setblocking(False)
        self.cache = cache
        self.auth = auth
        self.tls = tls

    def server_bind(self) -> None:  # pragma: no cover - the socket comes bound
        raise RuntimeError("EndpointServer serves a socket that is already bound")

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Run in the connection's thread: the TLS handshake, then the handler."""
        request.settimeout(CLIENT_TIMEOUT)
        # Headers and body leave in separate writes; with Nagle's algorithm the body's last segment would wait
        # for the client's delayed ACK (40 ms on Linux) on every keep-alive scrape.
        try:
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # not TCP
            pass
        if self.tls is None:
            _Handler(request, client_address, self)
            return
        secured = self._handshake(request)
        if secured is None:
            return
        try:
            _Handler(secured, client_address, self)
        finally:
            _close_quietly(secured)

    def _handshake(self, request: socket.socket) -> Optional[ssl.SSLSocket]:
        """Return the connection wrapped in TLS, or None after answering a plain-HTTP request with 400."""
        assert self.tls is not None
        first = request.recv(1, socket.MSG_PEEK)
        if not first:
            return None
        if first[0] != _TLS_HANDSHAKE:
            _refuse(request)
            return None
        return self.tls.wrap_socket(request, server_side=True)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log a failed connection (reset, timeout, bad handshake) briefly; it concerns that client only."""
        log.debug("connection from %s failed", client_address, exc_info=True)

    def probe(self, timeout: float = 5.0) -> bool:
        """Return whether a request to the landing page over the real socket is answered with 200 in time.

        This is what "the endpoint answers" means for Started: the socket, the accept loop, TLS and auth together.
        """
        host, port = self.socket.getsockname()[:2]
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        headers = {}
        if self.auth is not None:
            token = base64.b64encode(self.auth.username + b":" + self.auth.password).decode("ascii")
            headers["Authorization"] = f"Basic {token}"
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.tls is not None:
                    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE  # our own certificate, reached over our own socket
                    conn: http.client.HTTPConnection = http.client.HTTPSConnection(host, port, timeout=1.0,
                                                                                   context=context)
                else:
                    conn = http.client.HTTPConnection(host, port, timeout=1.0)
                try:
                    conn.request("GET", "/", headers=headers)
                    if conn.getresponse().status == 200:
                        return True
                finally:
                    conn.close()
            except (OSError, http.client.HTTPException) as exc:
                log.debug("endpoint probe failed: %s", exc)
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def _refuse(request: socket.socket) -> None:
    """Answer a plain-HTTP request on the HTTPS endpoint with 400, as Prometheus' own web config does.

    The client's unread request is drained before closing: closing with unread data would send a reset that can
    overtake the answer.
    """
    request.sendall(PLAIN_HTTP_REFUSED)
    request.shutdown(socket.SHUT_WR)
    request.settimeout(1.0)
    drained = 0
    while drained < 65536:
        chunk = request.recv(4096)
        if not chunk:
            return
        drained += len(chunk)


def _close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
