"""Helpers shared by the tests: free loopback ports, polling with a deadline, starting and stopping processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, TypeVar

import pytest

T = TypeVar("T")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Real bytes recorded from inverters (copied from the project's shared fixtures; see fixtures/README.md).
FIXTURES = os.path.join(REPO, "tests", "fixtures")


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], T | None], timeout: float, interval: float = 0.05,
             message: str = "condition") -> T:
    """Poll `predicate` until it returns something truthy and return that; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - a poll may fail until the thing is up
            last_exc = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}"
                                 + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


def require_binary(name: str) -> str:
    """Return the path of a program the test needs; skip locally, fail in CI, when it is missing."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail(f"{name} is required in CI (scripts/install-system-deps installs it)")
    pytest.skip(f"{name} is not installed")
    raise AssertionError("unreachable")


def rctmon_command(*args: str) -> list[str]:
    """Return the argv that runs rctmon from this checkout with the test's interpreter."""
    return [sys.executable, "-m", "rctmon.cli", *args]


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int | None:
    """Stop a process started by a test: SIGTERM, wait, then SIGKILL. Return its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def child_pids(pid: int) -> dict[str, int]:
    """Return {process title: pid} of the direct children of `pid` (rctmon names each by its role)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids = [int(p) for p in f.read().split()]
    except OSError:
        return {}
    result = {}
    for child in pids:
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                result[f.read().split(b"\0")[0].decode()] = child
        except OSError:
            continue
    return result


def pid_gone(pid: int) -> bool:
    """Return whether a process no longer runs (a zombie awaiting its parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
