"""Mempool acceptance in the order of Core's MemPoolAccept, with Core's reject reasons.

Consensus parts that need the UTXO set (inputs exist and are unspent, coinbase
maturity, value balance, BIP68 sequence locks) are checked here against the node's
index; every input script is checked by Core's own interpreter (``pbk``
``ScriptPubkey.verify`` with P2SH, DERSIG, NULLDUMMY, CLTV, CSV, WITNESS and TAPROOT).
Core's policy-only script flags (NULLFAIL, LOW_S, CLEANSTACK...) are not exposed by
the kernel and so are not enforced; the kernel also returns no ScriptError, so a
script failure is reported with Core's reason prefix and a generic detail.
Reason strings: src/validation.cpp, src/consensus/tx_check.cpp, src/consensus/tx_verify.cpp.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pbk
from pbk.script import PrecomputedTransactionData

from chains.bitcoin.blocks import Tx, parse_tx
from chains.bitcoin.node import rules
from chains.bitcoin.node.chainindex import ChainIndex, Coin
from chains.bitcoin.node.mempool import Entry, Mempool
from chains.errors import ChainDecodeError


class TxDecodeFailed(Exception):
    """Not a transaction (Core: RPC_DESERIALIZATION_ERROR)."""


class TxRejected(Exception):
    """Core's ``TxValidationState``: ``reason`` plus ``detail``; ``str`` is its ToString()."""

    def __init__(
        self,
        reason: str,
        detail: str = "",
        *,
        missing_inputs: bool = False,
        already_in_utxo_set: bool = False,
    ) -> None:
        super().__init__(f"{reason}, {detail}" if detail else reason)
        self.reason, self.detail = reason, detail
        self.missing_inputs = missing_inputs
        self.already_in_utxo_set = already_in_utxo_set


@dataclass(frozen=True)
class Context:
    chain: ChainIndex
    mempool: Mempool
    next_height: int
    tip_mtp: int  #: median time past of the current tip
    mtp_at: Callable[[int], int]  #: median time past at a height
    now: int
    min_relay_feerate: int  #: sat/kvB


@dataclass(frozen=True)
class Accepted:
    entry: Entry
    replaced: frozenset[bytes]


def decode(raw: bytes) -> Tx:
    """Both our parser and Core's must take the bytes, with nothing left over."""
    try:
        tx = parse_tx(raw)
        pbk.Transaction(raw)
    except (ChainDecodeError, RuntimeError):
        raise TxDecodeFailed("TX decode failed") from None
    return tx


def accept(raw: bytes, ctx: Context) -> Accepted:
    tx = decode(raw)
    txid = tx.txid
    for check in (rules.check_transaction, rules.check_standard):
        reason = check(tx)
        if reason:
            raise TxRejected(reason)
    if not rules.is_final(tx, ctx.next_height, ctx.tip_mtp):
        raise TxRejected("non-final")
    _check_not_known(tx, txid, ctx)
    coins, conflicts = _resolve_inputs(tx, txid, ctx)
    fee = _check_inputs(tx, coins, ctx)
    replaced = _check_replacement(tx, fee, conflicts, ctx)
    _check_scripts(tx, raw, coins)
    return Accepted(Entry(tx, txid, fee, ctx.now, ctx.next_height - 1), frozenset(replaced))


def _check_not_known(tx: Tx, txid: bytes, ctx: Context) -> None:
    known = ctx.mempool.entries.get(txid)
    if known is not None:
        same = known.tx.wtxid == tx.wtxid
        raise TxRejected(
            "txn-already-in-mempool" if same else "txn-same-nonwitness-data-in-mempool"
        )


def _resolve_inputs(tx: Tx, txid: bytes, ctx: Context) -> tuple[list[Coin], set[bytes]]:
    coins: list[Coin] = []
    conflicts: set[bytes] = set()
    for txin in tx.inputs:
        outpoint = (txin.prev_txid, txin.prev_index)
        coin = ctx.chain.coins.get(outpoint) or ctx.mempool.coin(outpoint)
        if coin is None:
            if any((txid, n) in ctx.chain.coins for n in range(len(tx.outputs))):
                raise TxRejected("txn-already-known", already_in_utxo_set=True)
            raise TxRejected("bad-txns-inputs-missingorspent", missing_inputs=True)
        if outpoint in ctx.mempool.spent_by:
            conflicts.add(ctx.mempool.spent_by[outpoint])
        coins.append(coin)
    return coins, conflicts


