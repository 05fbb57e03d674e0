"""The HTTP endpoint (rctmon/exporters/httpserver.py) served in this process: protocol, deadlines, the cap, probe.

The attacks of issue 11 have files of their own (test_endpoint_parsing.py, test_endpoint_tls_flood.py,
test_endpoint_slow_clients.py); this file checks the parts they rely on, each with limits small enough to be quick.
"""

from __future__ import annotations

import base64
import http.client
import logging
import multiprocessing
import os
import re
import resource
import socket
import ssl
import threading
import time

import pytest

import support
from endpoint_harness import (EndpointThread, certificate, endpoint, exchange, metrics_app, need_descriptors,
                              slow_clients, statuses)
from rctmon.config import PrometheusConfig
from rctmon.exporters.http import BasicAuth, tls_context
from rctmon.exporters.httpserver import (Endpoint, Limits, RefusalLog, Request, Response,
                                         _connection_budget, client_key, request_path)
from rctmon.exporters.listen import bind_endpoint

__all__ = ["certificate", "endpoint", "slow_clients"]  # fixtures, imported so that pytest finds them here

pytestmark = pytest.mark.timeout(30)

GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def read_to_end(sock: socket.socket) -> bytes:
    """Return everything the server sends until it closes the connection (a reset ends it too)."""
    data = bytearray()
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk


def context_switches(native_id: int) -> int:
    """Return how often a thread of this process has been scheduled off the CPU so far (Linux)."""
    try:
        with open(f"/proc/self/task/{native_id}/status") as status:
            fields = dict(line.split(":", 1) for line in status if "ctxt_switches" in line)
    except OSError:
        pytest.skip("no /proc/self/task here")
    return sum(int(value) for value in fields.values())


# --- the protocol ---------------------------------------------------------------------------------------------------


def test_issue6_an_idle_endpoint_never_wakes_up(endpoint):
    """No timer runs while no client is connected, and a kept-alive connection wakes the loop at its deadline only."""
    served = endpoint()
    assert served.get("/")[0] == 200
    native_id = served.runner.thread.native_id
    assert native_id is not None
    support.wait_for(lambda: served.endpoint.connections == 0, 5, message="the connection to close")
    before = context_switches(native_id)
    time.sleep(1.0)
    assert context_switches(native_id) == before
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=5)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        time.sleep(0.2)
        before = context_switches(native_id)
        time.sleep(1.0)
        assert context_switches(native_id) == before
    finally:
        conn.close()


def test_issue6_a_hundred_clients_at_once_are_all_answered(endpoint):
    served = endpoint()
    clients = [socket.create_connection(("127.0.0.1", served.port), timeout=10) for _ in range(100)]
    try:
        for client in clients:
            client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answers = [read_to_end(client) for client in clients]
    finally:
        for client in clients:
            client.close()
    assert all(a.startswith(b"HTTP/1.1 200 OK\r\n") and b"rctmon_process_up" in a for a in answers)


