"""An approver's or auditor's witness of one HSM: its state must never go back.

The HSM refuses to open a store behind its monotonic counter (:mod:`hsm_emulator.nvram`),
but that counter is only trusted as tamper-resistant memory: whoever rewinds the store
*and* the counter, or serves an old copy of the HSM, gets a head the HSM really signed
over a rewound log. Only a party that remembers what it saw earlier can notice. So every
client that talks to the HSM through the broker - the command-line approver, the web
page (``approvals_app/approver_page/witness.js``, the same rules), ``custody
audit-verify`` - remembers per HSM identity key the highest epoch and the highest
signed audit head (epoch, sequence number, hash) it has verified, and refuses:

* a head whose ``(epoch, seq)`` is lower than the one remembered (rewound);
* a head with the remembered epoch and sequence number but another hash (forked);
* a challenge issued in an epoch lower than the one remembered (from before a restore
  from backup, so void). An older open task legitimately has a lower challenge ``seq``:
  only the head and the epoch must not go back.

A higher epoch is a restore from backup: accepted, remembered, and said. Pure: no files,
no network (:mod:`custody.witness_file` keeps the memory).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from hsm_emulator.audit import SignedHead

#: The advice every refusal ends with: the approver must not sign for a rewound HSM.
ADVICE = "the HSM's state may have been rewound; do not approve"


class WitnessRefused(Exception):
    """What a witness saw go back; ``reason`` says what and why it matters."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, order=True)
class HeadMark:
    """What a witness keeps of a signed head: ordered by ``(epoch, seq)``."""

    epoch: int
    seq: int
    hash: str

    @classmethod
    def of(cls, head: SignedHead) -> HeadMark:
        """The mark of a verified head; one without an epoch was signed before witnesses
        existed and cannot be placed in the HSM's history."""
        if head.epoch is None:
            raise WitnessRefused(f"the HSM's audit head (seq {head.seq}) carries no epoch: "
                                 "an HSM from before witnesses, or an old head replayed; "
                                 "do not approve")
        return cls(head.epoch, head.seq, head.hash)

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "seq": self.seq, "hash": self.hash}

    @classmethod
    def from_json(cls, d: Any) -> HeadMark:
        if not isinstance(d, dict) or not _count(d.get("epoch")) or not _count(
                d.get("seq")) or not isinstance(d.get("hash"), str):
            raise ValueError("not a head mark")
        return cls(d["epoch"], d["seq"], d["hash"])


@dataclass(frozen=True)
class Memory:
    """What a witness remembers of one HSM: the highest epoch from any head or
    challenge, and the highest head."""

    epoch: int
    head: HeadMark | None = None

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch,
                "head": None if self.head is None else self.head.to_json()}

    @classmethod
    def from_json(cls, d: Any) -> Memory:
        if not isinstance(d, dict) or not _count(d.get("epoch")):
            raise ValueError("not a witness memory")
        head = d.get("head")
        return cls(d["epoch"], None if head is None else HeadMark.from_json(head))


@dataclass(frozen=True)
class Seen:
    """A witness's verdict that let things through: the memory to keep, and what to say
    (a restore from backup)."""

    memory: Memory
    notes: tuple[str, ...] = ()


def witness_head(memory: Memory | None, head: HeadMark) -> Seen:
    """Accept ``head`` if it does not go back from ``memory``; else :class:`WitnessRefused`."""
    if memory is None:
        return Seen(Memory(head.epoch, head))
    if head.epoch < memory.epoch:
        raise WitnessRefused(f"the HSM's epoch went back from {memory.epoch} to {head.epoch} "
                             f"(audit head seq {head.seq}): {ADVICE}")
    last = memory.head
    if last is not None and head.epoch == last.epoch:
        if head.seq < last.seq:
            raise WitnessRefused(f"the HSM's audit head went back from seq {last.seq} to "
                                 f"{head.seq}: {ADVICE}")
        if head.seq == last.seq and head.hash != last.hash:
            raise WitnessRefused(f"the HSM's audit head at seq {head.seq} is not the one "
                                 f"seen before ({head.hash[:16]}... instead of "
                                 f"{last.hash[:16]}...): its log was forked or rewritten; "
                                 f"{ADVICE}")
    newest = head if last is None or head > last else last
    notes = _restored(memory.epoch, head.epoch)
    return Seen(Memory(max(memory.epoch, head.epoch), newest), notes)


def witness_epochs(memory: Memory, epochs: Iterable[int]) -> Seen:
    """Raise the remembered epoch to the highest of ``epochs`` (challenges' epochs: the
    HSM signed them), saying so if that is a restore."""
    top = max(epochs, default=memory.epoch)
    if top <= memory.epoch:
        return Seen(memory)
    return Seen(replace(memory, epoch=top), _restored(memory.epoch, top))


def check_challenge(memory: Memory, request_id: str, epoch: int) -> None:
    """Refuse a challenge issued in an epoch before the remembered one."""
    if epoch < memory.epoch:
        raise WitnessRefused(f"task {request_id}: its challenge was issued in epoch {epoch}, "
                             f"before the HSM's restore to epoch {memory.epoch}: it is void "
                             "- do not approve")


def _restored(before: int, now: int) -> tuple[str, ...]:
    if now <= before:
        return ()
    return (f"the HSM was restored from a backup: its epoch moved from {before} to {now}; "
            "approvals and challenges from before the restore are void",)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
