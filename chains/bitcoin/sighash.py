"""Signature hashes: BIP143 (segwit v0) through python-bitcoinlib, BIP341 written here.

* BIP143: https://github.com/bitcoin/bips/blob/master/bip-0143.mediawiki - python-bitcoinlib's
  ``SignatureHash(..., sigversion=SIGVERSION_WITNESS_V0)``.
* BIP341 ``SigMsg``: https://github.com/bitcoin/bips/blob/master/bip-0341.mediawiki#common-signature-message
  - python-bitcoinlib predates taproot, so :func:`taproot_sighash` follows the BIP line
  by line (key path, extension flag 0) and is checked against the BIP's own
  ``wallet-test-vectors.json``.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from typing import Any

from bitcoin.core.script import (
    SIGVERSION_WITNESS_V0,
    CScript,
    SignatureHash,
)

from chains.errors import ChainDecodeError
from hsm_emulator.decoding import tagged_hash

from .scripts import p2pkh_code
from .wire import TxOut, var_bytes

SIGHASH_DEFAULT, SIGHASH_ALL, SIGHASH_NONE, SIGHASH_SINGLE = 0x00, 0x01, 0x02, 0x03
SIGHASH_ANYONECANPAY = 0x80
#: BIP341: "hash_type ... one of 0x00, 0x01, 0x02, 0x03, 0x81, 0x82, 0x83".
TAPROOT_HASH_TYPES = frozenset({0x00, 0x01, 0x02, 0x03, 0x81, 0x82, 0x83})


def p2wpkh_sighash(tx: Any, index: int, public_key: bytes, amount: int,
                   hash_type: int = SIGHASH_ALL) -> bytes:
    """BIP143 digest for a P2WPKH input: scriptCode is the key's P2PKH script."""
    if not 0 <= index < len(tx.vin):
        raise ChainDecodeError("input index out of range")
    if tx.nLockTime >= 2**31:  # python-bitcoinlib packs nLockTime as a signed int32
        raise ChainDecodeError("nLockTime from 2^31 on is not supported for P2WPKH inputs")
    digest: bytes = SignatureHash(CScript(p2pkh_code(public_key)), tx, index, hash_type,
                                  amount=amount, sigversion=SIGVERSION_WITNESS_V0)
    return digest


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def taproot_sighash(tx: Any, spent: Sequence[TxOut], index: int,
                    hash_type: int = SIGHASH_DEFAULT, annex: bytes | None = None) -> bytes:
    """BIP341 ``hashTapSighash(0x00 || SigMsg(hash_type, 0))`` for a key-path spend.

    ``spent`` are the outputs every input spends, in input order: taproot commits to all
    amounts and scripts, so a signer cannot be misled about any input's value.
    """
    if hash_type not in TAPROOT_HASH_TYPES:
        raise ChainDecodeError(f"invalid taproot hash type {hash_type:#04x}")
    if len(spent) != len(tx.vin) or not 0 <= index < len(tx.vin):
        raise ChainDecodeError("taproot sighash needs every spent output and a valid index")
    output_type = SIGHASH_ALL if hash_type == SIGHASH_DEFAULT else hash_type & 0x03
    anyone_can_pay = bool(hash_type & SIGHASH_ANYONECANPAY)
    # The epoch byte 0x00, then SigMsg: hash_type, nVersion, nLockTime, ...
    msg = bytes([0x00, hash_type]) + struct.pack("<iI", tx.nVersion, tx.nLockTime)
    if not anyone_can_pay:
        msg += _sha256(b"".join(i.prevout.serialize() for i in tx.vin))
        msg += _sha256(b"".join(o.amount.to_bytes(8, "little") for o in spent))
        msg += _sha256(b"".join(var_bytes(o.script) for o in spent))
        msg += _sha256(b"".join(struct.pack("<I", i.nSequence) for i in tx.vin))
    if output_type == SIGHASH_ALL:
        msg += _sha256(b"".join(o.serialize() for o in tx.vout))
    msg += bytes([0 + (annex is not None)])  # spend_type = ext_flag * 2 + annex_present
    if anyone_can_pay:
        txin = tx.vin[index]
        msg += txin.prevout.serialize() + spent[index].serialize()
        msg += struct.pack("<I", txin.nSequence)
    else:
        msg += struct.pack("<I", index)
    if annex is not None:
        msg += _sha256(var_bytes(annex))
    if output_type == SIGHASH_SINGLE:
        if index >= len(tx.vout):
            raise ChainDecodeError("SIGHASH_SINGLE without a matching output")
        msg += _sha256(tx.vout[index].serialize())
    return tagged_hash("TapSighash", msg)
