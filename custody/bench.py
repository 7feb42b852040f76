"""``custody bench hsm``: the HSM's policy-checked signing against raw coincurve.

Prints one JSON object per line; the last holds the headline figures. Both figures are
measured in the same process, one after the other, on the same kind of work: raw signs
a 32-byte digest; the HSM path decodes a payload, evaluates the key's policy, signs,
records the velocity ledger and appends the audit entry, committed to SQLite before the
signature is returned. ``ratio_single`` commits once per signature (``sign_now``);
``ratio`` (the headline) uses ``sign_batch``, which does every check and audit entry per
signature but commits once per batch - how a desk's bulk payouts reach the HSM.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import coincurve

from hsm_emulator import Hsm, Passphrase
from hsm_emulator.decoders import test_registry, transfer_payload

#: The bench key's policy: one auto-tier token with the value-complete conditions.
BENCH_POLICY: dict[str, Any] = {"ruleUse": {"tokens": [
    {"name": "auto", "timelock": 0, "timeout": 0, "groups": [],
     "conditions": {"amounts": [{"asset": "TST", "max": 10**18}],
                    "maxFee": [{"asset": "TST", "max": 10}]}}]}}


def raw_rate(iterations: int) -> float:
    """Raw coincurve recoverable signatures per second over ``iterations`` digests."""
    key = coincurve.PrivateKey(os.urandom(32))
    digests = [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(iterations)]
    return _rate(iterations, lambda i: key.sign_recoverable(digests[i], hasher=None))


def _rate(n: int, fn: Callable[[int], object]) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - start)


def bench_hsm(iterations: int = 2000, rounds: int = 3, batch: int = 100,
              ) -> Iterator[dict[str, Any]]:
    """Yield one record per round, then the headline (best round of each)."""
    key = coincurve.PrivateKey(os.urandom(32))
    digests = [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(iterations)]
    with tempfile.TemporaryDirectory() as tmp:
        hsm = Hsm.open(Path(tmp) / "bench.sqlite", Passphrase("bench-passphrase"),
                       so_passphrase="bench-so-passphrase",  # noqa: S106 - a throwaway HSM
                       decoders=test_registry())
        hsm.create_key("bench", "SECP256K1", policy=BENCH_POLICY)
        raw_best = single_best = batch_best = 0.0
        for r in range(rounds):
            payloads = [transfer_payload("TST", 1000 + i, "dest", 1, nonce=r * iterations + i)
                        for i in range(iterations)]
            raw = _rate(iterations, lambda i: key.sign_recoverable(digests[i], hasher=None))
            def one(i: int, batch_payloads: list[bytes] = payloads) -> object:
                return hsm.sign_now("bench", batch_payloads[i], "TEST_TRANSFER")

            single = _rate(iterations, one)
            chunks = [payloads[i:i + batch] for i in range(0, iterations, batch)]
            start = time.perf_counter()
            for chunk in chunks:
                hsm.sign_batch("bench", chunk, "TEST_TRANSFER")
            batched = iterations / (time.perf_counter() - start)
            raw_best = max(raw_best, raw)
            single_best, batch_best = max(single_best, single), max(batch_best, batched)
            yield {"bench": "hsm", "round": r, "iterations": iterations,
                   "raw_coincurve_signs_per_s": round(raw),
                   "hsm_single_signs_per_s": round(single),
                   "hsm_batch_signs_per_s": round(batched), "batch": batch,
                   "ratio_single": round(single / raw, 3), "ratio": round(batched / raw, 3)}
        audited = len(hsm.audit_entries(1, 10**6))
        hsm.close()
    yield {"bench": "hsm", "headline": True, "iterations": iterations, "rounds": rounds,
           "batch": batch, "raw_coincurve_signs_per_s": round(raw_best),
           "hsm_single_signs_per_s": round(single_best),
           "hsm_batch_signs_per_s": round(batch_best),
           "ratio_single": round(single_best / raw_best, 3),
           "ratio": round(batch_best / raw_best, 3), "target_ratio": 0.5,
           "audit_entries": audited}


def print_lines(records: Iterator[dict[str, Any]]) -> None:
    for rec in records:
        print(json.dumps(rec), flush=True)
