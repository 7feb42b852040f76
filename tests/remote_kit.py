"""The HSM as its own process, for every test that talks to it over its socket.

:class:`HsmProcess` starts ``python -m hsm_emulator.remote`` on a Unix socket, waits until
a client gets in, and stops it (SIGTERM, then SIGKILL); the child dies with the test
process too (PR_SET_PDEATHSIG on Linux), and :func:`stop_all` kills whatever a failing
test left behind. :class:`TimeControl` is one test's HSM time, in process (a
ManualClock) and in the server's ``--clock-file``. :func:`hsm_process` is the short form:
a fresh server on the system clock, stopped on exit.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hsm_emulator import ManualClock
from hsm_emulator.errors import TransportError
from hsm_emulator.remote import RemoteHsmClient

PASSPHRASE = "correct horse battery staple"
SO = "security-officer-passphrase"
START = 1_800_000_000.0
ROOT = Path(__file__).resolve().parent.parent


class TimeControl:
    """One test's HSM time: a ManualClock, mirrored into the remote HSM's clock file."""

    def __init__(self) -> None:
        self.clock = ManualClock(START)
        self.file: Path | None = None

    def attach(self, path: Path) -> None:
        self.file = path
        self._write()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self._write()

    def _write(self) -> None:
        if self.file is not None:
            tmp = self.file.with_suffix(".tmp")
            tmp.write_text(repr(self.clock.now()))
            os.replace(tmp, self.file)  # atomic: the server never reads half a number


_LIBC: Any = None
if sys.platform.startswith("linux"):
    with contextlib.suppress(OSError):
        _LIBC = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: one prctl syscall through an already
    loaded libc, no imports and no locks, so the thread hazard of preexec_fn
    (PLW1509) does not arise."""
    if _LIBC is not None:
        _LIBC.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG: no orphan if pytest dies


_STARTED: list[subprocess.Popen[bytes]] = []

#: Switches only tests set: the JSON test decoder (``conftest.py`` turns it on for every
#: test) and a network list of the test's choice.
NOT_IN_PRODUCTION = ("CUSTODY_TEST_DECODER", "CUSTODY_NETWORKS")


def production_env() -> dict[str, str]:
    """This process's environment without the test-only switches: the HSM then registers
    the chains' decoders for ``chains.registry.DEFAULT_NETWORKS`` and nothing else."""
    return {k: v for k, v in os.environ.items() if k not in NOT_IN_PRODUCTION}


@dataclass
class HsmProcess:
    proc: subprocess.Popen[bytes]
    sock: Path
    secret: bytes
    log: Path

    @property
    def address(self) -> str:
        return f"unix:{self.sock}"

    @classmethod
    def start(cls, workdir: Path, sockdir: Path, time_control: TimeControl | None = None, *,
              allow_export: bool = True, production: bool = False,
              officers: list[dict[str, str]] | None = None,
              officer_threshold: int = 1) -> HsmProcess:
        """A server for the store in ``workdir`` (a restart on it reopens the same store
        with the same secret): on ``time_control``'s clock file if given (else the system
        clock), with the partition's export setting; ``production``: as production starts
        it, without the test decoder and with the default networks; ``officers``: a new
        store's officer keys (``officer_threshold`` of them), else the SO passphrase."""
        secret_file = workdir / "client.secret"
        if not secret_file.exists():  # a restart on the same store keeps its secret
            secret_file.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
            secret_file.chmod(0o600)
        secret = secret_file.read_bytes().strip()
        args = ["--store", str(workdir / "hsm.sqlite"), "--listen", f"unix:{sockdir}/hsm.sock",
                "--secret-file", str(secret_file), "--scrypt-n", str(2**10)]
        if allow_export:
            args.append("--allow-export")
        if officers is not None:
            (workdir / "officers.json").write_text(json.dumps(officers))
            args += ["--officers", str(workdir / "officers.json"),
                     "--officer-threshold", str(officer_threshold)]
        if time_control is not None:
            time_control.attach(workdir / "clock")
            args += ["--clock-file", str(workdir / "clock")]
        log = workdir / "server.log"
        base = production_env() if production else dict(os.environ)
        env = {**base, "SKA_HSM_PASSPHRASE": PASSPHRASE, "SKA_HSM_SO_PASSPHRASE": SO}
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "hsm_emulator.remote", *args],
                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                preexec_fn=_die_with_parent)  # noqa: PLW1509 - see _die_with_parent
        _STARTED.append(proc)
        server = cls(proc, sockdir / "hsm.sock", secret, log)
        server.wait_ready()
        return server

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"HSM process exited: {self.log.read_text()}")
            with contextlib.suppress(TransportError):
                self.connect().close()
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"HSM process not ready: {self.log.read_text()}")

    def connect(self, secret: bytes | None = None, timeout: float = 30.0) -> RemoteHsmClient:
        return RemoteHsmClient(self.address, self.secret if secret is None else secret,
                               timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc in _STARTED:
            _STARTED.remove(self.proc)


def stop_all() -> None:
    """Kill every server a test started and did not stop (a failing test's leftovers)."""
    for proc in list(_STARTED):
        proc.kill()
        proc.wait(5)
        _STARTED.remove(proc)


def short_dir() -> Path:
    """A short directory: Unix socket paths hold ~100 bytes."""
    return Path(tempfile.mkdtemp(prefix="ska-", dir="/tmp" if os.path.isdir("/tmp") else None))


@contextlib.contextmanager
def hsm_process(workdir: Path) -> Iterator[HsmProcess]:
    """A fresh HSM process with its store in ``workdir``, on the system clock, without
    export; stopped on exit."""
    sockdir = short_dir()
    server = HsmProcess.start(workdir, sockdir, allow_export=False)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(sockdir, ignore_errors=True)
