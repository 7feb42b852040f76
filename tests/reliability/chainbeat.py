"""The local chains' own pace during a kill loop: the Bitcoin regtest node gets a block a
second (as ``custody localnets`` mines; transfers confirm at depth 1), and the Solana dev
node moves to a new blockhash every 20 s on average, so a transfer waiting for its
approvals or hold is rebuilt over a newer blockhash than the one it was drafted on, and a
transaction signed over an older one is refused.

A real cluster's blockhash lives about a minute (150 slots); 20 s puts a few moves in
each loop iteration. At 5 s (the first chunks in runs.jsonl) up to a fifth of the
Solana transfers failed on a loaded machine (load 9 on 2 cores): signed, then broadcast
by a worker thread (of the API or of the worker process) seconds later, after their
blockhash had gone - a measure of the signing-to-broadcast latency as much as of the
crashes (see REPORT.md). Such a transfer is now signed again once the node proves its
transaction dead, and lands once; the lane counts these re-signs."""

from __future__ import annotations

import random
import threading

from custody.localnets import LocalNets

BLOCK_SECONDS = 1.0
#: Mean seconds between Solana blockhash moves (exponentially distributed, seeded).
BLOCKHASH_SECONDS = 20.0


class ChainBeat:
    def __init__(self, nets: LocalNets, seed: int) -> None:
        self.nets = nets
        self.rng = random.Random(seed)
        self.stop_event = threading.Event()
        self.blocks = 0
        self.blockhashes = 0
        self._threads = [threading.Thread(target=f, daemon=True, name=f.__name__)
                         for f, on in ((self._mine, nets.btc_rpc is not None),
                                       (self._expire, nets.sol is not None)) if on]

    def start(self) -> ChainBeat:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for t in self._threads:
            t.join()

    def _mine(self) -> None:
        while not self.stop_event.wait(BLOCK_SECONDS):
            self.nets.mine(1)
            self.blocks += 1

    def _expire(self) -> None:
        while not self.stop_event.wait(self.rng.expovariate(1 / BLOCKHASH_SECONDS)):
            assert self.nets.sol is not None
            self.nets.sol.expire_blockhash()
            self.blockhashes += 1
