"""The service under ``custody bench transfers``, laid out as a deployment runs it: the
HSM as its own process (``python -m hsm_emulator.remote`` on a Unix socket, the chains'
decoders wired in) and ``custody serve`` as another, pointed at it, at the database and
at the local nodes. Both logs are kept in the work directory for a failed run."""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from hsm_emulator.errors import TransportError
from hsm_emulator.remote import RemoteHsmClient

from ...pgserver import free_port

#: The JWT secret of the throwaway server (the bench mints its own tokens with it).
SECRET = "bench-transfers-secret-0123456789abcdef"  # noqa: S105 - a throwaway server
_HSM_PASSPHRASE = "bench transfers hsm"  # noqa: S105
_HSM_SO = "bench transfers officer"
START_SECONDS = 60


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@contextlib.contextmanager
def hsm_process(workdir: Path) -> Iterator[tuple[str, Path, int]]:
    """The HSM process, accepting connections: yields its address, secret file and pid."""
    secret = workdir / "hsm.secret"
    secret.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
    secret.chmod(0o600)
    address = f"unix:{workdir / 'hsm.sock'}"
    env = {**os.environ, "SKA_HSM_PASSPHRASE": _HSM_PASSPHRASE, "SKA_HSM_SO_PASSPHRASE": _HSM_SO}
    with (workdir / "hsm.log").open("wb") as log:
        proc = subprocess.Popen(  # noqa: S603 - this interpreter, fixed arguments
            [sys.executable, "-m", "hsm_emulator.remote", "--store", str(workdir / "hsm.sqlite"),
             "--listen", address, "--secret-file", str(secret), "--scrypt-n", str(2**10)],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            _wait_for_hsm(proc, address, secret.read_bytes().strip(), workdir)
            yield address, secret, proc.pid
        finally:
            _stop(proc)


def _wait_for_hsm(proc: subprocess.Popen[bytes], address: str, secret: bytes,
                  workdir: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"HSM process exited: {(workdir / 'hsm.log').read_text()}")
        with contextlib.suppress(TransportError):
            RemoteHsmClient(address, secret).close()
            return
        time.sleep(0.05)
    raise RuntimeError(f"HSM process did not accept a connection in {START_SECONDS} s")


@contextlib.contextmanager
def api_server(workdir: Path, database_url: str, hsm: tuple[str, Path, int],
               node_env: dict[str, str]) -> Iterator[tuple[str, int]]:
    """``custody serve`` on a free loopback port, ready: yields its base URL and pid."""
    port = free_port()
    env = {**os.environ, **node_env, "CUSTODY_DATABASE_URL": database_url,
           "CUSTODY_HSM_URL": hsm[0], "CUSTODY_HSM_SECRET_FILE": str(hsm[1]),
           "CUSTODY_JWT_SECRET": SECRET}
    url = f"http://127.0.0.1:{port}"
    with (workdir / "server.log").open("wb") as log:
        proc = subprocess.Popen(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "custody.cli", "serve", "--port", str(port)],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            _wait_for_server(proc, url, workdir)
            yield url, proc.pid
        finally:
            _stop(proc)


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) process ``pid`` has used, from ``/proc`` (None elsewhere):
    what each process of the service spends per transfer, beside the wall-clock rate."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_for_server(proc: subprocess.Popen[bytes], url: str, workdir: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {(workdir / 'server.log').read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"server not ready in {START_SECONDS} s")
