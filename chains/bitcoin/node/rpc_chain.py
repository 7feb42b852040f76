"""Blockchain and mining RPCs with bitcoind's names, arguments, results and errors."""

from __future__ import annotations

from typing import Any

from chains.bitcoin.addresses import destination_script
from chains.bitcoin.blocks import parse_header
from chains.bitcoin.node import views
from chains.bitcoin.node.descriptor import DescriptorError, descriptor_script, infer_descriptor
from chains.bitcoin.node.dispatch import Params, parse_hash, rpc
from chains.bitcoin.node.jsonrpc import (
    RPC_DESERIALIZATION_ERROR,
    RPC_INVALID_ADDRESS_OR_KEY,
    RPC_INVALID_PARAMETER,
    RPC_MISC_ERROR,
    Amount,
    RpcError,
)
from chains.bitcoin.node.kernel import BlockRejected
from chains.bitcoin.node.miner import bits_to_target
from chains.bitcoin.node.node import RegtestNode
from chains.errors import InvalidAddress


@rpc("getblockcount")
def getblockcount(node: RegtestNode, _p: Params) -> int:
    return node.height


@rpc("getbestblockhash")
def getbestblockhash(node: RegtestNode, _p: Params) -> str:
    return views.hex_id(node.kernel.block_hash(node.height))


@rpc("getblockchaininfo")
def getblockchaininfo(node: RegtestNode, _p: Params) -> dict[str, Any]:
    with node.lock:
        tip = node.height
        header = node.header(tip)
        return {
            "chain": "regtest",
            "blocks": tip,
            "headers": tip,
            "bestblockhash": views.hex_id(header.hash),
            "bits": f"{header.bits:08x}",
            "target": f"{bits_to_target(header.bits):064x}",
            "difficulty": views.difficulty(header.bits),
            "time": header.time,
            "mediantime": node.median_time_past(tip),
            "verificationprogress": 1,
            "initialblockdownload": False,
            "chainwork": f"{node.chainwork(tip):064x}",
            "size_on_disk": _disk_size(node),
            "pruned": False,
            "warnings": [],
        }


def _disk_size(node: RegtestNode) -> int:
    blocks = node.datadir / "blocks"
    return sum(f.stat().st_size for f in blocks.glob("*.dat")) if blocks.exists() else 0


@rpc("getblockhash", "height")
def getblockhash(node: RegtestNode, p: Params) -> str:
    height = p.get_int(0)
    with node.lock:
        if not 0 <= height <= node.height:
            raise RpcError(RPC_INVALID_PARAMETER, "Block height out of range")
        return views.hex_id(node.kernel.block_hash(height))


def _height_of(node: RegtestNode, block_hash: str) -> int:
    height = node.kernel.height_of(parse_hash(block_hash, "blockhash"))
    if height is None:
        raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Block not found")
    return height


@rpc("getblock", "blockhash", "verbosity")
def getblock(node: RegtestNode, p: Params) -> Any:
    verbosity = p.get(1, "any", 1)
    verbosity = int(verbosity) if isinstance(verbosity, bool) else p.get_int(1, 1)
    with node.lock:
        height = _height_of(node, p.get(0, "string"))
        if verbosity <= 0:
            return node.kernel.block_bytes(height).hex()
        return views.block_json(node, height, node.block(height), min(verbosity, 2))


@rpc("getblockheader", "blockhash", "verbose")
def getblockheader(node: RegtestNode, p: Params) -> Any:
    with node.lock:
        height = _height_of(node, p.get(0, "string"))
        if not p.get(1, "bool", True):
            return node.header(height).serialize().hex()
        out = views.header_json(node, height)
        out["nTx"] = len(node.block(height).txs)
        return out


@rpc("generatetoaddress", "nblocks", "address", "maxtries")
def generatetoaddress(node: RegtestNode, p: Params) -> list[str]:
    count, address = p.get_int(0), p.get(1, "string")
    p.get_int(2, 1_000_000)
    try:
        script = destination_script(views.NETWORK, address)
    except InvalidAddress:
        raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Error: Invalid address") from None
    try:
        return [views.hex_id(h) for h in node.generate(count, script)]
    except BlockRejected as exc:
        raise RpcError(
            RPC_MISC_ERROR, f"ProcessNewBlock, block not accepted: {exc.detail}"
        ) from None


@rpc("submitblock", "hexdata", "dummy")
def submitblock(node: RegtestNode, p: Params) -> str | None:
    """BIP22 results: null when accepted, else "duplicate", "inconclusive" or Core's reason."""
    try:
        raw = bytes.fromhex(p.get(0, "string"))
    except ValueError:
        raise RpcError(RPC_DESERIALIZATION_ERROR, "Block decode failed") from None
    try:
        is_new = node.submit_block(raw)
    except BlockRejected as exc:
        if exc.reason == "Block decode failed":
            raise RpcError(RPC_DESERIALIZATION_ERROR, exc.reason) from None
        return exc.reason
    if not is_new:
        return "duplicate"
    return _inconclusive(node, raw)


def _inconclusive(node: RegtestNode, raw: bytes) -> str | None:
    """Valid but not on the active chain (a side branch): Core says "inconclusive"."""
    on_chain = node.kernel.height_of(parse_header(raw[:80]).hash) is not None
    return None if on_chain else "inconclusive"


@rpc("scantxoutset", "action", "scanobjects")
def scantxoutset(node: RegtestNode, p: Params) -> Any:
    action = p.get(0, "string")
    if action in ("abort", "status"):
        return False if action == "abort" else None
    if action != "start":
        raise RpcError(RPC_INVALID_PARAMETER, "Invalid action '" + action + "'")
    objects = p.get(1, "array", None)
    if objects is None:
        raise RpcError(RPC_MISC_ERROR, "scanobjects argument is required for the start action")
    scripts = {_scan_script(o) for o in objects}
    with node.lock:
        tip = node.height
        found = node.unspent(scripts)
        unspents = [
            {
                "txid": views.hex_id(op[0]),
                "vout": op[1],
                "scriptPubKey": coin.script_pubkey.hex(),
                "desc": infer_descriptor(coin.script_pubkey, views.NETWORK),
                "amount": Amount(coin.value),
                "coinbase": coin.coinbase,
                "height": coin.height,
                "blockhash": views.hex_id(node.index.hashes[coin.height]),
                "confirmations": tip - coin.height + 1,
            }
            for op, coin in found
        ]
        return {
            "success": True,
            "txouts": len(node.index.coins),
            "height": tip,
            "bestblock": views.hex_id(node.kernel.block_hash(tip)),
            "unspents": unspents,
            "total_amount": Amount(sum(c.value for _, c in found)),
        }


def _scan_script(obj: Any) -> bytes:
    desc = obj.get("desc") if isinstance(obj, dict) else obj
    if not isinstance(desc, str):
        raise RpcError(
            RPC_INVALID_PARAMETER, "Scan object needs to be either a string or an object"
        )
    try:
        return descriptor_script(desc, views.NETWORK)
    except DescriptorError as exc:
        raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, str(exc)) from None
