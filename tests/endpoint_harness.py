"""What the endpoint's tests share (issue 11): a prometheus child as the supervisor runs it, with its log in a file;
an endpoint served in this process; and the hostile clients of bench/slow_clients.py in a process of their own.

The child is forked and runs its job (`rctmon.exporters.prometheus.PrometheusExporter`, in the loop every child
shares) on a socket bound here and gets the Health the supervisor sends first, exactly as under the supervisor, so
its threads, descriptors and memory are those of the real endpoint (read from /proc/PID). The in-process endpoint
takes any Limits, which the child does not.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import http.client
import logging
import multiprocessing
import os
import re
import resource
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable
from collections.abc import Iterator

import pytest

import support
from rctmon.channel import Channel, ChannelClosed
from rctmon.config import Config
from rctmon.exporters import http as http_module
from rctmon.exporters.http import BasicAuth, ExpositionCache, MetricsApp
from rctmon.exporters.httpserver import DEFAULT_LIMITS, Endpoint, Limits
from rctmon.exporters.listen import bind_endpoint
from rctmon.child import run_child
from rctmon.exporters.prometheus import State, build_registry
from rctmon.messages import Health, Started, Stop
from rctmon.proc import become_child
from rctmon.registry import CHILD_BY_NAME

_FORK = multiprocessing.get_context("fork")
STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


def _child_main(config: Config, channel: Channel, parent_end: Channel, sock: socket.socket, log_path: str,
                limits: Limits | None) -> None:
    parent_end.close()  # or the child itself would keep the channel open and never see the parent go
    become_child("prometheus")
    logging.basicConfig(filename=log_path, level=logging.INFO, force=True,
                        format="%(levelname)s %(name)s %(message)s")
    if limits is not None:  # the child builds its Endpoint with the default limits; this one's has these
        http_module.Endpoint = functools.partial(Endpoint, limits=limits)
    run_child(CHILD_BY_NAME["prometheus"], config, channel, sock)


@dataclass
class Child:
    """A running prometheus child: its process, channel end, listening socket and log file."""

    process: multiprocessing.process.BaseProcess
    channel: Channel
    sock: socket.socket
    log_path: str
    tls_ca: str | None = None

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def wait_started(self) -> None:
        received: list[object] = []

        def started() -> bool:
            try:
                received.extend(self.channel.receive())
            except ChannelClosed:
                raise AssertionError("the child closed its channel before Started") from None
            return any(isinstance(m, Started) for m in received)

        support.wait_for(started, 10, message="Started")

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def connections_from(self, client_ports: set[int]) -> int:
        """Return how many connections from these loopback client ports the child holds a descriptor for.

        Exact where a count of descriptors is not: a connection the child is still closing (a scrape just answered)
        would make a baseline one too high.
        """
        inodes = set()
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                target = os.readlink(f"/proc/{self.pid}/fd/{fd}")
            except OSError:
                continue  # closed meanwhile
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
        with open("/proc/net/tcp", encoding="ascii") as table:
            rows = [line.split() for line in table.readlines()[1:]]
        return sum(1 for row in rows if row[9] in inodes and int(row[2].rsplit(":", 1)[1], 16) in client_ports)

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def log_lines(self) -> list[str]:
        with open(self.log_path, encoding="utf-8", errors="replace") as log:
            return log.read().splitlines()

    def get(self, path: str = "/metrics", timeout: float = 5.0) -> tuple[int, float]:
        """Return (status, seconds) of one GET on a fresh connection, TLS if the child serves TLS."""
        began = time.monotonic()
        if self.tls_ca:
            context = ssl.create_default_context(cafile=self.tls_ca)
            conn: http.client.HTTPConnection = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout,
                                                                           context=context)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            assert response.status != 200 or b"rctmon_process_up" in body or path != "/metrics"
            return response.status, time.monotonic() - began
        finally:
            conn.close()

    def stop(self) -> None:
        if self.process.is_alive() and not self.channel.closed:
            self.channel.send(Stop())
            self.channel.flush()
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.channel.close()
        self.sock.close()


def start_child(log_path: str, tls: tuple[str, str] | None = None, config: Config | None = None,
                limits: Limits | None = None) -> Child:
    """Fork a prometheus child serving a fresh loopback port (TLS with a (cert, key) pair).

    The caller stops it (`Child.stop`), whatever happens."""
    config = config or Config()
    if tls:
        config.prometheus.tls_cert_file, config.prometheus.tls_key_file = tls
    sock = bind_endpoint("127.0.0.1", 0)
    ours, theirs = Channel.pair()
    process = _FORK.Process(target=_child_main, args=(config, theirs, ours, sock, log_path, limits),
                            name="test-endpoint")
    process.start()
    theirs.close()
    ours.send(Health({"collector": {}, "prometheus": {}, "supervisor": {}}))  # it serves once it has this
    return Child(process, ours, sock, log_path, tls[0] if tls else None)


@pytest.fixture
def endpoint_child(tmp_path) -> Iterator[Callable[..., Child]]:
    """Return a function that starts a prometheus child (TLS with a (cert, key) pair); stopped afterwards."""
    started: list[Child] = []

    def start(tls: tuple[str, str] | None = None, config: Config | None = None, limits: Limits | None = None) -> Child:
        started.append(start_child(str(tmp_path / f"prometheus-{len(started)}.log"), tls, config, limits))
        started[-1].wait_started()
        return started[-1]

    yield start
    for child in started:
        child.stop()


class EndpointThread:
    """Serve an Endpoint from an event loop in a thread of its own, so that a test can talk to it synchronously.

    (The prometheus child serves from its own event loop; this is test support.) If `serve()` raises (the listening
    socket can no longer accept), `on_failure` runs in that thread.
    """

    def __init__(self, endpoint: Endpoint, on_failure: Callable[[BaseException], None]) -> None:
        self.endpoint = endpoint
        self._on_failure = on_failure
        self._loop = asyncio.new_event_loop()
        self._task = self._loop.create_task(endpoint.serve())
        self.thread = threading.Thread(target=self._run, name="rctmon-http", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass  # stop()
        except Exception as exc:  # noqa: BLE001 - handed to on_failure: the endpoint is gone
            self._on_failure(exc)
        finally:
            self._loop.close()

    def probe(self, timeout: float = 5.0) -> bool:
        """Return whether the endpoint answers a GET of /metrics of its own (Endpoint.probe) within `timeout`."""
        if self._loop.is_closed():
            return False
        future = asyncio.run_coroutine_threadsafe(self.endpoint.probe(timeout), self._loop)
        try:
            return future.result(timeout + 1.0)
        except concurrent.futures.TimeoutError:
            future.cancel()
            return False

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving (open connections are closed) and wait for the thread."""
        if not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._task.cancel)
            except RuntimeError:  # closed meanwhile
                pass
        if self.thread.is_alive():
            self.thread.join(timeout)


