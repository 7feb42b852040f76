"""Unconfirmed transactions waiting for the next block, in arrival order.

Arrival order is also a valid block order: a transaction can only enter after the
parents it spends. Entries carry their fee so the miner can pay it to the coinbase.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from chains.bitcoin.blocks import Block, Tx
from chains.bitcoin.node.chainindex import ChainIndex, Coin, Outpoint

#: Core's MEMPOOL_HEIGHT: the height a coin created by an unconfirmed transaction has.
MEMPOOL_HEIGHT = 0x7FFFFFFF


@dataclass(frozen=True)
class Entry:
    tx: Tx
    txid: bytes
    fee: int
    time: int
    height: int  #: chain height when it entered

    @property
    def vsize(self) -> int:
        return self.tx.vsize

    def outpoints(self) -> list[Outpoint]:
        return [(i.prev_txid, i.prev_index) for i in self.tx.inputs]


class Mempool:
    def __init__(self) -> None:
        self.entries: dict[bytes, Entry] = {}
        self.spent_by: dict[Outpoint, bytes] = {}

    def copy(self) -> Mempool:
        """A scratch mempool for test-accepting packages."""
        other = Mempool()
        other.entries, other.spent_by = dict(self.entries), dict(self.spent_by)
        return other

    def add(self, entry: Entry) -> None:
        self.entries[entry.txid] = entry
        for outpoint in entry.outpoints():
            self.spent_by[outpoint] = entry.txid

    def coin(self, outpoint: Outpoint) -> Coin | None:
        """An output of a mempool transaction, spent or not."""
        entry = self.entries.get(outpoint[0])
        if entry is None or outpoint[1] >= len(entry.tx.outputs):
            return None
        out = entry.tx.outputs[outpoint[1]]
        return Coin(out.amount, out.script, MEMPOOL_HEIGHT, coinbase=False)

    def descendants(self, txids: Iterable[bytes]) -> set[bytes]:
        """The given transactions and every mempool transaction spending from them."""
        found: set[bytes] = set()
        todo = list(txids)
        while todo:
            txid = todo.pop()
            if txid in found or txid not in self.entries:
                continue
            found.add(txid)
            todo += [
                self.spent_by[(txid, n)]
                for n in range(len(self.entries[txid].tx.outputs))
                if (txid, n) in self.spent_by
            ]
        return found

    def remove(self, txids: Iterable[bytes]) -> None:
        for txid in list(txids):
            entry = self.entries.pop(txid, None)
            if entry is not None:
                for outpoint in entry.outpoints():
                    if self.spent_by.get(outpoint) == txid:
                        del self.spent_by[outpoint]

    def remove_for_block(self, block: Block) -> None:
        """Drop what the block confirmed and, with descendants, what it conflicts with."""
        for tx in block.txs[1:]:
            txid = tx.txid
            conflicts = {
                self.spent_by[(i.prev_txid, i.prev_index)]
                for i in tx.inputs
                if (i.prev_txid, i.prev_index) in self.spent_by
            } - {txid}
            self.remove([txid])
            self.remove(self.descendants(conflicts))

    def revalidate(self, chain: ChainIndex) -> None:
        """After a reorg, drop entries whose inputs are gone (kept simple: no resurrection)."""
        for txid in list(self.entries):
            entry = self.entries.get(txid)
            if entry and any(
                op not in chain.coins and self.coin(op) is None for op in entry.outpoints()
            ):
                self.remove(self.descendants([txid]))

    def by_arrival(self) -> list[Entry]:
        return list(self.entries.values())
