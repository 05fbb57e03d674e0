"""Hold many hostile connections to an HTTP endpoint: idle ones, ones dripping a byte at a time, ones reconnecting.

These are the slow clients of issue 11, which delayed a legitimate scrape of the old endpoint to 8 s (300 dripping),
7 to 28 s (600 reconnecting) and past Prometheus' 10 s scrape timeout (2,000 held). The holder keeps `count`
connections open in a mix of three kinds, and opens a new one whenever the server closes one:

- idle: connects and sends nothing;
- drip: sends a request head that never ends, one byte every `drip_interval` seconds;
- reconnect: sends the first line of a request, closes after `reconnect_after` seconds and connects again.

One thread and non-blocking sockets, so it runs beside the client it disturbs without taking a core. As a script it
runs until SIGTERM and prints a line of counters every second (the benchmark and the tests read them):

    python -m bench.slow_clients PORT [COUNT [KINDS]]     # KINDS: comma-separated, e.g. idle,drip
"""

from __future__ import annotations

import errno
import heapq
import resource
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from itertools import cycle, islice

HOST = "127.0.0.1"
KINDS = ("idle", "drip", "reconnect")
DRIP_HEAD = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Drip: "
CONNECTS_PER_STEP = 64  # new connections per turn of the loop: a burst of a thousand would only overflow the backlog


@dataclass
class Counters:
    connects: int = 0  # connections established
    closed_by_server: int = 0  # ended by the server (end of file or reset), not by the holder
    connect_failures: int = 0
    held: int = 0  # open right now

    def line(self) -> str:
        return (f"held {self.held} connects {self.connects} closed_by_server {self.closed_by_server} "
                f"connect_failures {self.connect_failures}")


@dataclass
class _Client:
    kind: str
    sock: socket.socket | None = None
    connected: bool = False
    sent: int = 0
    generation: int = 0  # bumped on every (re)connect: timers of an earlier connection are ignored


@dataclass
class SlowClients:
    """Keep `count` hostile connections to host:port open, in the mix of KINDS, until `stop()`."""

    port: int
    count: int
    host: str = HOST
    kinds: tuple[str, ...] = KINDS
    drip_interval: float = 0.5
    reconnect_after: float = 1.0
    counters: Counters = field(default_factory=Counters)

    def __post_init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._clients = [_Client(kind) for kind in islice(cycle(self.kinds), self.count)]
        self._timers: list[tuple[float, int, int]] = []  # (when, client index, generation)
        self._closed: list[int] = list(range(self.count))  # clients to (re)connect
        self._running = True

    def stop(self) -> None:
        self._running = False

    def run(self, report_every: float = 0.0) -> None:
        """Hold the connections until `stop()`; print the counters every `report_every` seconds if above 0."""
        next_report = time.monotonic() + report_every
        try:
            while self._running:
                self._open_some()
                timeout = max(0.0, self._timers[0][0] - time.monotonic()) if self._timers else 0.2
                for key, _ in self._selector.select(min(timeout, 0.2)):
                    self._event(key.data)
                self._due(time.monotonic())
                if report_every and time.monotonic() >= next_report:
                    print(self.counters.line(), flush=True)
                    next_report += report_every
        finally:
            self._running = False
            for index in range(self.count):
                self._drop(index, by_server=False)
            self._selector.close()

    def _open_some(self) -> None:
        batch, self._closed = self._closed[:CONNECTS_PER_STEP], self._closed[CONNECTS_PER_STEP:]
        for index in batch:
            self._open(index)

    def _open(self, index: int) -> None:
        client = self._clients[index]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex((self.host, self.port))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            self.counters.connect_failures += 1
            self._closed.append(index)
            return
        client.sock, client.connected, client.sent = sock, False, 0
        client.generation += 1
        self._selector.register(sock, selectors.EVENT_WRITE, index)

    def _event(self, index: int) -> None:
        client = self._clients[index]
        sock = client.sock
        if sock is None:
            return
        if not client.connected:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self.counters.connect_failures += 1
                self._drop(index, by_server=False)
                return
            client.connected = True
            self.counters.connects += 1
            self.counters.held += 1
            self._selector.modify(sock, selectors.EVENT_READ, index)
            if client.kind == "reconnect":
                self._send(index, b"GET /metrics HTTP/1.1\r\n")
                self._at(time.monotonic() + self.reconnect_after, index)
            elif client.kind == "drip":
                self._at(time.monotonic(), index)
            return
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the server closed it: deadline, shedding, or an answer that ends the connection
            self._drop(index, by_server=True)

    def _at(self, when: float, index: int) -> None:
        heapq.heappush(self._timers, (when, index, self._clients[index].generation))

    def _due(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            _, index, generation = heapq.heappop(self._timers)
            client = self._clients[index]
            if client.sock is None or client.generation != generation:
                continue  # that connection is gone
            if client.kind == "reconnect":
                self._drop(index, by_server=False)
                continue
            self._send(index, DRIP_HEAD[client.sent:client.sent + 1] or b"a")
            self._at(now + self.drip_interval, index)

    def _send(self, index: int, data: bytes) -> None:
        client = self._clients[index]
        assert client.sock is not None
        try:
            client.sent += client.sock.send(data)
        except BlockingIOError:
            pass
        except OSError:
            self._drop(index, by_server=True)

    def _drop(self, index: int, by_server: bool) -> None:
        client = self._clients[index]
        if client.sock is None:
            return
        if client.connected:
            self.counters.held -= 1
            self.counters.closed_by_server += by_server
        try:
            self._selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()
        client.sock, client.connected = None, False
        if self._running:
            self._closed.append(index)


def raise_file_limit(needed: int) -> bool:
    """Raise this process's soft RLIMIT_NOFILE towards the hard limit; return whether `needed` descriptors fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        soft = hard if hard == resource.RLIM_INFINITY else min(hard, max(needed, soft))
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft == resource.RLIM_INFINITY or soft >= needed


def main(argv: list[str]) -> int:
    port = int(argv[0])
    count = int(argv[1]) if len(argv) > 1 else 1000
    kinds = tuple(argv[2].split(",")) if len(argv) > 2 else KINDS
    if not set(kinds) <= set(KINDS):
        print(f"unknown kinds {sorted(set(kinds) - set(KINDS))}; known: {', '.join(KINDS)}", file=sys.stderr)
        return 2
    if not raise_file_limit(count + 64):
        print(f"cannot open {count} descriptors (RLIMIT_NOFILE)", file=sys.stderr)
        return 2
    holder = SlowClients(port, count, kinds=kinds)
    signal.signal(signal.SIGTERM, lambda *_: holder.stop())
    signal.signal(signal.SIGINT, lambda *_: holder.stop())
    holder.run(report_every=1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
