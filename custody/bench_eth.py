"""``custody bench eth``: signed Ethereum transactions per second, two ways.

Both are measured in the same process on the same transaction dicts:

* ``eth_account.Account.sign_transaction(dict, key)`` - the reference implementation;
* the project's path (:mod:`chains.ethereum.signing`): build the EIP-1559 transaction,
  keccak its serialization, sign the digest with coincurve's ``sign_recoverable``
  (``hasher=None``, exactly what the HSM does for ``ECDSA_SECP256K1_DIGEST``) and splice
  the signature into the serialization.

Before timing, a sample is signed both ways and must be byte-identical (RFC 6979 makes
ECDSA deterministic), else the benchmark raises. The headline is the best round of each;
``speedup`` = project / eth_account, target >= 10.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import coincurve
from eth_account import Account

from chains.ethereum.encoding import checksum
from chains.ethereum.signing import sign_with_local_key_unsafe, tx_from_dict

TARGET_SPEEDUP = 10.0
_SAMPLE = 16


def _tx_dicts(n: int, chain_id: int = 1) -> list[dict[str, Any]]:
    to = checksum(os.urandom(20))
    return [{"type": 2, "chainId": chain_id, "nonce": i, "maxPriorityFeePerGas": 10**9,
             "maxFeePerGas": 30 * 10**9 + i, "gas": 21_000, "to": to,
             "value": 10**15 + i, "data": b"", "accessList": []} for i in range(n)]


def _rate(items: list[dict[str, Any]], fn: Callable[[dict[str, Any]], object]) -> float:
    start = time.perf_counter()
    for item in items:
        fn(item)
    return len(items) / (time.perf_counter() - start)


def check_identical(dicts: list[dict[str, Any]], secret: bytes) -> None:
    """Raise unless the project's raw transactions equal eth-account's, byte for byte."""
    key = coincurve.PrivateKey(secret)
    for d in dicts:
        ours = sign_with_local_key_unsafe(tx_from_dict(d), key)
        theirs = bytes(Account.sign_transaction(d, secret).raw_transaction)
        if ours != theirs:
            raise AssertionError(f"raw transactions differ for nonce {d['nonce']}: "
                                 f"{ours.hex()} != {theirs.hex()}")


def bench_eth_sign(iterations: int = 1000, rounds: int = 3) -> Iterator[dict[str, Any]]:
    """Yield one record per round, then the headline (``"headline": true``)."""
    secret = os.urandom(32)
    key = coincurve.PrivateKey(secret)
    dicts = _tx_dicts(iterations)
    check_identical(dicts[:_SAMPLE], secret)
    ref_best = ours_best = 0.0
    for r in range(rounds):
        ref = _rate(dicts, lambda d: Account.sign_transaction(d, secret))
        ours = _rate(dicts, lambda d: sign_with_local_key_unsafe(tx_from_dict(d), key))
        ref_best, ours_best = max(ref_best, ref), max(ours_best, ours)
        yield {"bench": "eth", "round": r, "iterations": iterations,
               "eth_account_tx_per_s": round(ref), "project_tx_per_s": round(ours),
               "speedup": round(ours / ref, 2)}
    yield {"bench": "eth", "headline": True, "iterations": iterations, "rounds": rounds,
           "eth_account_tx_per_s": round(ref_best), "project_tx_per_s": round(ours_best),
           "speedup": round(ours_best / ref_best, 2), "target_speedup": TARGET_SPEEDUP,
           "identical_sample": _SAMPLE}
