"""RPC result objects in the shapes of Core's TxToUniv and blockToJSON (src/core_io.cpp,
src/rpc/blockchain.cpp), so clients written for bitcoind read this node unchanged.
"""

from __future__ import annotations

from typing import Any

from chains.bitcoin.addresses import destination_address
from chains.bitcoin.blocks import Block, Tx
from chains.bitcoin.node.asm import script_to_asm
from chains.bitcoin.node.descriptor import infer_descriptor
from chains.bitcoin.node.jsonrpc import Amount
from chains.bitcoin.node.miner import bits_to_target
from chains.bitcoin.node.node import RegtestNode
from chains.bitcoin.scripts import script_type
from chains.bitcoin.wire import compact_size

NETWORK = "regtest"  #: whose addresses the node shows and takes


def hex_id(h: bytes) -> str:
    """Hashes are shown byte-reversed, as Core's uint256::GetHex does."""
    return h[::-1].hex()


def difficulty(bits: int) -> float:
    """Core's GetDifficulty, step for step (it is defined on doubles)."""
    shift, value = (bits >> 24) & 0xFF, float(0xFFFF) / float(bits & 0x00FFFFFF)
    while shift < 29:
        value, shift = value * 256.0, shift + 1
    while shift > 29:
        value, shift = value / 256.0, shift - 1
    return value


def script_pubkey(spk: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {
        "asm": script_to_asm(spk),
        "desc": infer_descriptor(spk, NETWORK),
        "hex": spk.hex(),
    }
    address = destination_address(NETWORK, spk)
    if address:
        out["address"] = address
    out["type"] = script_type(spk)
    return out


def _vin(tx: Tx) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for txin in tx.inputs:
        item: dict[str, Any]
        if tx.is_coinbase:
            item = {"coinbase": txin.script_sig.hex()}
        else:
            item = {
                "txid": hex_id(txin.prev_txid),
                "vout": txin.prev_index,
                "scriptSig": {"asm": script_to_asm(txin.script_sig), "hex": txin.script_sig.hex()},
            }
        if txin.witness:
            item["txinwitness"] = [w.hex() for w in txin.witness]
        item["sequence"] = txin.sequence
        items.append(item)
    return items


def tx_json(tx: Tx, *, fee: int | None = None) -> dict[str, Any]:
    raw = tx.serialize()
    out: dict[str, Any] = {
        "txid": hex_id(tx.txid),
        "hash": hex_id(tx.wtxid),
        "version": tx.version,
        "size": len(raw),
        "vsize": tx.vsize,
        "weight": tx.weight,
        "locktime": tx.locktime,
        "vin": _vin(tx),
        "vout": [
            {"value": Amount(o.amount), "n": n, "scriptPubKey": script_pubkey(o.script)}
            for n, o in enumerate(tx.outputs)
        ],
    }
    if fee is not None:
        out["fee"] = Amount(fee)
    out["hex"] = raw.hex()
    return out


def header_json(node: RegtestNode, height: int) -> dict[str, Any]:
    header = node.header(height)
    out: dict[str, Any] = {
        "hash": hex_id(header.hash),
        "confirmations": node.height - height + 1,
        "height": height,
        "version": header.version,
        "versionHex": f"{header.version & 0xFFFFFFFF:08x}",
        "merkleroot": hex_id(header.merkle_root),
        "time": header.time,
        "mediantime": node.median_time_past(height),
        "nonce": header.nonce,
        "bits": f"{header.bits:08x}",
        "target": f"{bits_to_target(header.bits):064x}",
        "difficulty": difficulty(header.bits),
        "chainwork": f"{node.chainwork(height):064x}",
    }
    if height > 0:
        out["previousblockhash"] = hex_id(header.prev_hash)
    if height < node.height:
        out["nextblockhash"] = hex_id(node.kernel.block_hash(height + 1))
    return out


def block_json(node: RegtestNode, height: int, block: Block, verbosity: int) -> dict[str, Any]:
    out = header_json(node, height)
    nxt = out.pop("nextblockhash", None)
    raw = block.serialize()
    stripped = (
        80
        + len(compact_size(len(block.txs)))
        + sum(len(t.serialize(witness=False)) for t in block.txs)
    )
    out.update(
        {
            "nTx": len(block.txs),
            "strippedsize": stripped,
            "size": len(raw),
            "weight": stripped * 3 + len(raw),
        }
    )
    if nxt:
        out["nextblockhash"] = nxt
    if verbosity == 1:
        out["tx"] = [hex_id(t.txid) for t in block.txs]
    else:
        spent = node.kernel.spent_values(height)
        out["tx"] = [
            tx_json(t, fee=None if i == 0 else sum(spent[i - 1]) - sum(o.amount for o in t.outputs))
            for i, t in enumerate(block.txs)
        ]
    return out
