"""Bitcoin Core's validation engine (libbitcoinkernel through ``pbk``) for one regtest datadir.

This is the only module that touches ``pbk`` for chain state: blocks enter the chain
solely through ``ChainstateManager.process_block`` (Core's ProcessNewBlock), and the
kernel keeps the block files, block index and UTXO database in ``datadir`` the way
bitcoind does, so a restart finds the chain again.

The kernel's C API reports a rejected block only as an enum; Core's reject reason
("bad-txns-inputs-missingorspent", "high-hash", ...) is read from the kernel's own
log lines, which carry ``BlockValidationState::ToString()``.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

import pbk

from chains.bitcoin.blocks import Header, parse_header

#: Log lines in which Core prints a failed block's ``BlockValidationState::ToString()``.
_REASON_PATTERNS = (
    re.compile(r"(?:AcceptBlock|CheckBlock) FAILED \((.*)\)\s*$"),
    re.compile(r"ConnectBlock \S+ failed, (.*?)\s*$"),
    re.compile(r"Block validation error: (.*?)\s*$"),
)


class BlockRejected(Exception):
    """Core refused a block; ``reason`` is its reject reason, ``detail`` its full message."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail or reason


@dataclass(frozen=True)
class Checked:
    block_hash: bytes
    mode: pbk.ValidationMode
    result: pbk.BlockValidationResult


class _LogTap:
    """Keeps the kernel's recent log lines so a rejection can be explained."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self.connection = pbk.LoggingConnection(self._on_line)

    def _on_line(self, line: str) -> None:
        with self._lock:
            self.lines = [*self.lines[-200:], line]

    def take(self) -> list[str]:
        with self._lock:
            out, self.lines = self.lines, []
        return out


def _reason_from_logs(lines: list[str]) -> str | None:
    for pattern in _REASON_PATTERNS:
        for line in reversed(lines):
            match = pattern.search(line)
            if match:
                return match.group(1)
    return None


class Kernel:
    """A regtest ``ChainstateManager`` plus the little the node asks of it."""

    def __init__(self, datadir: Path) -> None:
        self._tap = _LogTap()
        self._checked: list[Checked] = []
        callbacks = pbk.ValidationInterfaceCallbacks(block_checked=self._on_checked)
        datadir.mkdir(parents=True, exist_ok=True)
        self._chainman: pbk.ChainstateManager | None = pbk.load_chainman(
            datadir, pbk.ChainType.REGTEST, validation_callbacks=callbacks
        )

    def _on_checked(self, _user: object, block: pbk.Block, state: pbk.BlockValidationState) -> None:
        self._checked.append(
            Checked(bytes(block.block_hash), state.validation_mode, state.block_validation_result)
        )

    @property
    def chainman(self) -> pbk.ChainstateManager:
        if self._chainman is None:
            raise RuntimeError("kernel closed")
        return self._chainman

    @property
    def _chain(self) -> pbk.Chain:
        return self.chainman.get_active_chain()

    def close(self) -> None:
        """Destroy the chainstate manager now: the kernel flushes its state to the datadir.

        Garbage collection alone may never get to it (views keep it alive, and an exiting
        interpreter need not run finalizers), and an unflushed chainstate loses the tip.
        """
        if self._chainman is not None:
            chainman, self._chainman = self._chainman, None
            chainman.__exit__(None, None, None)

    @property
    def height(self) -> int:
        return int(self._chain.height)

    def _entry(self, height: int) -> pbk.BlockTreeEntry:
        return self._chain.block_tree_entries[height]

    def block_hash(self, height: int) -> bytes:
        return bytes(self._entry(height).block_hash)

    def header(self, height: int) -> Header:
        return parse_header(bytes(self._entry(height).block_header))

    def block_bytes(self, height: int) -> bytes:
        return bytes(self.chainman.blocks[self._entry(height)])

    def spent_values(self, height: int) -> list[list[int]]:
        """Amounts each non-coinbase transaction of a block spent, from Core's undo data."""
        if height == 0:
            return []
        undo = self.chainman.block_spent_outputs[self._entry(height)]
        return [[coin.output.amount for coin in tx.coins] for tx in undo.transactions]

    def height_of(self, block_hash: bytes) -> int | None:
        """Height of a block on the active chain, None if unknown or not on it."""
        try:
            entry = self.chainman.block_tree_entries[pbk.BlockHash(block_hash)]
        except KeyError:
            return None
        return int(entry.height) if entry in self._chain.block_tree_entries else None

    def submit(self, raw_block: bytes) -> bool:
        """Hand a block to Core's ProcessNewBlock; True if new, BlockRejected with Core's reason."""
        self._tap.take()
        self._checked.clear()
        try:
            block = pbk.Block(raw_block)
        except RuntimeError:
            raise BlockRejected("Block decode failed") from None
        try:
            is_new, failed = self.chainman.process_block(block), False
        except pbk.ProcessBlockException:
            is_new, failed = False, True
        bad = [c for c in self._checked if c.mode != pbk.ValidationMode.VALID]
        if bad or failed:
            fallback = bad[-1].result.name.lower() if bad else "rejected"
            detail = _reason_from_logs(self._tap.take()) or fallback
            raise BlockRejected(detail.split(",")[0], detail)
        return bool(is_new)