def test_pipelined_requests_are_answered_in_order_and_http10_closes(endpoint):
    served = endpoint()
    answer = exchange(served.port, b"\r\n" + GET + b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n"
                                   b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert statuses(answer) == [200, 404, 200]
    assert answer.endswith(b"\r\n\r\n"), "HEAD: the headers, no body"
    assert b"Connection: close\r\n" in answer.rsplit(b"HTTP/1.1", 1)[1]
    many = 2000  # far more than the loop answers of one connection in a turn
    answer = exchange(served.port, GET * many + b"GET /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert statuses(answer) == [200] * many + [404]
    answer = exchange(served.port, b"GET / HTTP/1.0\r\n\r\n")  # HTTP/1.0 without keep-alive: closed after
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"</html>\n")


def test_a_small_body_on_a_get_is_read_and_ignored(endpoint):
    served = endpoint()
    answer = exchange(served.port, b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                                   b"GET /nothing HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                   b"3\r\nabc\r\n0\r\n\r\n"
                                   b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert statuses(answer) == [200, 404, 200]
    chunk = b"1000\r\n" + b"a" * 4096 + b"\r\n"
    served = endpoint(Limits(max_body=8192))
    answer = exchange(served.port, b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 3
                      + b"0\r\n\r\n")
    assert statuses(answer) == [413]


def test_absolute_form_targets_are_routed_by_their_path(endpoint):
    served = endpoint()
    answer = exchange(served.port, b"GET http://127.0.0.1:9831/metrics?x=1 HTTP/1.1\r\nHost: 127.0.0.1:9831\r\n"
                                   b"Connection: close\r\n\r\n")
    assert statuses(answer) == [200] and b"rctmon_process_up" in answer


def test_a_repeated_request_head_is_parsed_once_and_answered_the_same(endpoint):
    """A scraper sends the same head every time: the endpoint remembers what h11 made of it, and only of a head
    that came whole and alone and was accepted."""
    served = endpoint(auth=BasicAuth(b"u", b"p"))
    token = base64.b64encode(b"u:p").decode()
    head = f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\r\n\r\n".encode()
    conn = socket.create_connection(("127.0.0.1", served.port), timeout=5)
    try:
        for _ in range(3):
            conn.sendall(head)
            answer = b""
            while not answer.endswith(b"# EOF\n") and b"rctmon_process_up" not in answer.rsplit(b"\r\n\r\n", 1)[-1]:
                answer += conn.recv(65536)
            assert statuses(answer) == [200]
    finally:
        conn.close()
    assert served.endpoint.stats.heads_reused == 2
    unauthorized = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert [statuses(exchange(served.port, unauthorized)) for _ in range(2)] == [[401], [401]]  # auth: every time
    assert served.endpoint.stats.heads_reused == 3
    refused = b"GET /metrics HTTP/1.1\r\n\r\n"  # no Host: refused, and never remembered
    assert [statuses(exchange(served.port, refused)) for _ in range(2)] == [[400], [400]]
    pipelined = GET + b"GET /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert [statuses(exchange(served.port, pipelined)) for _ in range(2)] == [[401, 401], [401, 401]]
    assert served.endpoint.stats.heads_reused == 3


@pytest.mark.parametrize("target, path", [
    ("/metrics", "/metrics"), ("/metrics?a=b", "/metrics"), ("http://h/metrics", "/metrics"),
    ("HTTPS://h:1/x?y", "/x"), ("http://h", "/"), ("http://[::1]:80/m", "/m"), ("http://h?q", "/"),
    ("http://[zz]/", None), ("*", None), ("h:80", None), ("http://u@h/", None), ("ftp://h/", None), ("", None),
])
def test_request_path(target, path):
    assert request_path(target) == path


@pytest.mark.parametrize("address, key", [
    (("127.0.0.1", 5), "127.0.0.1"),
    (("2001:db8:1:2:3:4:5:6", 5, 0, 0), "2001:db8:1:2::/64"),
    (("::ffff:10.0.0.1", 5, 0, 0), "10.0.0.1"),
    (("fe80::1%eth0", 5, 0, 2), "fe80::/64"),
    ("/run/socket", "/run/socket"),
])
def test_client_key_is_the_address_or_its_ipv6_64(address, key):
    assert client_key(address) == key


# --- deadlines ------------------------------------------------------------------------------------------------------


def test_a_silent_or_dripping_client_is_closed_at_its_deadline_and_blocks_no_one(endpoint):
    served = endpoint(Limits(head_timeout=0.5))
    silent = socket.create_connection(("127.0.0.1", served.port), timeout=5)
    dripping = socket.create_connection(("127.0.0.1", served.port), timeout=5)
    try:
        began = time.monotonic()
        assert served.get()[0] == 200
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\n":  # bytes that keep coming do not extend the deadline
            try:
                dripping.send(bytes([byte]))
            except OSError:  # closed already
                break
            time.sleep(0.05)
        assert read_to_end(silent) == b""
        assert read_to_end(dripping) == b""
        assert time.monotonic() - began < 3.0
        assert served.endpoint.stats.timed_out["fresh"] >= 1 and served.endpoint.stats.timed_out["head"] >= 1
    finally:
        silent.close()
        dripping.close()


def test_a_tls_handshake_has_a_deadline(endpoint, certificate):
    cert, key = certificate
    served = endpoint(Limits(handshake_timeout=0.5), tls=tls_context(PrometheusConfig(tls_cert_file=cert,
                                                                                      tls_key_file=key)))
    bare = socket.create_connection(("127.0.0.1", served.port), timeout=5)
    half = socket.create_connection(("127.0.0.1", served.port), timeout=5)
    try:
        half.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, and then nothing
        began = time.monotonic()
        assert read_to_end(bare) == b"" and read_to_end(half) == b""
        assert time.monotonic() - began < 3.0
        assert served.endpoint.stats.timed_out["fresh"] == 1 and served.endpoint.stats.timed_out["handshake"] == 1
    finally:
        bare.close()
        half.close()


class _Big:
    """An app answering 8 MiB, more than loopback's socket buffers take: the client must read for it to leave."""

    probe_path = "/"
    probe_headers = ()

    def __call__(self, request: Request) -> Response:
        return Response(200, b"x" * (8 << 20))


def test_a_response_the_client_does_not_read_is_dropped_at_the_write_deadline(endpoint):
    served = endpoint(Limits(write_timeout=0.5), app=_Big())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        sock.connect(("127.0.0.1", served.port))
        sock.sendall(GET)
        support.wait_for(lambda: served.endpoint.stats.timed_out["writing"] == 1, 5, message="the write deadline")
        assert served.endpoint.connections == 0
    finally:
        sock.close()


# --- the cap --------------------------------------------------------------------------------------------------------


def _closed(sock: socket.socket) -> bool:
    """Return whether the server has closed a connection that it was not going to answer anyway."""
    sock.settimeout(0.05)
    try:
        return sock.recv(1) == b""
    except socket.timeout:
        return False
    except ConnectionResetError:
        return True


def test_at_the_cap_the_connection_that_made_the_least_progress_is_closed_for_a_new_one(endpoint):
    """Never sent a byte, then idle keep-alive, then a request under way; the oldest first within each."""
    served = endpoint(Limits(max_connections=3))
    opened: list[socket.socket] = []

    def connect(first_bytes: bytes = b"", answered: bool = False) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", served.port), timeout=5)
        opened.append(sock)
        if first_bytes:
            sock.sendall(first_bytes)
        if answered:  # read the whole answer: the connection is idle (kept alive) afterwards
            support.wait_for(lambda: sock.recv(65536).endswith(b"</html>\n"), 5, message="an answer")
        return sock

    def let_one_in() -> None:
        """Connect a client that is answered (so another connection has to go), once the cap is reached."""
        support.wait_for(lambda: served.endpoint.connections == 3, 5, message="three connections")
        assert statuses(exchange(served.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")) == [200]
        support.wait_for(lambda: served.endpoint.connections == 2, 5, message="a connection closed for the new one")

    try:
        fresh, idle, mid_head = connect(), connect(GET, answered=True), connect(b"GET / HTTP/1.1\r\n")
        let_one_in()
        assert _closed(fresh) and not _closed(idle) and not _closed(mid_head)
        newer_head = connect(b"GET / HTTP/1.1\r\n")
        let_one_in()
        assert _closed(idle) and not _closed(mid_head) and not _closed(newer_head)
        newest_head = connect(b"GET / HTTP/1.1\r\n")
        let_one_in()
        assert _closed(mid_head) and not _closed(newer_head) and not _closed(newest_head)
        assert served.endpoint.stats.shed == 3
    finally:
        for sock in opened:
            sock.close()


# --- the listening socket, the probe --------------------------------------------------------------------------------


def test_serve_raises_when_the_listening_socket_can_no_longer_accept(endpoint):
    served = endpoint()
    assert served.get()[0] == 200
    served.endpoint.socket.shutdown(socket.SHUT_RDWR)
    support.wait_for(lambda: served.failures, 5, message="serve() to raise")
    assert isinstance(served.failures[0], OSError)
    assert not served.runner.thread.is_alive() or served.runner.thread.join(5) is None


def test_the_probe_goes_through_tls_and_basic_auth(endpoint, certificate):
    cert, key = certificate
    tls = tls_context(PrometheusConfig(tls_cert_file=cert, tls_key_file=key))
    served = endpoint(auth=BasicAuth(b"prom", b"pw"), tls=tls)
    assert served.runner.probe(5.0)
    token = base64.b64encode(b"prom:pw").decode()
    assert served.get(headers={"Authorization": f"Basic {token}"}, tls_ca=cert)[0] == 200
    assert served.get(tls_ca=cert)[0] == 401

    class WrongCredentials:
        probe_path = "/metrics"
        probe_headers = (("Authorization", "Basic " + base64.b64encode(b"prom:nope").decode()),)
        __call__ = served.endpoint.app.__call__

    served.endpoint.app = WrongCredentials()
    assert not served.runner.probe(2.0)
    served.runner.stop()
    assert not served.runner.probe(1.0)


def test_https_keeps_connections_alive_and_limits_the_head(endpoint, certificate, caplog):
    cert, key = certificate
    served = endpoint(tls=tls_context(PrometheusConfig(tls_cert_file=cert, tls_key_file=key)))
    context = ssl.create_default_context(cafile=cert)
    conn = http.client.HTTPSConnection("127.0.0.1", served.port, timeout=5, context=context)
    try:
        for path, status in (("/", 200), ("/metrics", 200), ("/nothing", 404)):
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            assert response.status == status, path
        assert served.endpoint.stats.accepted == 1
    finally:
        conn.close()
    with context.wrap_socket(socket.create_connection(("127.0.0.1", served.port), timeout=5),
                             server_hostname="127.0.0.1") as secured:
        secured.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Huge: " + b"a" * 100_000 + b"\r\n\r\n")
        assert secured.recv(100).startswith(b"HTTP/1.1 431 ")
    with context.wrap_socket(socket.create_connection(("127.0.0.1", served.port), timeout=5),
                             server_hostname="127.0.0.1") as secured:
        secured.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := secured.recv(65536):  # the server's close_notify ends it
            answer += chunk
        assert statuses(answer) == [200] and answer.endswith(b"</html>\n")
    assert statuses(exchange(served.port, GET)) == [400]  # plain HTTP to the HTTPS endpoint
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


# --- logging and descriptors ----------------------------------------------------------------------------------------


def test_refusals_are_logged_once_per_client_a_minute_and_a_few_lines_in_all(caplog):
    refusals = RefusalLog(interval=60.0, max_clients=4, per_interval=5)
    with caplog.at_level(logging.WARNING, logger="rctmon.prometheus.http"):
        for _ in range(100):
            refusals.refused("10.0.0.1", 400, "bad")
        assert len(caplog.records) == 1
        for n in range(50):  # many clients: at most per_interval lines in the interval
            refusals.refused(f"10.0.1.{n}", 400, "bad")
        assert len(caplog.records) == 5
    assert all(r.exc_info is None for r in caplog.records)
    assert len(refusals._last) == 4  # the table of clients is bounded


def test_the_cap_follows_rlimit_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 132, hard))
    try:
        assert 90 <= _connection_budget(1024) <= 100
        assert _connection_budget(10) == 10
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


_FORK = multiprocessing.get_context("fork")


def _serve_with_few_descriptors(sock: socket.socket, ready: multiprocessing.synchronize.Event, spare: int) -> None:
    """Serve, then lower RLIMIT_NOFILE so that accept() fails with EMFILE after `spare` more connections."""
    runner = EndpointThread(Endpoint(sock, metrics_app()), on_failure=lambda _exc: os._exit(3))  # the test sees it
    runner.start()
    assert runner.probe(5.0)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + spare, hard))
    ready.set()
    threading.Event().wait(60)


