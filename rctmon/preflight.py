"""Can this machine run what the configuration enables? Checked before any child starts, not by a crash loop.

A valid file can still ask for what the machine cannot give: a module that is not installed, a certificate that is
not one, a spool directory rctmon may not write. Each would pass `check-config` and then crash the child that needs
it, again and again. `preflight` finds them first, for every enabled part, from one table keyed by config section.

API (the CLI runs it before `check-config` and `daemon`; the supervisor runs it on SIGHUP, after
`config.load(path, refuse_empty=True)`):

    problems = preflight(config)      # [] when everything enabled can run here
    if problems:                      # one line each, naming the key: "mqtt.enable: cannot import paho.mqtt ..."
        ...keep the old configuration (SIGHUP) or exit with status 2 (start)

With `clashes=True` (`daemon` at start, and the supervisor on SIGHUP) it also refuses what another process holds:
the metrics port, the spool (`prometheus.bind_port: 127.0.0.1:9831 is in use by pid 812 (rctmon: supervisor) of
rctmon@roof.service`). The caller and its descendants never count as another process, so the supervisor's own
port and its influxdb child's spool pass on SIGHUP. `check-config` leaves it off: the daemon of the very file it
checks may be running, and that is no clash. A holder gets a few seconds to let go (a predecessor still stopping).

The checks run in a short-lived forked process: the caller (the small supervisor) never loads influxdb-client,
paho, ssl or sqlite3 for them, and a check that hangs (an import, a dead NFS mount under the spool) is killed after
`timeout` seconds and reported under the key of the part it was checking. The only trace left is a temporary file
created and removed in the spool directory (or its nearest existing ancestor). Call it from a single-threaded
process, as the CLI and the supervisor are: it forks. It takes a fraction of a second, most of it the imports.
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Mapping
from typing import NoReturn

from rctmon.config import Config

TIMEOUT = 60.0  # seconds for every check together; importing influxdb-client from a cold SD card takes a few


def preflight(config: Config, environ: Mapping[str, str] | None = None, timeout: float = TIMEOUT,
              clashes: bool = False) -> list[str]:
    """Return what keeps this machine from running `config`: one line per problem, each naming its key.

    An empty list means every enabled part can start: its modules import, its certificates and keys load with
    ssl as the server or client would load them, its secret files are readable, and the spool can be written;
    with `clashes`, also that no other process holds the metrics port or the spool.
    `environ` stands for os.environ (where $STATE_DIRECTORY and the secrets' variables are looked up).
    """
    env = dict(os.environ if environ is None else environ)
    reports, unfinished = _in_fork(config, env, timeout, clashes)
    problems = [text for kind, text in reports if kind == "problem"]
    if unfinished:
        begun = [text for kind, text in reports if kind == "begin"]
        problems.append(f"{begun[-1] if begun else 'preflight'}: checking what it needs {unfinished}")
    return problems


def _in_fork(config: Config, environ: dict[str, str], timeout: float,
             clashes: bool) -> tuple[list[tuple[str, str]], str]:
    """Run the checks in a forked child; return its reports and, if it did not finish, how it ended instead."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        _child(config, environ, clashes, read_fd, write_fd)
    os.close(write_fd)
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([read_fd], [], [], remaining)[0]:
                os.kill(pid, signal.SIGKILL)
                return _reports(data), f"did not finish within {timeout:g} s (an import or a file system hangs)"
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
    reports = _reports(data)
    if ("done", "") in reports:
        return reports, ""
    how = f"signal {-os.waitstatus_to_exitcode(status)}" if os.WIFSIGNALED(status) else \
        f"status {os.waitstatus_to_exitcode(status)}"
    return reports, f"crashed the checking process ({how}); a broken installation?"


def _child(config: Config, environ: dict[str, str], clashes: bool, read_fd: int, write_fd: int) -> NoReturn:
    """Run the checks, write one line per report to `write_fd`, and exit without running the parent's clean-up."""
    status = 1
    try:
        os.close(read_fd)
        try:
            signal.set_wakeup_fd(-1)  # the supervisor's wake-up pipe is not ours to write to
        except ValueError:  # not the main thread: there is no wake-up fd to inherit
            pass
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)

        def emit(kind: str, text: str) -> None:
            line = f"{kind}\t{text}".replace("\n", " ").encode("utf-8", "replace") + b"\n"
            while line:
                line = line[os.write(write_fd, line):]

        from rctmon import preflight_checks  # here, not above: what it imports stays in this process

        preflight_checks.run(config, environ, emit, clashes)
        emit("done", "")
        status = 0
    finally:
        os._exit(status)


def _reports(data: bytes) -> list[tuple[str, str]]:
    lines = data.decode("utf-8", "replace").splitlines()
    return [(kind, text) for kind, _, text in (line.partition("\t") for line in lines)]
