"""Can this machine run what the configuration enables? Checked before any child starts, not by a crash loop.

A valid file can still ask for what the machine cannot give: a module that is not installed, a certificate that is
not one, a spool directory rctmon may not write. Each would pass `check-config` and then crash the child that needs
it, again and again. `preflight` finds them first, for every enabled part, from one table keyed by config section.

API (the CLI runs it before `check-config` and `daemon`; the supervisor runs it on SIGHUP):

    problems = preflight(config)      # [] when everything enabled can run here
    if problems:                      # one line each, naming the key: "mqtt.enable: cannot import paho.mqtt ..."
        ...keep the old configuration (SIGHUP) or exit with status 2 (start)

It has no side effects beyond a short-lived forked process (the imports are tried there, so that the caller, the
small supervisor, never loads influxdb-client or paho) and a temporary file created and removed in the spool
directory (or in its nearest existing ancestor). Call it from a single-threaded process, as the CLI and the
supervisor are: it forks. It takes well under a second, most of it the imports.
"""

from __future__ import annotations

import importlib
import os
import select
import signal
import ssl
import stat
import tempfile
import time
from dataclasses import dataclass
from typing import Callable
from collections.abc import Iterable, Iterator, Mapping

from rctmon.config import SECRETS, Config, read_secret_file
from rctmon.exporters.spool import spool_path

IMPORT_TIMEOUT = 60.0  # seconds for every import together; influxdb-client from a cold SD card takes a few
MAX_PEM_BYTES = 1 << 20  # a certificate chain is a few kB; /dev/zero as a certificate must not hang us

Check = Callable[[Config, Mapping[str, str]], Iterable[str]]


@dataclass(frozen=True)
class Needs:
    """What one part of rctmon needs from the machine while its section enables it."""

    enabled: Callable[[Config], bool]
    key: str  # the key a problem with a module is reported under (the one that enabled the part)
    modules: tuple[tuple[str, str], ...] = ()  # (module to import, distribution that provides it)
    checks: tuple[Check, ...] = ()


# --- files ----------------------------------------------------------------------------------------------------------

def _file_problem(key: str, path: str, limit: int = MAX_PEM_BYTES) -> str | None:
    """Return why `path` is no small readable regular file, or None."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            return f"{key}: {path} is not a regular file"
        if info.st_size > limit:
            return f"{key}: {path} is larger than {limit // 1024} kB; not a PEM file"
        with open(path, "rb"):
            return None
    except OSError as exc:
        return f"{key}: cannot read {path}: {exc.strerror or exc}"


class _PassphraseNeeded(Exception):
    """The private key is encrypted: nobody is there to type its passphrase."""


def _refuse_passphrase() -> bytes:
    raise _PassphraseNeeded


def _certificate_problem(key: str, path: str) -> str | None:
    """Return why `path` holds no PEM certificate ssl can load, or None."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
        return None
    except (ssl.SSLError, OSError, ValueError) as exc:
        return f"{key}: {path} holds no PEM certificate ssl can load ({_ssl_reason(exc)})"


def _key_pair_problem(purpose: int, cert_key: str, cert: str, key_key: str, key: str) -> str | None:
    """Return why ssl cannot load the certificate with its private key as the server or client would, or None."""
    key_key, key_shown = (key_key, key) if key else (cert_key, cert)  # no key file: the key is in the cert file
    try:
        ssl.SSLContext(purpose).load_cert_chain(cert, key or None, password=_refuse_passphrase)
        return None
    except _PassphraseNeeded:
        return (f"{key_key}: the private key in {key_shown} is encrypted and rctmon cannot ask for its passphrase; "
                f"store it unencrypted, readable by rctmon only")
    except (ssl.SSLError, OSError, ValueError) as exc:
        if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
            return f"{key_key}: the private key in {key_shown} does not belong to the certificate in {cert}"
        return f"{key_key}: {key_shown} holds no PEM private key ssl can load ({_ssl_reason(exc)})"


def _ssl_reason(exc: Exception) -> str:
    return str(getattr(exc, "reason", None) or exc).replace("_", " ").lower()


def _tls_problems(purpose: int, cert_key: str, cert: str, key_key: str, key: str,
                  ca_key: str = "", ca: str = "") -> Iterator[str]:
    """Yield what keeps ssl from loading the files of one TLS set-up, each naming its key."""
    if ca and (problem := _file_problem(ca_key, ca) or _certificate_problem(ca_key, ca)):
        yield problem
    if not cert:
        return
    unreadable = [problem for k, p in ((cert_key, cert), (key_key, key)) if p and (problem := _file_problem(k, p))]
    yield from unreadable
    if not unreadable and (problem := _certificate_problem(cert_key, cert)
                           or _key_pair_problem(purpose, cert_key, cert, key_key, key)):
        yield problem


def _prometheus_tls(config: Config, environ: Mapping[str, str]) -> Iterator[str]:
    p = config.prometheus
    if p.tls_cert_file:
        yield from _tls_problems(ssl.PROTOCOL_TLS_SERVER, "prometheus.tls_cert_file", p.tls_cert_file,
                                 "prometheus.tls_key_file", p.tls_key_file)


