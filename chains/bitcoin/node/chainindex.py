"""The node's own UTXO set and transaction index, rebuilt from the kernel's blocks.

The kernel keeps Core's UTXO database but its C API does not expose coin lookups,
so the node replays the active chain's blocks (read back from Core's block files)
into a dict. On a reorg, or on start, it simply replays from genesis: regtest
chains are short.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from chains.bitcoin.blocks import Block, parse_block
from chains.bitcoin.scripts import is_unspendable

Outpoint = tuple[bytes, int]  #: (txid in internal byte order, output index)


@dataclass(frozen=True)
class Coin:
    value: int
    script_pubkey: bytes
    height: int
    coinbase: bool


@dataclass(frozen=True)
class TxLocation:
    height: int
    position: int


class BlockSource(Protocol):
    @property
    def height(self) -> int: ...

    def block_hash(self, height: int) -> bytes: ...

    def block_bytes(self, height: int) -> bytes: ...


class ChainIndex:
    """Unspent outputs and confirmed transactions of the active chain."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.coins: dict[Outpoint, Coin] = {}
        self.txs: dict[bytes, TxLocation] = {}
        self.hashes: list[bytes] = []

    def _connect(self, block_hash: bytes, block: Block) -> None:
        height = len(self.hashes)
        self.hashes.append(block_hash)
        if height == 0:  # the genesis coinbase is not spendable (not in Core's UTXO set)
            return
        for position, tx in enumerate(block.txs):
            if not tx.is_coinbase:
                for txin in tx.inputs:
                    del self.coins[(txin.prev_txid, txin.prev_index)]
            txid = tx.txid
            self.txs[txid] = TxLocation(height, position)
            for n, out in enumerate(tx.outputs):
                if not is_unspendable(out.script):
                    self.coins[(txid, n)] = Coin(
                        out.amount, out.script, height, tx.is_coinbase
                    )

    def sync(self, source: BlockSource) -> list[Block]:
        """Follow the active chain; returns the blocks newly connected (all of them on a reorg)."""
        mine = len(self.hashes) - 1
        if mine > source.height or (mine >= 0 and source.block_hash(mine) != self.hashes[mine]):
            self._reset()  # a reorg: replay the whole active chain
        connected = []
        for height in range(len(self.hashes), source.height + 1):
            block = parse_block(source.block_bytes(height))
            self._connect(source.block_hash(height), block)
            connected.append(block)
        return connected
