"""A small Bitcoin regtest development node on Bitcoin Core's own consensus code.

No bitcoind is needed: blocks are validated and stored by libbitcoinkernel (Bitcoin
Core's validation engine, through the ``py-bitcoinkernel`` bindings, import ``pbk``),
and every mempool input script runs through Core's script interpreter. Around that
sit a UTXO/transaction index, a mempool with Core's reject reasons, a miner for
``generatetoaddress``, and a JSON-RPC server answering the subset of bitcoind's
methods a wallet uses, with bitcoind's names, result shapes and error codes.

Run it: ``python -m chains.bitcoin.node --datadir D --rpcport P --rpcuser U
--rpcpassword W`` (``--rpcport 0`` picks a free port and prints it). In process:
``RegtestNode(datadir)`` and ``RpcServer(node, port, user, password).start()``.

Not a full node: no P2P, no wallet, no package relay, no mempool persistence,
policy limited to the checks in :mod:`chains.bitcoin.node.rules`.
"""

from chains.bitcoin.node.node import RegtestNode
from chains.bitcoin.node.server import RpcServer

__all__ = ["RegtestNode", "RpcServer"]
