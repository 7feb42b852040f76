"""Shared helpers for the Bitcoin tests (no tests here): wallet coins, Bitcoin Core's verdict.

Every transaction the HSM signs in these tests is checked with Bitcoin Core's own
consensus code (libbitcoinkernel through py-bitcoinkernel) - the outside reference.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import pbk
from bitcoin.core import COutPoint, CTransaction, CTxIn, CTxOut
from bitcoin.core.script import CScript
from pbk.script import PrecomputedTransactionData

from chains.bitcoin.coins import Utxo
from chains.bitcoin.psbt import Psbt
from chains.bitcoin.scripts import ScriptKind, p2tr_script, p2wpkh_script
from chains.bitcoin.wire import TxOut

PubKeyAt = Callable[[str], bytes]


def coin(pub_at: PubKeyAt, path: str, amount: int, kind: ScriptKind = ScriptKind.P2WPKH,
         n: int = 0, *, with_prev: bool | None = None) -> Utxo:
    """A made-up coin of the wallet at ``path``: output ``n`` of a made-up transaction
    (spending an outpoint named by the path), so its txid is that transaction's. The
    transaction goes with the coin as ``prev_tx`` for P2WPKH (as the adapter does), or
    as ``with_prev`` says."""
    pub = pub_at(path)
    script = p2wpkh_script(pub) if kind is ScriptKind.P2WPKH else p2tr_script(pub)
    raw = prev_tx(f"{path}:{n}", [TxOut(1_000, b"\x51")] * n + [TxOut(amount, script)])
    txid = CTransaction.deserialize(raw).GetTxid()[::-1].hex()
    keep = kind is ScriptKind.P2WPKH if with_prev is None else with_prev
    return Utxo(txid, n, amount, script, path, pub, raw if keep else None)


def prev_tx(seed: str, outputs: Sequence[TxOut]) -> bytes:
    """A version 2 transaction paying ``outputs``, spending an outpoint named by ``seed``."""
    spend = CTxIn(COutPoint(hashlib.sha256(seed.encode()).digest(), 0))
    tx = CTransaction([spend], [CTxOut(o.amount, CScript(o.script)) for o in outputs], 0, 2)
    return bytes(tx.serialize())


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
    tx = CTransaction.deserialize(raw)
    base = len(tx.serialize(params={"include_witness": False}))
    return base * 3 + len(raw)
