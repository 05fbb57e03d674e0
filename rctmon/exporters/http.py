"""The Prometheus endpoint: /metrics from a shared exposition cache, a landing page, optional TLS and basic auth.

prometheus_client's own `start_http_server` binds its socket with a backlog of 5, so a burst of scrapers overflows
it and waits for a 1 s TCP retransmit. This endpoint runs on the socket the supervisor bound (its backlog, and the
port kept across restarts of the child). The HTTP side is rctmon.exporters.httpserver (`Endpoint`: h11 and one
asyncio event loop for every connection, plain or TLS, within fixed bounds); this module is what it serves
(`MetricsApp`). The exposition is rendered once and shared by concurrent scrapes (`ExpositionCache`), so answering a
scrape is mostly a dictionary lookup and a send.

For the prometheus child:

    app = MetricsApp(cache, basic_auth(config.prometheus))
    endpoint = Endpoint(listen_socket, app, tls_context(config.prometheus), Limits())
    await endpoint.serve()            # in the child's event loop; raises if it can no longer accept
    await endpoint.probe(timeout)     # GET /metrics of its own, TLS and credentials included
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hmac
import logging
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Callable

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from rctmon import __version__
from rctmon.config import PrometheusConfig
from rctmon.exporters.httpserver import DEFAULT_LIMITS, Endpoint, Limits, Request, Response

__all__ = ["DEFAULT_LIMITS", "Endpoint", "ExpositionCache", "Limits", "MetricsApp", "basic_auth",
           "tls_context"]

log = logging.getLogger("rctmon.prometheus.http")

RENDER_MIN_AGE = 0.1  # seconds: concurrent scrapes within this share one rendering, even if data changed
RENDER_MAX_AGE = 1.0  # seconds: render again after this even if nothing changed (stale values must vanish)

LANDING_PAGE = f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>rctmon</title></head>
<body>
<h1>rctmon</h1>
<p>Monitoring daemon for RCT Power inverters, version {__version__}.</p>
<p><a href="/metrics">Metrics</a></p>
</body>
</html>
""".encode()


@dataclass
class _Rendered:
    body: bytes
    at: float  # monotonic time of rendering
    generation: int  # data generation it shows
    gzipped: bytes | None = None


#: What chooses the exposition format from an Accept header: (encoder of a registry, content type).
Encoders = Callable[[str], tuple[Callable[[Collector], bytes], str]]


class ExpositionCache:
    """Render the registry for concurrent scrapes at most every `min_age` seconds, one rendering at a time.

    A rendering is reused while younger than `min_age`, or while the data it shows has not changed and it is
    younger than `max_age`. When it has to be renewed, one scrape renders; the scrapes that arrive meanwhile get
    the previous rendering at once if it is younger than `max_age` (and otherwise wait for the new one). So under
    20 concurrent scrapers at most one of them pays for a rendering, and nothing older than `max_age` is served.
    """

    def __init__(self, registry: Collector, generation: Callable[[], int], min_age: float = RENDER_MIN_AGE,
                 max_age: float = RENDER_MAX_AGE, encoders: Encoders = choose_encoder) -> None:
        self._registry = registry
        self._generation = generation
        self._encoders = encoders  # Accept header -> (encoder, content type); prometheus_client's by default
        self._min_age = min_age
        self._max_age = max_age
        self._render_lock = threading.Lock()
        self._gzip_lock = threading.Lock()
        self._by_type: dict[str, _Rendered] = {}

    def _usable(self, rendered: _Rendered | None) -> bool:
        if rendered is None:
            return False
        age = time.monotonic() - rendered.at
        return age < self._min_age or (age < self._max_age and rendered.generation == self._generation())

    def get(self, accept: str, want_gzip: bool) -> tuple[bytes, str]:
        """Return (body, content type) in the format the Accept header negotiates, gzipped if asked."""
        encoder, content_type = self._encoders(accept)
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

    def allows(self, header: str | None) -> bool:
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


def basic_auth(config: PrometheusConfig) -> BasicAuth | None:
    """Return the configured credentials, or None when the endpoint is open (neither user nor password set)."""
    if not (config.basic_auth_username or config.basic_auth_password):
        return None
    return BasicAuth(config.basic_auth_username.encode("utf-8"), config.basic_auth_password.encode("utf-8"))


def tls_context(config: PrometheusConfig) -> ssl.SSLContext | None:
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


class MetricsApp:
    """What the endpoint answers: /metrics from the exposition cache, a landing page at /, 404 elsewhere.

    With credentials configured every request needs them (401 otherwise); the self-probe sends them.
    """

    probe_path = "/metrics"

    def __init__(self, cache: ExpositionCache, auth: BasicAuth | None = None) -> None:
        self.cache = cache
        self.auth = auth
        self.probe_headers: tuple[tuple[str, str], ...] = ()
        if auth is not None:
            token = base64.b64encode(auth.username + b":" + auth.password).decode("ascii")
            self.probe_headers = (("Authorization", f"Basic {token}"),)

    def __call__(self, request: Request) -> Response:
        if self.auth is not None and not self.auth.allows(request.headers.get("authorization")):
            return Response(401, b"Unauthorized\n", headers=(("WWW-Authenticate", _CHALLENGE),))
        route = _ROUTES.get(request.path)
        if route is None:
            return Response(404, b"Not found. Metrics are at /metrics\n")
        return route(self, request)

    def _metrics(self, request: Request) -> Response:
        want_gzip = accepts_gzip(request.headers.get("accept-encoding", ""))
        try:
            body, content_type = self.cache.get(request.headers.get("accept", ""), want_gzip)
        except Exception:  # noqa: BLE001 - a bug in a collector must cost one scrape, never the endpoint
            log.exception("rendering the exposition failed")
            return Response(500, b"rendering the metrics failed; see rctmon's log\n")
        extra = (("Content-Encoding", "gzip"),) if want_gzip else ()
        return Response(200, body, content_type, extra + (("Vary", "Accept, Accept-Encoding"),))

    def _landing(self, request: Request) -> Response:
        return Response(200, LANDING_PAGE, "text/html; charset=utf-8")


_CHALLENGE = 'Basic realm="rctmon", charset="UTF-8"'
_ROUTES: dict[str, Callable[[MetricsApp, Request], Response]] = {
    "/metrics": MetricsApp._metrics,
    "/": MetricsApp._landing,
}
