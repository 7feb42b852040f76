"""``custody bench hsm --remote``: the HSM as its own process, over its socket.

The production topology: the broker talks to ``python -m hsm_emulator.remote`` over a
Unix socket (authenticated, length-prefixed JSON frames). Measured in the same run, one
after the other, on the same work and the same policy as ``custody bench hsm``: raw
coincurve, the in-process HSM (``sign_now``, ``sign_batch``) and the remote one (the same
two calls through :class:`~hsm_emulator.remote.RemoteHsmClient`). Headline ``ratio``:
remote batched over in-process batched (target 0.8); ``hsm_remote_batch_signs_per_s``
against 10,000 policy-checked signatures per second.

Both of those are one caller, one call at a time: the client waits while the HSM works
and the HSM waits while the client encodes and decodes. A deployment has several callers
(API threads, replicas, the transfer worker), so the same batches are also signed by
``clients`` callers at once (``*_clients_*``): threads sharing the in-process HSM, and as
many connections to the HSM process. ``ratio_clients`` is that remote rate over that
in-process rate - what the socket costs a busy HSM.
"""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from hsm_emulator import Hsm, Passphrase
from hsm_emulator.decoders import TEST_DECODER_ENV, test_registry, transfer_payload
from hsm_emulator.errors import TransportError
from hsm_emulator.remote import RemoteHsmClient

from .bench import BENCH_POLICY, raw_rate

_PASSPHRASE = "bench-passphrase"  # noqa: S105 - a throwaway HSM
_SO = "bench-so-passphrase"


class _Signer(Protocol):
    def sign_now(self, label: str, payload: bytes, payload_type: str) -> object: ...
    def sign_batch(self, label: str, payloads: list[bytes], payload_type: str) -> object: ...


@contextlib.contextmanager
def remote_hsm(workdir: Path) -> Iterator[Callable[[], RemoteHsmClient]]:
    """A fresh ``python -m hsm_emulator.remote`` on a Unix socket in ``workdir`` (with the
    test decoder the bench's payloads need); yields a function that connects a client
    (each closed on exit), and stops the process on exit."""
    secret_file = workdir / "client.secret"
    secret_file.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
    secret_file.chmod(0o600)
    sock = workdir / "hsm.sock"
    env = {**os.environ, TEST_DECODER_ENV: "1", "SKA_HSM_PASSPHRASE": _PASSPHRASE,
           "SKA_HSM_SO_PASSPHRASE": _SO}
    log = (workdir / "server.log").open("wb")
    proc = subprocess.Popen(  # noqa: S603 - this interpreter, fixed arguments
        [sys.executable, "-m", "hsm_emulator.remote", "--store", str(workdir / "hsm.sqlite"),
         "--listen", f"unix:{sock}", "--secret-file", str(secret_file), "--scrypt-n",
         str(2**10)], env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    clients: list[RemoteHsmClient] = []

    def connect() -> RemoteHsmClient:
        clients.append(_connect(proc, f"unix:{sock}", secret_file.read_bytes().strip(),
                                workdir))
        return clients[-1]

    try:
        yield connect
    finally:
        for client in clients:
            client.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def _connect(proc: subprocess.Popen[bytes], address: str, secret: bytes,
             workdir: Path) -> RemoteHsmClient:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"HSM process exited: {(workdir / 'server.log').read_text()}")
        with contextlib.suppress(TransportError):
            return RemoteHsmClient(address, secret)
        time.sleep(0.02)
    raise RuntimeError("HSM process did not accept a connection within 60 s")


def _rates(signer: _Signer, payloads: list[bytes], batch: int) -> tuple[float, float]:
    """Signatures/s per call (``sign_now``) over the first half of ``payloads``, batched
    (``sign_batch`` of ``batch``) over the second: every payload is signed once."""
    half = len(payloads) // 2
    single, batched = payloads[:half], payloads[half:]
    one: Callable[[int], object] = lambda i: signer.sign_now(  # noqa: E731
        "bench", single[i], "TEST_TRANSFER")
    start = time.perf_counter()
    for i in range(half):
        one(i)
    single_rate = half / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(0, len(batched), batch):
        signer.sign_batch("bench", batched[i:i + batch], "TEST_TRANSFER")
    return single_rate, len(batched) / (time.perf_counter() - start)


