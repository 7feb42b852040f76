"""Assembling the signed transaction from the HSM's signatures.

The HSM returns, per input in order, a 65-byte recoverable ECDSA signature
(``r || s || recovery id``, low-S) for P2WPKH inputs and a 64-byte BIP340 signature for
P2TR key-path inputs. Witnesses (BIP141 / BIP341):

* P2WPKH: ``[DER(r, s) || SIGHASH_ALL, compressed public key]``
* P2TR key path, SIGHASH_DEFAULT: ``[64-byte signature]`` (no hash-type byte)

Every signature is verified against the digest recomputed here before it is used, so a
wrong or mis-ordered signature fails loudly instead of producing an invalid transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import coincurve
from bitcoin.core import CTransaction, CTxInWitness, CTxWitness
from bitcoin.core.script import CScriptWitness
from coincurve.ecdsa import cdata_to_der, deserialize_recoverable, recoverable_convert

from chains.errors import BuildError, ChainDecodeError

from .psbt import Psbt
from .scripts import ScriptKind, classify, p2wpkh_script
from .sighash import SIGHASH_ALL, SIGHASH_DEFAULT, p2wpkh_sighash, taproot_sighash
from .wire import TxOut


def ecdsa_der(recoverable: bytes) -> bytes:
    """The strict-DER form (BIP66) of a 65-byte recoverable signature, via libsecp256k1."""
    if len(recoverable) != 65:
        raise BuildError("an ECDSA signature from the HSM is 65 bytes")
    try:
        return bytes(cdata_to_der(recoverable_convert(deserialize_recoverable(recoverable))))
    except ValueError as exc:
        raise BuildError(f"malformed ECDSA signature: {exc}") from None


def finalize(psbt: Psbt, signatures: Sequence[bytes]) -> bytes:
    """The raw signed transaction (BIP144 serialization) ready to broadcast."""
    if len(signatures) != len(psbt.inputs):
        raise BuildError(f"{len(signatures)} signatures for {len(psbt.inputs)} inputs")
    spent = []
    for i in range(len(psbt.inputs)):
        utxo = psbt.witness_utxo(i)
        if utxo is None:
            raise BuildError(f"input {i} has no witness_utxo")
        spent.append(utxo)
    stacks = [_witness(psbt, i, spent, sig) for i, sig in enumerate(signatures)]
    wit = CTxWitness([CTxInWitness(CScriptWitness(stack)) for stack in stacks])
    tx = psbt.tx
    signed = CTransaction(tx.vin, tx.vout, tx.nLockTime, tx.nVersion, wit)
    raw: bytes = signed.serialize()
    return raw


def _witness(psbt: Psbt, i: int, spent: list[TxOut], sig: bytes) -> list[bytes]:
    kind = classify(spent[i].script)
    if kind is ScriptKind.P2WPKH:
        pub = _p2wpkh_key(psbt, i, spent[i].script)
        digest = p2wpkh_sighash(psbt.tx, i, pub, spent[i].amount)
        der = ecdsa_der(sig)
        if not coincurve.PublicKey(pub).verify(der, digest, hasher=None):
            raise BuildError(f"signature {i} does not verify for input {i}")
        return [der + bytes([SIGHASH_ALL]), pub]
    if kind is ScriptKind.P2TR:
        digest = taproot_sighash(psbt.tx, spent, i, SIGHASH_DEFAULT)
        if len(sig) != 64 or not _schnorr_ok(spent[i].script[2:], sig, digest):
            raise BuildError(f"signature {i} does not verify for input {i}")
        return [sig]
    raise BuildError(f"input {i} is {kind.value}; cannot finalize")


def _p2wpkh_key(psbt: Psbt, i: int, script: bytes) -> bytes:
    for pub in psbt.input_derivations(i):
        try:
            if p2wpkh_script(pub) == script:
                return pub
        except ChainDecodeError:
            continue
    raise BuildError(f"input {i}: no derivation record names the key of its script")


def _schnorr_ok(output_key: bytes, sig: bytes, digest: bytes) -> Any:
    try:
        return coincurve.PublicKeyXOnly(output_key).verify(sig, digest)
    except ValueError:
        return False
