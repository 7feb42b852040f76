"""Shared helpers for the Bitcoin tests (no tests here): wallet coins, Bitcoin Core's verdict.

Every transaction the HSM signs in these tests is checked with Bitcoin Core's own
consensus code (libbitcoinkernel through py-bitcoinkernel) - the outside reference.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import pbk
from pbk.script import PrecomputedTransactionData

from chains.bitcoin.coins import Utxo
from chains.bitcoin.psbt import Psbt
from chains.bitcoin.scripts import ScriptKind, p2tr_script, p2wpkh_script
from chains.bitcoin.wire import TxOut

PubKeyAt = Callable[[str], bytes]


def coin(pub_at: PubKeyAt, path: str, amount: int, kind: ScriptKind = ScriptKind.P2WPKH,
         n: int = 0) -> Utxo:
    """A made-up coin of the wallet at ``path`` (its txid is a hash of the path)."""
    pub = pub_at(path)
    script = p2wpkh_script(pub) if kind is ScriptKind.P2WPKH else p2tr_script(pub)
    txid = hashlib.sha256(f"{path}:{n}".encode()).hexdigest()
    return Utxo(txid, n, amount, script, path, pub)


def spent_outputs(psbt: Psbt) -> list[TxOut]:
    outs = []
    for i in range(len(psbt.inputs)):
        utxo = psbt.witness_utxo(i)
        assert utxo is not None
        outs.append(utxo)
    return outs


def core_accepts(raw: bytes, spent: Sequence[TxOut]) -> bool:
    """Bitcoin Core's script verification, all consensus flags, for every input."""
    tx = pbk.Transaction(raw)
    outs = [pbk.TransactionOutput(pbk.ScriptPubkey(s.script), s.amount) for s in spent]
    pre = PrecomputedTransactionData(tx, outs)
    try:
        return all(
            pbk.ScriptPubkey(s.script).verify(s.amount, tx, pre, i, pbk.ScriptVerificationFlags.ALL)
            for i, s in enumerate(spent)
        )
    except pbk.ScriptVerifyException:
        return False


def weight(raw: bytes) -> int:
    """BIP141 weight of a serialized segwit transaction: base size x 3 + total size."""
    from bitcoin.core import CTransaction

    tx = CTransaction.deserialize(raw)
    base = len(tx.serialize(params={"include_witness": False}))
    return base * 3 + len(raw)