@dataclass
class Served:
    """An endpoint served in this process from its own event loop thread (EndpointThread)."""

    endpoint: Endpoint
    runner: EndpointThread
    failures: list[BaseException]

    @property
    def port(self) -> int:
        return int(self.endpoint.socket.getsockname()[1])

    def get(self, path: str = "/metrics", headers: dict[str, str] | None = None,
            tls_ca: str | None = None) -> tuple[int, bytes]:
        if tls_ca:
            context = ssl.create_default_context(cafile=tls_ca)
            conn: http.client.HTTPConnection = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=5,
                                                                           context=context)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()


def metrics_app(auth: BasicAuth | None = None) -> MetricsApp:
    state = State()
    return MetricsApp(ExpositionCache(build_registry(state, Config()), state.current_generation), auth)


@pytest.fixture
def endpoint() -> Iterator[Callable[..., Served]]:
    """Return a function that serves an endpoint over health metrics in a thread; stopped afterwards."""
    served: list[Served] = []

    def start(limits: Limits = DEFAULT_LIMITS, auth: BasicAuth | None = None, tls: ssl.SSLContext | None = None,
              app: object = None) -> Served:
        failures: list[BaseException] = []
        endpoint_ = Endpoint(bind_endpoint("127.0.0.1", 0), app or metrics_app(auth), tls, limits)  # type: ignore
        runner = EndpointThread(endpoint_, on_failure=failures.append)
        served.append(Served(endpoint_, runner, failures))
        runner.start()
        return served[-1]

    yield start
    for one in served:
        one.runner.stop()
        one.endpoint.socket.close()


@pytest.fixture
def certificate(tmp_path) -> tuple[str, str]:
    """Return (certificate, key) files of a self-signed certificate for 127.0.0.1, made with the openssl CLI."""
    openssl = support.require_binary("openssl")
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=20)
    return cert, key


def need_descriptors(count: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE up to the hard limit for `count` more sockets; skip if it is too low.

    Children forked or started afterwards inherit the raised limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = count + len(os.listdir("/proc/self/fd")) + 64
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below the {needed} descriptors this test needs")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed if hard == resource.RLIM_INFINITY else hard, hard))


@dataclass
class Holder:
    """bench/slow_clients.py running in a process of its own, holding hostile connections."""

    proc: subprocess.Popen[bytes]
    out_path: str

    def counters(self) -> dict[str, int]:
        with open(self.out_path, encoding="utf-8", errors="replace") as out:
            lines = [line for line in out.read().splitlines() if line.startswith("held ")]
        if not lines:
            assert self.proc.poll() is None, f"the slow clients exited with {self.proc.returncode}"
            return {}
        words = lines[-1].split()
        return {name: int(number) for name, number in zip(words[::2], words[1::2])}

    def wait_connected(self, count: int, timeout: float = 30.0) -> None:
        support.wait_for(lambda: self.counters().get("connects", 0) >= count, timeout, interval=0.2,
                         message=f"{count} slow clients to connect")


@pytest.fixture
def slow_clients(tmp_path) -> Iterator[Callable[[int, int, str], Holder]]:
    """Return a function that starts bench/slow_clients.py against a port; every holder is stopped afterwards."""
    holders: list[Holder] = []

    def start(port: int, count: int, kinds: str) -> Holder:
        need_descriptors(count)
        out_path = str(tmp_path / f"slow-clients-{len(holders)}.out")
        with open(out_path, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "bench.slow_clients", str(port), str(count), kinds],
                                    stdout=out, stderr=subprocess.STDOUT, cwd=support.REPO)
        holders.append(Holder(proc, out_path))
        return holders[-1]

    yield start
    for holder in holders:
        support.stop_process(holder.proc)


def statuses(answer: bytes) -> list[int]:
    """Return the status codes of every response in a raw answer, in order."""
    return [int(code) for code in STATUS_LINE.findall(answer)]


def exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes on a fresh connection; return all the server answers until it closes (a reset ends it too)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):  # the server answered and closed before taking it all
            pass
        answer = bytearray()
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return bytes(answer)
            except socket.timeout:
                raise AssertionError(f"the server did not close within {timeout} s; it sent {bytes(answer)[:200]!r}") \
                    from None
            if not chunk:
                return bytes(answer)
            answer += chunk