@pytest.mark.timeout(60)
def test_out_of_descriptors_the_endpoint_sheds_and_goes_on_serving(slow_clients):
    """accept() failing with EMFILE (the cap above what RLIMIT_NOFILE leaves) sheds connections, never stops."""
    sock = bind_endpoint("127.0.0.1", 0)
    ready = _FORK.Event()
    process = _FORK.Process(target=_serve_with_few_descriptors, args=(sock, ready, 20))
    process.start()
    try:
        assert ready.wait(10)
        port = int(sock.getsockname()[1])
        holder = slow_clients(port, 100, "idle")
        holder.wait_connected(100)
        for _ in range(5):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                began = time.monotonic()
                conn.request("GET", "/metrics")
                response = conn.getresponse()
                assert response.status == 200 and b"rctmon_process_up" in response.read()
                assert time.monotonic() - began < 2.0
            finally:
                conn.close()
        assert process.is_alive()
    finally:
        process.kill()
        process.join(5)
        sock.close()


def test_a_thousand_connections_do_not_start_a_thread(endpoint):
    need_descriptors(2100)  # both ends in this process
    served = endpoint()
    threads = len(os.listdir("/proc/self/task"))
    held = [socket.create_connection(("127.0.0.1", served.port), timeout=5) for _ in range(1000)]
    try:
        support.wait_for(lambda: served.endpoint.connections >= 1000, 10, message="a thousand connections")
        assert len(os.listdir("/proc/self/task")) == threads
        assert served.get()[0] == 200
    finally:
        for sock in held:
            sock.close()


def test_status_lines_carry_their_reason_phrase(endpoint):
    served = endpoint()
    answer = exchange(served.port, b"GET /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert re.match(rb"HTTP/1\.1 404 Not Found\r\n", answer)
    assert b"\r\nServer: rctmon/" in answer and b"\r\nDate: " in answer
