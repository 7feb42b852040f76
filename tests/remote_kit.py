"""The HSM as its own process, for tests of what a hostile peer can do to it.

:func:`hsm_process` starts ``python -m hsm_emulator.remote`` on a Unix socket in a short
temporary directory, waits until a client gets in, and always stops it (SIGTERM, then
SIGKILL); the child dies with the test process too (PR_SET_PDEATHSIG on Linux).
"""

from __future__ import annotations

import contextlib
import ctypes
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

from hsm_emulator.errors import TransportError
from hsm_emulator.remote import RemoteHsmClient

PASSPHRASE = "correct horse battery staple"
SO = "security-officer-passphrase"
ROOT = Path(__file__).resolve().parent.parent

_LIBC: Any = None
if sys.platform.startswith("linux"):
    with contextlib.suppress(OSError):
        _LIBC = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    """Between fork and exec: one prctl through an already loaded libc, no locks."""
    if _LIBC is not None:
        _LIBC.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


@dataclass
class HsmProcess:
    proc: subprocess.Popen[bytes]
    sock: Path
    secret: bytes
    log: Path

    @property
    def address(self) -> str:
        return f"unix:{self.sock}"

    def connect(self, timeout: float = 30.0) -> RemoteHsmClient:
        return RemoteHsmClient(self.address, self.secret, timeout=timeout)

    def alive(self) -> bool:
        return self.proc.poll() is None


def _wait_ready(server: HsmProcess, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"HSM process exited: {server.log.read_text()}")
        with contextlib.suppress(TransportError):
            server.connect().close()
            return
        time.sleep(0.02)
    raise RuntimeError(f"HSM process not ready: {server.log.read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def hsm_process(workdir: Path) -> Iterator[HsmProcess]:
    """A fresh HSM process with its store in ``workdir``; stopped on exit."""
    sockdir = Path(tempfile.mkdtemp(prefix="ska-", dir="/tmp" if os.path.isdir("/tmp")
                                    else None))  # Unix socket paths hold ~100 bytes
    secret_file = workdir / "client.secret"
    secret_file.write_bytes(os.urandom(24).hex().encode())
    secret_file.chmod(0o600)
    log = workdir / "server.log"
    env = {**os.environ, "SKA_HSM_PASSPHRASE": PASSPHRASE, "SKA_HSM_SO_PASSPHRASE": SO}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hsm_emulator.remote", "--store", str(workdir / "hsm.sqlite"),
             "--listen", f"unix:{sockdir / 'hsm.sock'}", "--secret-file", str(secret_file),
             "--scrypt-n", str(2**10)],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            preexec_fn=_die_with_parent)  # noqa: PLW1509 - see _die_with_parent
    server = HsmProcess(proc, sockdir / "hsm.sock", secret_file.read_bytes(), log)
    try:
        _wait_ready(server)
        yield server
    finally:
        _stop(proc)
        shutil.rmtree(sockdir, ignore_errors=True)