def _mqtt_tls(config: Config, environ: Mapping[str, str]) -> Iterator[str]:
    t = config.mqtt.tls
    if t.enable:
        yield from _tls_problems(ssl.PROTOCOL_TLS_CLIENT, "mqtt.tls.cert_file", t.cert_file,
                                 "mqtt.tls.key_file", t.key_file, "mqtt.tls.ca_file", t.ca_file)


def _secret_files(section: str) -> Check:
    def check(config: Config, environ: Mapping[str, str]) -> Iterator[str]:
        for _, env, file_key in SECRETS:
            name, field_name = file_key.split(".")
            path = getattr(getattr(config, name), field_name)
            if name != section or not path or environ.get(env):
                continue
            try:
                read_secret_file(path)
            except OSError as exc:
                yield f"{file_key}: cannot read {path}: {exc.strerror or exc}"
            except ValueError as exc:
                yield f"{file_key}: {exc}"
    return check


def _spool_directory(config: Config, environ: Mapping[str, str]) -> Iterator[str]:
    """Yield why the influxdb child could not create or write its spool (`spool.spool_path`), if it could not."""
    key = "influxdb.spool_path"
    try:
        path = spool_path(config.influxdb, environ)
    except (RuntimeError, KeyError):  # no home directory to put the default under
        yield f"{key}: empty, and neither $STATE_DIRECTORY nor a home directory says where the spool goes; set it"
        return
    where = path
    try:
        if path.exists() and not path.is_file():
            yield f"{key}: {path} exists and is not a regular file"
            return
        existing = path.parent
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            yield f"{key}: cannot create {path}: {existing} is not a directory"
            return
        where = existing
        with tempfile.TemporaryFile(dir=existing):  # the real test: permissions, ACLs, read-only mounts, a full disk
            pass
        if path.exists():
            where = path
            with open(path, "r+b"):
                pass
    except OSError as exc:
        yield f"{key}: cannot write the spool {path}: {where}: {exc.strerror or exc}"


# --- modules --------------------------------------------------------------------------------------------------------

def import_problems(modules: Iterable[str], timeout: float = IMPORT_TIMEOUT) -> dict[str, str]:
    """Return {module: why it cannot be imported} for those of `modules` that cannot, trying them in a fork.

    A real import, not a look-up: an installed package whose own dependency is missing fails here as it would
    in the child. The fork keeps the caller free of what it imports.
    """
    names = list(modules)
    if not names:
        return {}
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: try each import, report the failures, exit without running the parent's cleanup
        try:
            os.close(read_fd)
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(signum, signal.SIG_DFL)
            for name in names:
                try:
                    importlib.import_module(name)
                except BaseException as exc:  # noqa: BLE001 - any failure of an import is the answer
                    why = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
                    os.write(write_fd, f"{name}\t{why}\n".encode("utf-8", "replace"))
        finally:
            os._exit(0)
    os.close(write_fd)
    output = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([read_fd], [], [], remaining)[0]:
                os.kill(pid, signal.SIGKILL)
                return {name: f"importing took longer than {timeout:g} s" for name in names}
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            output += chunk
    finally:
        os.close(read_fd)
        os.waitpid(pid, 0)
    problems: dict[str, str] = {}
    for line in output.decode("utf-8", "replace").splitlines():
        name, _, why = line.partition("\t")
        problems[name] = why
    return problems


# --- the table ------------------------------------------------------------------------------------------------------

#: What each part needs while its section enables it. systemd-python is optional everywhere: never required here.
NEEDS: dict[str, Needs] = {
    "device": Needs(lambda c: True, "device", modules=(("rctclient", "rctclient"),)),
    "prometheus": Needs(lambda c: c.prometheus.enable, "prometheus.enable",
                        modules=(("prometheus_client", "prometheus-client"), ("h11", "h11")),
                        checks=(_prometheus_tls, _secret_files("prometheus"))),
    "influxdb": Needs(lambda c: c.influxdb.enable, "influxdb.enable",
                      modules=(("influxdb_client", "influxdb-client"),),
                      checks=(_spool_directory, _secret_files("influxdb"))),
    "mqtt": Needs(lambda c: c.mqtt.enable, "mqtt.enable",
                  modules=(("paho.mqtt.client", "paho-mqtt"),),
                  checks=(_mqtt_tls, _secret_files("mqtt"))),
}


def preflight(config: Config, environ: Mapping[str, str] | None = None) -> list[str]:
    """Return what keeps this machine from running `config`: one line per problem, each naming its key.

    An empty list means every enabled part can start: its modules import, its certificates and keys load with
    ssl as the server or client would load them, its secret files are readable, and the spool can be written.
    """
    env = os.environ if environ is None else environ
    enabled = [needs for needs in NEEDS.values() if needs.enabled(config)]
    failed = import_problems(name for needs in enabled for name, _ in needs.modules)
    problems: list[str] = []
    for needs in enabled:
        for name, distribution in needs.modules:
            if name in failed:
                problems.append(f"{needs.key}: cannot import {name} ({failed[name]}); install {distribution}")
        for check in needs.checks:
            problems.extend(check(config, env))
    return problems

