"""Signing an Ethereum transaction with any 32-byte-digest signer - the fast path. Pure.

A signer is a function from the signing hash to the 65-byte ``r || s || recovery_id``
the HSM returns (``SignScheme.ECDSA_SECP256K1_DIGEST``). The transaction is serialized
once: the same bytes are hashed and then spliced with the signature, so the raw
transaction provably carries exactly the fields that were signed.

:func:`sign_with_local_key_unsafe` signs with a key held in process memory: for tests and
benchmarks only - the wallet's keys live in the HSM and never leave it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import coincurve

from .encoding import address_bytes, keccak256
from .tx import Eip1559Tx, EthTx, LegacyTx, assemble_from_unsigned, serialize_unsigned

DigestSigner = Callable[[bytes], bytes]


def sign_with(tx: EthTx, signer: DigestSigner) -> bytes:
    """The raw signed transaction: serialize, keccak, sign the digest, splice."""
    unsigned = serialize_unsigned(tx)
    return assemble_from_unsigned(tx, unsigned, signer(keccak256(unsigned)))


def sign_with_local_key_unsafe(tx: EthTx, key: coincurve.PrivateKey) -> bytes:
    """Sign with an in-memory key (RFC 6979 nonce, low S). Tests and benchmarks only."""
    unsigned = serialize_unsigned(tx)
    signature = key.sign_recoverable(keccak256(unsigned), hasher=None)
    return assemble_from_unsigned(tx, unsigned, bytes(signature))


def tx_from_dict(d: Mapping[str, Any]) -> EthTx:
    """Our transaction from an eth-account style dict (``type`` 2 or legacy ``gasPrice``).

    Integers only (no hex strings); ``to`` is a ``0x`` address or absent for creation.
    """
    to = d.get("to")
    to_bytes = address_bytes(to) if to else b""
    data = bytes(d.get("data", b""))
    if "gasPrice" in d:
        return LegacyTx(d["chainId"], d["nonce"], d["gasPrice"], d["gas"], to_bytes,
                        d.get("value", 0), data)
    entries = d.get("accessList")
    access = tuple((address_bytes(e["address"]),
                    tuple(bytes.fromhex(k[2:]) for k in e["storageKeys"]))
                   for e in entries) if entries else ()
    return Eip1559Tx(d["chainId"], d["nonce"], d["maxPriorityFeePerGas"], d["maxFeePerGas"],
                     d["gas"], to_bytes, d.get("value", 0), data, access)
