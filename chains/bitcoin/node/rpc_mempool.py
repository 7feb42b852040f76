"""Mempool, UTXO and fee RPCs with bitcoind's names, arguments, results and errors.

``estimatesmartfee`` differs on purpose: a fresh regtest bitcoind has no fee data and
answers ``{"errors": ["Insufficient data or no feerate found"], "blocks": 0}``; this
node answers the fixed rate it was started with (``--estimatefeerate``, default
0.00001000 BTC/kvB = 1 sat/vB) so wallet code paths that need an estimate run.
"""

from __future__ import annotations

from typing import Any

from chains.bitcoin.node import rules, views
from chains.bitcoin.node.dispatch import Params, parse_hash, rpc
from chains.bitcoin.node.jsonrpc import RPC_INVALID_PARAMETER, Amount, RpcError
from chains.bitcoin.node.mempool import MEMPOOL_HEIGHT
from chains.bitcoin.node.node import RegtestNode

#: Core's -maxmempool default, in bytes.
MAX_MEMPOOL_BYTES = 300_000_000


@rpc("getmempoolinfo")
def getmempoolinfo(node: RegtestNode, _p: Params) -> dict[str, Any]:
    with node.lock:
        entries = list(node.mempool.entries.values())
    vsize = sum(e.vsize for e in entries)
    return {
        "loaded": True,
        "size": len(entries),
        "bytes": vsize,
        "usage": vsize * 4,
        "total_fee": Amount(sum(e.fee for e in entries)),
        "maxmempool": MAX_MEMPOOL_BYTES,
        "mempoolminfee": Amount(node.min_relay_feerate),
        "minrelaytxfee": Amount(node.min_relay_feerate),
        "incrementalrelayfee": Amount(rules.INCREMENTAL_RELAY_FEERATE),
        "unbroadcastcount": 0,
        "fullrbf": True,
    }


@rpc("getrawmempool", "verbose", "mempool_sequence")
def getrawmempool(node: RegtestNode, p: Params) -> Any:
    verbose = p.get(0, "bool", False)
    with node.lock:
        entries = list(node.mempool.entries.values())
        if not verbose:
            return [views.hex_id(e.txid) for e in entries]
        spenders = node.mempool.spent_by
        return {
            views.hex_id(e.txid): {
                "vsize": e.vsize,
                "weight": e.tx.weight,
                "time": e.time,
                "height": e.height,
                "wtxid": views.hex_id(e.tx.wtxid),
                "fees": {"base": Amount(e.fee), "modified": Amount(e.fee)},
                "depends": sorted(
                    {views.hex_id(op[0]) for op in e.outpoints() if op[0] in node.mempool.entries}
                ),
                "spentby": sorted(
                    {
                        views.hex_id(spenders[(e.txid, n)])
                        for n in range(len(e.tx.outputs))
                        if (e.txid, n) in spenders
                    }
                ),
                "bip125-replaceable": any(i.sequence < 0xFFFFFFFE for i in e.tx.inputs),
                "unbroadcast": False,
            }
            for e in entries
        }


@rpc("estimatesmartfee", "conf_target", "estimate_mode")
def estimatesmartfee(node: RegtestNode, p: Params) -> dict[str, Any]:
    target = p.get_int(0)
    mode = p.get(1, "string", "economical")
    if not 1 <= target <= 1008:
        raise RpcError(RPC_INVALID_PARAMETER, "Invalid conf_target, must be between 1 and 1008")
    if mode.lower() not in ("unset", "economical", "conservative"):
        raise RpcError(
            RPC_INVALID_PARAMETER,
            "Invalid estimate_mode parameter, must be one of: "
            '"unset", "economical", "conservative"',
        )
    return {"feerate": Amount(node.estimate_feerate), "blocks": max(target, 2)}


@rpc("gettxout", "txid", "n", "include_mempool")
def gettxout(node: RegtestNode, p: Params) -> Any:
    txid, n = parse_hash(p.get(0, "string"), "txid"), p.get_int(1)
    include_mempool = p.get(2, "bool", True)
    with node.lock:
        outpoint = (txid, n)
        coin = node.index.coins.get(outpoint)
        if include_mempool:
            if outpoint in node.mempool.spent_by:
                return None
            coin = coin or node.mempool.coin(outpoint)
        if coin is None:
            return None
        tip = node.height
        confirmations = 0 if coin.height == MEMPOOL_HEIGHT else tip - coin.height + 1
        return {
            "bestblock": views.hex_id(node.kernel.block_hash(tip)),
            "confirmations": confirmations,
            "value": Amount(coin.value),
            "scriptPubKey": views.script_pubkey(coin.script_pubkey),
            "coinbase": coin.coinbase,
        }


@rpc("stop")
def stop(node: RegtestNode, _p: Params) -> str:
    node.stop_requested.set()
    return "regtest node stopping"