def _together(signers: list[_Signer], payloads: list[bytes], batch: int) -> float:
    """Signatures/s with one thread per signer, each signing its share of ``payloads``
    in batches of ``batch``, all started together: the wall time of the slowest."""
    shares = [payloads[k::len(signers)] for k in range(len(signers))]
    go = threading.Barrier(len(signers) + 1)

    def run(signer: _Signer, share: list[bytes]) -> None:
        go.wait()
        for i in range(0, len(share), batch):
            signer.sign_batch("bench", share[i:i + batch], "TEST_TRANSFER")

    threads = [threading.Thread(target=run, args=(s, p)) for s, p in zip(signers, shares,
                                                                           strict=True)]
    for t in threads:
        t.start()
    go.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return len(payloads) / (time.perf_counter() - start)


def bench_hsm_remote(iterations: int = 2000, rounds: int = 3, batch: int = 100,
                     clients: int = 2) -> Iterator[dict[str, Any]]:
    """Yield one record per round, then the headline (best round of each)."""
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="ska-bench-") as tmp:
        hsm = Hsm.open(Path(tmp) / "local.sqlite", Passphrase(_PASSPHRASE, scrypt_n=2**10),
                       so_passphrase=_SO, decoders=test_registry())
        hsm.create_key("bench", "SECP256K1", policy=BENCH_POLICY)
        remote_dir = Path(tmp) / "remote"
        remote_dir.mkdir()
        with remote_hsm(remote_dir) as connect:
            remote = connect()
            callers = [remote] + [connect() for _ in range(clients - 1)]
            remote.create_key("bench", "SECP256K1", policy=BENCH_POLICY)
            for r in range(rounds):
                def payloads(offset: int, r: int = r) -> list[bytes]:
                    return [transfer_payload("TST", 1000 + i, "dest", 1,
                                             nonce=(4 * r + offset) * iterations + i)
                            for i in range(iterations)]
                rec = {"raw_coincurve_signs_per_s": raw_rate(iterations)}
                rec["hsm_single_signs_per_s"], rec["hsm_batch_signs_per_s"] = _rates(
                    hsm, payloads(0), batch)
                rec["hsm_remote_single_signs_per_s"], rec["hsm_remote_batch_signs_per_s"] = (
                    _rates(remote, payloads(1), batch))
                rec["hsm_clients_batch_signs_per_s"] = _together(
                    [hsm] * clients, payloads(2), batch)
                rec["hsm_remote_clients_batch_signs_per_s"] = _together(
                    list(callers), payloads(3), batch)
                for name, value in rec.items():
                    best[name] = max(best.get(name, 0.0), value)
                yield {"bench": "hsm-remote", "round": r, "iterations": iterations,
                       "batch": batch, "clients": clients,
                       **{k: round(v) for k, v in rec.items()},
                       **_ratios(rec)}
        hsm.close()
    yield {"bench": "hsm-remote", "headline": True, "iterations": iterations,
           "rounds": rounds, "batch": batch, "clients": clients,
           **{k: round(v) for k, v in best.items()},
           **_ratios(best), "target_ratio": 0.8, "target_remote_batch_signs_per_s": 10_000}


def _ratios(rec: dict[str, float]) -> dict[str, float]:
    return {"ratio_single": round(rec["hsm_remote_single_signs_per_s"]
                                  / rec["hsm_single_signs_per_s"], 3),
            "ratio": round(rec["hsm_remote_batch_signs_per_s"]
                           / rec["hsm_batch_signs_per_s"], 3),
            "ratio_to_raw": round(rec["hsm_remote_batch_signs_per_s"]
                                  / rec["raw_coincurve_signs_per_s"], 3),
            "ratio_clients": round(rec["hsm_remote_clients_batch_signs_per_s"]
                                   / rec["hsm_clients_batch_signs_per_s"], 3)}
