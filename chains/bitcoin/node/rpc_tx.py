"""Transaction and mempool RPCs with bitcoind's names, arguments, results and errors.

Error mapping follows Core's BroadcastTransaction and JSONRPCTransactionError
(src/node/transaction.cpp, src/rpc/util.cpp): missing or spent inputs and fee caps
are RPC_VERIFY_ERROR (-25), every other mempool rejection RPC_VERIFY_REJECTED (-26)
with the validation state's text, confirmed outputs -27.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

from chains.bitcoin.node import rules, views
from chains.bitcoin.node.dispatch import Params, parse_btc, parse_hash, rpc
from chains.bitcoin.node.jsonrpc import (
    RPC_DESERIALIZATION_ERROR,
    RPC_INVALID_ADDRESS_OR_KEY,
    RPC_INVALID_PARAMETER,
    RPC_VERIFY_ALREADY_IN_UTXO_SET,
    RPC_VERIFY_ERROR,
    RPC_VERIFY_REJECTED,
    Amount,
    RpcError,
)
from chains.bitcoin.node.mempool import Entry
from chains.bitcoin.node.node import RegtestNode
from chains.bitcoin.node.policy import Context, TxDecodeFailed, TxRejected, accept, decode
from chains.bitcoin.scripts import is_unspendable

#: Core's DEFAULT_MAX_RAW_TX_FEE_RATE: 0.10 BTC/kvB.
DEFAULT_MAX_FEERATE = Decimal("0.10")
MAX_FEE_MESSAGE = "Fee exceeds maximum configured by user (e.g. -maxtxfee, maxfeerate)"
NOT_FOUND = "No such mempool or blockchain transaction. Use gettransaction for wallet transactions."


def _raw(p: Params, index: int = 0) -> bytes:
    try:
        return bytes.fromhex(p.get(index, "string"))
    except ValueError:
        raise RpcError(
            RPC_DESERIALIZATION_ERROR, "TX decode failed. Make sure the tx has at least one input."
        ) from None


def _fee_cap(p: Params, index: int) -> int:
    """maxfeerate in sat/kvB; 0 turns the check off."""
    return parse_btc(p.get(index, "any", DEFAULT_MAX_FEERATE))


def _over_cap(entry: Entry, cap_per_kvb: int) -> bool:
    return cap_per_kvb > 0 and entry.fee > rules.fee_for(cap_per_kvb, entry.vsize)


@rpc("sendrawtransaction", "hexstring", "maxfeerate", "maxburnamount")
def sendrawtransaction(node: RegtestNode, p: Params) -> str:
    raw, cap = _raw(p), _fee_cap(p, 1)
    max_burn = parse_btc(p.get(2, "any", 0))
    try:
        tx = decode(raw)
    except TxDecodeFailed:
        raise RpcError(
            RPC_DESERIALIZATION_ERROR, "TX decode failed. Make sure the tx has at least one input."
        ) from None
    if sum(o.amount for o in tx.outputs if is_unspendable(o.script)) > max_burn:
        raise RpcError(
            RPC_VERIFY_ERROR,
            "Unspendable output exceeds maximum configured by user (maxburnamount)",
        )
    txid = tx.txid
    with node.lock:
        if txid in node.mempool.entries:
            return views.hex_id(txid)
        if any((txid, n) in node.index.coins for n in range(len(tx.outputs))):
            raise RpcError(
                RPC_VERIFY_ALREADY_IN_UTXO_SET, "Transaction outputs already in utxo set"
            )
        try:
            node.submit_tx(raw, max_fee=lambda e: not _over_cap(e, cap))
        except TxRejected as exc:
            raise _broadcast_error(exc) from None
    return views.hex_id(txid)


def _broadcast_error(exc: TxRejected) -> RpcError:
    if exc.reason == "max-fee-exceeded":
        return RpcError(RPC_VERIFY_ERROR, MAX_FEE_MESSAGE)
    if exc.missing_inputs:
        return RpcError(RPC_VERIFY_ERROR, str(exc))
    return RpcError(RPC_VERIFY_REJECTED, str(exc))


@rpc("testmempoolaccept", "rawtxs", "maxfeerate")
def testmempoolaccept(node: RegtestNode, p: Params) -> list[dict[str, Any]]:
    """Each transaction in order against the mempool plus the ones before it (a package)."""
    raws = [_hex_tx(h) for h in p.get(0, "array")]
    if not 1 <= len(raws) <= 25:
        raise RpcError(RPC_INVALID_PARAMETER, "Array must contain between 1 and 25 transactions.")
    cap = _fee_cap(p, 1)
    with node.lock:
        ctx = node.policy_context()
        scratch = dataclasses.replace(ctx, mempool=ctx.mempool.copy())
        return [_test_one(raw, scratch, cap) for raw in raws]


def _hex_tx(value: Any) -> bytes:
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
        decode(raw)
    except (ValueError, TxDecodeFailed):
        raise RpcError(
            RPC_DESERIALIZATION_ERROR,
            f"TX decode failed: {value} Make sure the tx has at least one input.",
        ) from None
    return raw


def _test_one(raw: bytes, ctx: Context, cap: int) -> dict[str, Any]:
    tx = decode(raw)
    head = {"txid": views.hex_id(tx.txid), "wtxid": views.hex_id(tx.wtxid)}
    try:
        accepted = accept(raw, ctx)
        if _over_cap(accepted.entry, cap):
            raise TxRejected("max-fee-exceeded")
    except TxRejected as exc:
        return {**head, "allowed": False, "reject-reason": exc.reason, "reject-details": str(exc)}
    entry = accepted.entry
    ctx.mempool.remove(accepted.replaced)
    ctx.mempool.add(entry)
    return {
        **head,
        "allowed": True,
        "vsize": entry.vsize,
        "fees": {
            "base": Amount(entry.fee),
            "effective-feerate": Amount(entry.fee * 1000 // entry.vsize),
            "effective-includes": [head["wtxid"]],
        },
    }


@rpc("getrawtransaction", "txid", "verbose", "blockhash")
def getrawtransaction(node: RegtestNode, p: Params) -> Any:
    txid = parse_hash(p.get(0, "string"), "parameter 1")
    verbose = p.get(1, "any", 0)
    verbose = bool(verbose) if isinstance(verbose, bool) else p.get_int(1, 0) > 0
    block_hash = p.get(2, "string", None)
    with node.lock:
        found = node.find_tx(txid)
        if block_hash is not None:
            if node.kernel.height_of(parse_hash(block_hash, "parameter 3")) is None:
                raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Block hash not found")
            if found is None or found.block_hash != parse_hash(block_hash, "parameter 3"):
                raise RpcError(
                    RPC_INVALID_ADDRESS_OR_KEY,
                    "No such transaction found in the "
                    "provided block. Use gettransaction for wallet transactions.",
                )
        if found is None:
            raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, NOT_FOUND)
        if not verbose:
            return found.tx.serialize().hex()
        out = ({"in_active_chain": True} if block_hash else {}) | views.tx_json(found.tx)
        if found.height is not None and found.block_hash is not None:
            time = node.header(found.height).time
            out |= {
                "blockhash": views.hex_id(found.block_hash),
                "confirmations": node.height - found.height + 1,
                "time": time,
                "blocktime": time,
            }
        return out
