"""Signature hashes against the BIPs' own examples, stored verbatim in tests/vectors.

BIP143's native P2WPKH example checks the segwit v0 digest (python-bitcoinlib, through
our wrapper) and the DER conversion; BIP341's wallet-test-vectors check the hand-written
taproot sighash for every hash type, the BIP86 output-key tweak and the bech32m rendering.
Bitcoin Core's consensus code (py-bitcoinkernel) checks the vectors' signed transaction.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import coincurve
import pytest
from bitcoin.core import CTransaction

from chains.bitcoin.addresses import script_to_address
from chains.bitcoin.assemble import ecdsa_der
from chains.bitcoin.scripts import p2wpkh_script, taproot_output_key
from chains.bitcoin.sighash import p2wpkh_sighash, taproot_sighash
from chains.bitcoin.wire import TxOut
from chains.errors import ChainDecodeError

VECTORS = Path(__file__).parents[1] / "vectors"
BIP143 = json.loads((VECTORS / "bip143_p2wpkh.json").read_text())
BIP341_TEXT = (VECTORS / "bip341_wallet_test_vectors.json").read_text()
BIP341 = json.loads(BIP341_TEXT)
KEY_PATH = BIP341["keyPathSpending"][0]


def test_bip341_file_is_the_upstream_text_plus_source() -> None:
    assert BIP341["source"].startswith("https://github.com/bitcoin/bips/")
    upstream = {k: v for k, v in BIP341.items() if k not in ("source", "note")}
    text = json.dumps(upstream, indent=4) + "\n"
    assert len(text) == 29296  # the upstream file's length
    lines = BIP341_TEXT.splitlines(keepends=True)
    assert "".join(lines[:1] + lines[3:]) == text


# -- BIP143 ------------------------------------------------------------------------------


def test_bip143_native_p2wpkh_sighash() -> None:
    tx = CTransaction.deserialize(bytes.fromhex(BIP143["unsignedTx"]))
    pub = bytes.fromhex(BIP143["input1"]["publicKey"])
    assert p2wpkh_script(pub).hex() == BIP143["input1"]["scriptPubKey"]
    amount = 6 * 100_000_000  # "value: 6" BTC
    assert p2wpkh_sighash(tx, 1, pub, amount).hex() == BIP143["sigHash"]


def test_bip143_signature_verifies_and_der_roundtrip() -> None:
    digest = bytes.fromhex(BIP143["sigHash"])
    sig = bytes.fromhex(BIP143["signature"])
    pub = coincurve.PublicKey(bytes.fromhex(BIP143["input1"]["publicKey"]))
    assert pub.verify(sig, digest, hasher=None)
    # Our 65-byte -> DER conversion gives a signature that verifies, from the private key.
    priv = coincurve.PrivateKey(bytes.fromhex(BIP143["input1"]["privateKey"]))
    der = ecdsa_der(priv.sign_recoverable(digest, hasher=None))
    assert pub.verify(der, digest, hasher=None)
    # RFC 6979 nonces: the BIP's signature is libsecp256k1's deterministic one.
    assert der == sig


def test_bip143_signed_transaction_carries_the_signature() -> None:
    signed = BIP143["signedTx"]
    assert BIP143["signature"] + "01" + "21" + BIP143["input1"]["publicKey"] in signed


# -- BIP341 ------------------------------------------------------------------------------


def _key_path_tx() -> tuple[Any, list[TxOut]]:
    given = KEY_PATH["given"]
    tx = CTransaction.deserialize(bytes.fromhex(given["rawUnsignedTx"]))
    spent = [TxOut(u["amountSats"], bytes.fromhex(u["scriptPubKey"])) for u in given["utxosSpent"]]
    return tx, spent


@pytest.mark.parametrize("case", KEY_PATH["inputSpending"],
                         ids=lambda c: f"in{c['given']['txinIndex']}-ht{c['given']['hashType']}")
def test_bip341_key_path_sighash(case: dict[str, Any]) -> None:
    tx, spent = _key_path_tx()
    given = case["given"]
    digest = taproot_sighash(tx, spent, given["txinIndex"], given["hashType"])
    assert digest.hex() == case["intermediary"]["sigHash"]


@pytest.mark.parametrize("case", KEY_PATH["inputSpending"],
                         ids=lambda c: f"in{c['given']['txinIndex']}")
def test_bip341_key_path_signature(case: dict[str, Any]) -> None:
    """The vector's witness signature verifies over our digest under the output key."""
    tx, spent = _key_path_tx()
    given = case["given"]
    witness = bytes.fromhex(case["expected"]["witness"][0])
    sig, hash_type = witness[:64], witness[64:]
    assert hash_type == (bytes([given["hashType"]]) if given["hashType"] else b"")
    digest = taproot_sighash(tx, spent, given["txinIndex"], given["hashType"])
    output_key = spent[given["txinIndex"]].script[2:]
    assert coincurve.PublicKeyXOnly(output_key).verify(sig, digest)


@pytest.mark.parametrize("case", BIP341["scriptPubKey"], ids=lambda c: c["given"]["internalPubkey"][:8])
def test_bip341_output_key_and_address(case: dict[str, Any]) -> None:
    internal = bytes.fromhex(case["given"]["internalPubkey"])
    root = case["intermediary"]["merkleRoot"]
    out_key = taproot_output_key(internal, bytes.fromhex(root) if root else b"")
    assert out_key.hex() == case["intermediary"]["tweakedPubkey"]
    script = b"\x51\x20" + out_key
    assert script.hex() == case["expected"]["scriptPubKey"]
    assert script_to_address("mainnet", script) == case["expected"]["bip350Address"]


def test_bip341_signed_transaction_passes_bitcoin_core() -> None:
    pbk = pytest.importorskip("pbk")
    from pbk.script import PrecomputedTransactionData

    _, spent = _key_path_tx()
    tx = pbk.Transaction(bytes.fromhex(KEY_PATH["auxiliary"]["fullySignedTx"]))
    outs = [pbk.TransactionOutput(pbk.ScriptPubkey(s.script), s.amount) for s in spent]
    pre = PrecomputedTransactionData(tx, outs)
    for case in KEY_PATH["inputSpending"]:
        i = case["given"]["txinIndex"]
        assert pbk.ScriptPubkey(spent[i].script).verify(
            spent[i].amount, tx, pre, i, pbk.ScriptVerificationFlags.ALL)


def test_taproot_sighash_refuses_bad_arguments() -> None:
    tx, spent = _key_path_tx()
    with pytest.raises(ChainDecodeError):
        taproot_sighash(tx, spent, 0, 0x04)
    with pytest.raises(ChainDecodeError):
        taproot_sighash(tx, spent[:-1], 0)
    with pytest.raises(ChainDecodeError):
        taproot_sighash(tx, spent, len(spent))
    with pytest.raises(ChainDecodeError):  # SIGHASH_SINGLE past the last output
        taproot_sighash(tx, spent, 5, 0x03)