def _check_inputs(tx: Tx, coins: list[Coin], ctx: Context) -> int:
    """Consensus::CheckTxInputs, BIP68 and the minimum relay fee; returns the fee."""
    for coin in coins:
        depth = ctx.next_height - coin.height
        if coin.coinbase and depth < rules.COINBASE_MATURITY:
            raise TxRejected(
                "bad-txns-premature-spend-of-coinbase", f"tried to spend coinbase at depth {depth}"
            )
    value_in = sum(c.value for c in coins)
    value_out = sum(o.amount for o in tx.outputs)
    if not rules.money_range(value_in):
        raise TxRejected("bad-txns-inputvalues-outofrange")
    if value_in < value_out:
        raise TxRejected(
            "bad-txns-in-belowout",
            f"value in ({rules.format_money(value_in)}) < "
            f"value out ({rules.format_money(value_out)})",
        )
    if not rules.sequence_locks_ok(tx, coins, ctx.next_height, ctx.tip_mtp, ctx.mtp_at):
        raise TxRejected("non-BIP68-final")
    fee = value_in - value_out
    needed = rules.fee_for(ctx.min_relay_feerate, tx.vsize)
    if fee < needed:
        raise TxRejected("min relay fee not met", f"{fee} < {needed}")
    return fee


def _check_replacement(tx: Tx, fee: int, conflicts: set[bytes], ctx: Context) -> set[bytes]:
    """Full replace-by-fee (Core's default since v28) with BIP125's fee rules."""
    if not conflicts:
        return set()
    evicted = ctx.mempool.descendants(conflicts)
    hex_id = tx.txid[::-1].hex()
    if any((i.prev_txid in evicted) for i in tx.inputs):
        raise TxRejected("bad-txns-spends-conflicting-tx")
    for txid in conflicts:
        old = ctx.mempool.entries[txid]
        if fee * old.vsize <= old.fee * tx.vsize:
            raise TxRejected(
                "insufficient fee",
                f"rejecting replacement {hex_id}; new feerate "
                f"{rules.feerate_str(fee, tx.vsize)} <= old feerate "
                f"{rules.feerate_str(old.fee, old.vsize)}",
            )
    old_fees = sum(ctx.mempool.entries[t].fee for t in evicted)
    if fee < old_fees:
        raise TxRejected(
            "insufficient fee",
            f"rejecting replacement {hex_id}, less fees than "
            f"conflicting txs; {rules.format_money(fee)} < {rules.format_money(old_fees)}",
        )
    extra = rules.fee_for(rules.INCREMENTAL_RELAY_FEERATE, tx.vsize)
    if fee - old_fees < extra:
        raise TxRejected(
            "insufficient fee",
            f"rejecting replacement {hex_id}, not enough additional "
            f"fees to relay; {rules.format_money(fee - old_fees)} < {rules.format_money(extra)}",
        )
    return evicted


def _check_scripts(tx: Tx, raw: bytes, coins: list[Coin]) -> None:
    """Every input through Core's interpreter, with all spent outputs (needed for taproot)."""
    kernel_tx = pbk.Transaction(raw)
    spent = [pbk.TransactionOutput(pbk.ScriptPubkey(c.script_pubkey), c.value) for c in coins]
    txdata = PrecomputedTransactionData(kernel_tx, spent)
    for index, coin in enumerate(coins):
        try:
            ok = pbk.ScriptPubkey(coin.script_pubkey).verify(
                coin.value, kernel_tx, txdata, index, pbk.ScriptVerificationFlags.ALL
            )
        except pbk.ScriptVerifyException:
            ok = False
        if not ok:
            prev = tx.inputs[index]
            raise TxRejected(
                "mempool-script-verify-flag-failed (script evaluation failed)",
                f"input {index} of {tx.txid[::-1].hex()} (wtxid {tx.wtxid[::-1].hex()}), "
                f"spending {prev.prev_txid[::-1].hex()}:{prev.prev_index}",
            )
