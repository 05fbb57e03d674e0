"""What a new user sees first: `make .venv/.installed` and `make demo` print no ERROR, traceback or warning of
rctmon's own (issue 10: pip's `ERROR: Failed to build 'systemd-python'` and BuildBackendWarning blocks).

    python tests/first_run_check.py              # the demo's start-up and a Ctrl-C, from this checkout's .venv
    python tests/first_run_check.py --install    # also `make .venv/.installed` into a fresh venv (~1 min)

Prints every finding and exits 1 if there is one. tests/test_first_run.py runs both in the suite.
A finding is a line with ERROR, Traceback or Warning/WARNING, unless it is about the machine rather than rctmon
(FOREIGN: pip's complaints about its own configuration or running as root).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FINDING = re.compile(r"ERROR|Traceback|Warning|WARNING")
#: Lines that are the machine's, not the project's: a user elsewhere does not see them.
FOREIGN = (
    re.compile(r"^WARNING: Location '.*' is ignored: it is neither a file nor a directory\.$"),  # a pip.conf here
    re.compile(r"^WARNING: Running pip as the 'root' user"),
)
DEMO_READY = "INFO - inventory: "  # the supervisor has the inverter's inventory: the start-up is over


def findings(output: str) -> list[str]:
    """Return the lines of `output` that a first run must not show."""
    return [line for line in output.splitlines()
            if FINDING.search(line) and not any(pattern.search(line) for pattern in FOREIGN)]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_install(workdir: str, timeout: float = 600.0) -> str:
    """Run the Makefile's install target into a fresh venv under `workdir`; return everything it printed."""
    venv = os.path.join(workdir, "venv")
    done = subprocess.run(["make", "-C", REPO, f"VENV={venv}", f"{venv}/.installed"], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"make {venv}/.installed failed ({done.returncode}):\n{output[-3000:]}")
    return output


def run_demo(rctmon: Sequence[str], settle: float = 3.0, timeout: float = 60.0) -> str:
    """Run `rctmon demo` until its start-up is over and `settle` seconds more, stop it as Ctrl-C in a terminal does
    (SIGINT to its process group); return everything it printed."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen([*rctmon, "demo", "--port", str(_free_port())], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=REPO)
        try:
            deadline = time.monotonic() + timeout
            while DEMO_READY not in _read(out) and proc.poll() is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the demo did not start within {timeout:g} s:\n{_read(out)[-3000:]}")
                time.sleep(0.1)
            metrics = re.search(r"metrics at (http://\S+)", _read(out))
            if metrics:
                with urllib.request.urlopen(metrics[1], timeout=10) as answer:
                    answer.read()  # a first scrape, as the user who follows the printed link does
            time.sleep(settle)
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        return _read(out) + f"\n(exit status {proc.returncode})\n"


def _read(out: object) -> str:
    out.seek(0)  # type: ignore[attr-defined]
    return out.read().decode("utf-8", "replace")  # type: ignore[attr-defined, no-any-return]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--install", action="store_true", help="also run `make .venv/.installed` into a fresh venv")
    args = parser.parse_args(argv)
    found: list[str] = []
    with tempfile.TemporaryDirectory(prefix="rctmon-first-run-") as workdir:
        rctmon = os.path.join(REPO, ".venv", "bin", "rctmon")
        if args.install:
            found += [f"install: {line}" for line in findings(run_install(workdir))]
            rctmon = os.path.join(workdir, "venv", "bin", "rctmon")
        found += [f"demo: {line}" for line in findings(run_demo([rctmon]))]
    for line in found:
        print(line)
    print(f"first run: {len(found)} finding(s)", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
