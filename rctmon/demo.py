"""`rctmon demo`: the built-in simulator plus the daemon with exposition on, so a newcomer sees live metrics."""

from __future__ import annotations

import copy
import logging
import signal
import socket
import subprocess
import sys
import time

from rctmon.config import Config

log = logging.getLogger("rctmon.demo")
SIMULATOR_START_TIMEOUT = 15.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_simulator(port: int) -> subprocess.Popen[bytes]:
    """Start `rctmon simulator` on loopback and wait until it accepts connections."""
    command = [sys.executable, "-m", "rctmon.cli", "simulator", "--host", "127.0.0.1", "--port", str(port),
               "--name", "rctmon demo", "--generators", "2", "--battery-modules", "3", "--latency-ms", "60"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + SIMULATOR_START_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.1)  # polling a port that is about to open; nothing to wait on instead
    proc.kill()
    proc.wait()
    raise RuntimeError("the simulator did not start")


def run_demo(config: Config, port: int | None = None, debug: bool = False) -> int:
    from rctmon.supervisor import run_daemon

    demo = copy.deepcopy(config)
    demo.device.host, demo.device.port = "127.0.0.1", _free_port()
    demo.prometheus.enable = demo.prometheus.exposition = True
    if port is not None:
        demo.prometheus.bind_port = port
    simulator = start_simulator(demo.device.port)
    try:
        host = demo.prometheus.bind_address
        print(f"rctmon demo: simulator on 127.0.0.1:{demo.device.port}; metrics at "
              f"http://{host}:{demo.prometheus.bind_port}/metrics (Ctrl-C stops)", flush=True)
        return run_daemon(demo)
    finally:
        if simulator.poll() is None:
            simulator.send_signal(signal.SIGTERM)
            try:
                simulator.wait(5)
            except subprocess.TimeoutExpired:
                simulator.kill()
                simulator.wait()
