"""The HSM's monotonic counter: what stands for its tamper-resistant memory.

A store file can be copied back, so the store alone cannot tell that it was rewound.
A real HSM keeps a counter in memory that only moves forward (a TPM 2.0 NV counter,
``TPM2_NV_Increment``, or the HSM's own anti-rollback counter); the store records the
counter's value with every commit (:mod:`hsm_emulator.rollback`), and a store behind the
counter is refused at open.

:class:`MonotonicCounter` is that memory's interface; :class:`SealedFileCounter` is this
emulator's stand-in: a small file beside the store (``<store>.nvram`` unless the HSM is
opened with another path), authenticated with a key derived from the store's data key
(so an edited file, or one from another HSM, is refused). It is only as
tamper-resistant as the file: whoever can write both the store and this file can
rewind both together, which is outside the threat model (see the README).

The value carries an ``epoch`` beside the count: 0 until a restore from backup exists;
a restore will start a new epoch, so counts from before it never compare as later.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .errors import TamperDetected

#: Domain of a slot's MAC, so the key cannot authenticate anything else.
_MAC_DOMAIN = b"ska-nvram-v2\0"
#: Domain of the single-value file this emulator wrote before the two slots.
_LEGACY_MAC_DOMAIN = b"ska-nvram-v1\0"
#: Bytes per slot: one disk sector each, so a write torn inside a sector cannot reach
#: the other slot.
SLOT_SIZE = 512
_SLOT = re.compile(rb"ska-nvram-v2 (\d{20}) (\d{20}) ([0-9a-f]{64}) *\n")
#: Bytes the slots are padded with: the file stays text (two lines).
_PAD = b" "
#: ``os.fdatasync`` where the platform has it (the slot's size never changes, so the
#: file's metadata need not be flushed), else ``os.fsync``.
_datasync = getattr(os, "fdatasync", os.fsync)


@dataclass(frozen=True, order=True)
class CounterValue:
    """A point in the HSM's history: ``(epoch, count)``, ordered as a pair."""

    epoch: int
    count: int

    def next(self) -> CounterValue:
        return CounterValue(self.epoch, self.count + 1)


class MonotonicCounter(Protocol):
    """Tamper-resistant memory holding one value that only moves forward."""

    def read(self) -> CounterValue | None:
        """The current value; None if the counter was never written (a new HSM)."""
        ...

    def advance(self, value: CounterValue) -> None:
        """Move to ``value``, durably before returning; refuse to move backwards."""
        ...


@dataclass(frozen=True)
class _Held:
    """What the file holds: its value and the slot the next advance overwrites."""

    value: CounterValue
    spare: int  #: the slot not holding ``value`` (or the one that failed to read)
    slotted: bool  #: False for the single-value file from before the slots


class SealedFileCounter:
    """A :class:`MonotonicCounter` in a file of two MAC-sealed slots.

    Each slot holds ``epoch``, ``count`` and their MAC. An advance overwrites, in place,
    the slot not holding the current value and syncs the file once (``fdatasync``): a
    power cut during that write can spoil only the slot being written, so the other
    still holds the value before, and the store (one commit ahead of it, which the
    store tolerates and finishes) is not refused. The value is the highest among the
    slots that authenticate; none authenticating is tampering. The file is created
    once, with both slots, atomically (a temporary file, fsync, rename, fsync of the
    directory) - the only time the directory is synced. A file from before the slots
    (one JSON value, replaced on every advance) is read, and rewritten in this format
    the same atomic way at its first advance.
    """

    def __init__(self, path: str | Path, key: bytes) -> None:
        self.path = Path(path)
        self._key = key

    def read(self) -> CounterValue | None:
        held = self._held()
        return None if held is None else held.value

    def advance(self, value: CounterValue) -> None:
        held = self._held()
        if held is not None and value < held.value:
            raise TamperDetected(f"HSM counter cannot move back from {held.value} to {value}")
        if held is None or not held.slotted:
            self._create(value)
            return
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.pwrite(fd, self._slot(value), held.spare * SLOT_SIZE)
            _datasync(fd)
        finally:
            os.close(fd)

    def _held(self) -> _Held | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        if raw.startswith(b"{"):
            return _Held(self._legacy(raw), 0, slotted=False)
        if len(raw) != 2 * SLOT_SIZE:
            raise TamperDetected(f"HSM counter file {self.path} has the wrong size "
                                 f"({len(raw)} bytes, not {2 * SLOT_SIZE}): edited")
        first, second = (self._unslot(raw[i * SLOT_SIZE:(i + 1) * SLOT_SIZE]) for i in (0, 1))
        if first is not None and (second is None or first >= second):
            return _Held(first, 1, slotted=True)
        if second is not None:
            return _Held(second, 0, slotted=True)
        raise TamperDetected(f"HSM counter file {self.path} failed authentication "
                             "(edited, or another HSM's)")

    def _create(self, value: CounterValue) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, self._slot(value) * 2)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)

    def _slot(self, value: CounterValue) -> bytes:
        line = b"ska-nvram-v2 %020d %020d %s" % (value.epoch, value.count,
                                                 self._mac(value).hex().encode())
        return line.ljust(SLOT_SIZE - 1, _PAD) + b"\n"

    def _unslot(self, slot: bytes) -> CounterValue | None:
        """The slot's value, or None if it does not parse or authenticate (torn)."""
        match = _SLOT.fullmatch(slot)
        if match is None:
            return None
        value = CounterValue(int(match[1]), int(match[2]))
        if not hmac.compare_digest(bytes.fromhex(match[3].decode()), self._mac(value)):
            return None
        return value

    def _legacy(self, raw: bytes) -> CounterValue:
        try:
            doc = json.loads(raw)
            value = CounterValue(int(doc["epoch"]), int(doc["count"]))
            mac = bytes.fromhex(doc["mac"])
        except (ValueError, KeyError, TypeError):
            raise TamperDetected(f"HSM counter file {self.path} is unreadable") from None
        if not hmac.compare_digest(mac, self._mac(value, _LEGACY_MAC_DOMAIN)):
            raise TamperDetected(f"HSM counter file {self.path} failed authentication "
                                 "(edited, or another HSM's)")
        return value

    def _mac(self, value: CounterValue, domain: bytes = _MAC_DOMAIN) -> bytes:
        message = domain + f"{value.epoch}\0{value.count}".encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
