"""A regtest node: Core's validation (the kernel), an index, a mempool and a miner.

All state changes go through one lock, so the threaded RPC server can call in freely.
The chain persists in the kernel's datadir (flushed on a clean stop) and in a
journal of accepted blocks that is replayed through Core after a crash; the
mempool, like a bitcoind started with ``-persistmempool=0``, does not survive.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chains.bitcoin.blocks import Block, Header, Tx, parse_block, parse_header
from chains.bitcoin.node import miner, policy, rules
from chains.bitcoin.node.chainindex import ChainIndex, Coin, Outpoint
from chains.bitcoin.node.journal import BlockJournal
from chains.bitcoin.node.kernel import BlockRejected, Kernel
from chains.bitcoin.node.mempool import Entry, Mempool

#: Blocks in the median-time-past window (BIP113).
MTP_WINDOW = 11
#: 1 sat/vB, the fixed answer of estimatesmartfee (sat/kvB).
DEFAULT_ESTIMATE_FEERATE = 1_000


@dataclass(frozen=True)
class FoundTx:
    tx: Tx
    height: int | None  #: None while in the mempool
    block_hash: bytes | None


class RegtestNode:
    def __init__(
        self,
        datadir: Path,
        *,
        clock: Callable[[], float] = time.time,
        min_relay_feerate: int = rules.DEFAULT_MIN_RELAY_FEERATE,
        estimate_feerate: int = DEFAULT_ESTIMATE_FEERATE,
    ) -> None:
        self.datadir = Path(datadir)
        self.lock = threading.RLock()
        self.kernel = Kernel(self.datadir)
        self.index = ChainIndex()
        self.mempool = Mempool()
        self.clock = clock
        self.min_relay_feerate = min_relay_feerate
        self.estimate_feerate = estimate_feerate  #: what estimatesmartfee answers, sat/kvB
        self.stop_requested = threading.Event()
        self.journal = BlockJournal(self.datadir / "accepted-blocks.journal")
        self._replay_journal()
        self.index.sync(self.kernel)

    def _replay_journal(self) -> None:
        """Blocks the kernel lost in a crash go through Core's validation again."""
        for raw in self.journal.blocks():
            if self.kernel.height_of(parse_header(raw[:80]).hash) is None:
                try:
                    self.kernel.submit(raw)
                except BlockRejected:
                    continue

    def close(self) -> None:
        with self.lock:
            self.kernel.close()

    # chain views
    @property
    def height(self) -> int:
        return self.kernel.height

    def header(self, height: int) -> Header:
        return self.kernel.header(height)

    def median_time_past(self, height: int) -> int:
        first = max(0, height - MTP_WINDOW + 1)
        times = sorted(self.kernel.header(h).time for h in range(first, height + 1))
        return int(times[len(times) // 2]) if times else 0

    def block(self, height: int) -> Block:
        return parse_block(self.kernel.block_bytes(height))

    def find_tx(self, txid: bytes) -> FoundTx | None:
        with self.lock:
            entry = self.mempool.entries.get(txid)
            if entry is not None:
                return FoundTx(entry.tx, None, None)
            loc = self.index.txs.get(txid)
            if loc is None:
                return None
            tx = self.block(loc.height).txs[loc.position]
            return FoundTx(tx, loc.height, self.index.hashes[loc.height])

    def unspent(self, scripts: set[bytes]) -> list[tuple[Outpoint, Coin]]:
        with self.lock:
            return sorted(
                ((op, c) for op, c in self.index.coins.items() if c.script_pubkey in scripts),
                key=lambda item: (item[1].height, item[0]),
            )

    # transactions
    def policy_context(self) -> policy.Context:
        tip = self.height
        return policy.Context(
            self.index,
            self.mempool,
            tip + 1,
            self.median_time_past(tip),
            self.median_time_past,
            int(self.clock()),
            self.min_relay_feerate,
        )

    def test_accept(self, raw: bytes) -> policy.Accepted:
        with self.lock:
            return policy.accept(raw, self.policy_context())

    def submit_tx(self, raw: bytes, max_fee: Callable[[Entry], bool] | None = None) -> Entry:
        """Check and add to the mempool; ``max_fee`` may veto (Core's maxfeerate)."""
        with self.lock:
            accepted = policy.accept(raw, self.policy_context())
            if max_fee is not None and not max_fee(accepted.entry):
                raise policy.TxRejected("max-fee-exceeded")
            self.mempool.remove(accepted.replaced)
            self.mempool.add(accepted.entry)
            return accepted.entry

    # blocks
    def _after_block_change(self) -> None:
        connected = self.index.sync(self.kernel)
        for block in connected:
            self.mempool.remove_for_block(block)
        self.mempool.revalidate(self.index)

    def submit_block(self, raw: bytes) -> bool:
        """Core's ProcessNewBlock; BlockRejected with its reason. True if the block was new."""
        with self.lock:
            try:
                is_new = self.kernel.submit(raw)
                if is_new:
                    self.journal.append(raw)
                return is_new
            finally:
                self._after_block_change()

    def _template(self) -> list[Entry]:
        room = rules.MAX_BLOCK_WEIGHT - miner.COINBASE_WEIGHT_RESERVE
        chosen: list[Entry] = []
        for entry in self.mempool.by_arrival():
            if entry.tx.weight <= room:
                chosen.append(entry)
                room -= entry.tx.weight
        return chosen

    def mine_one(self, payout_script: bytes) -> bytes:
        with self.lock:
            tip = self.height
            entries = self._template()
            when = max(self.median_time_past(tip) + 1, int(self.clock()))
            block = miner.assemble(
                self.kernel.block_hash(tip),
                tip + 1,
                when,
                self.header(tip).bits,
                payout_script,
                [e.tx for e in entries],
                sum(e.fee for e in entries),
            )
            try:
                self.submit_block(block.serialize())
            except BlockRejected:
                self.mempool.remove(self.mempool.descendants(e.txid for e in entries))
                raise
            return block.header.hash

    def generate(self, count: int, payout_script: bytes) -> list[bytes]:
        return [self.mine_one(payout_script) for _ in range(count)]

    def chainwork(self, height: int) -> int:
        """Cumulative work: each block adds 2**256 / (target + 1) (Core's GetBlockProof)."""
        bits = self.header(height).bits  # regtest never retargets
        return (2**256 // (miner.bits_to_target(bits) + 1)) * (height + 1)

    def mempool_vsize(self) -> int:
        return sum(e.vsize for e in self.mempool.entries.values())
