"""The HSM's monotonic counter: what stands for its tamper-resistant memory.

A store file can be copied back, so the store alone cannot tell that it was rewound.
A real HSM keeps a counter in memory that only moves forward (a TPM 2.0 NV counter,
``TPM2_NV_Increment``, or the HSM's own anti-rollback counter); the store records the
counter's value with every commit (:mod:`hsm_emulator.rollback`), and a store behind the
counter is refused at open.

:class:`MonotonicCounter` is that memory's interface; :class:`SealedFileCounter` is this
emulator's stand-in: a small file beside the store (``<store>.nvram`` unless the HSM is
opened with another path), authenticated with a key derived from the store's data key
(so an edited file, or one from another HSM, is refused) and replaced atomically. It is
only as tamper-resistant as the file: whoever can write both the store and this file can
rewind both together, which is outside the threat model (see the README).

The value carries an ``epoch`` beside the count: 0 until a restore from backup exists;
a restore will start a new epoch, so counts from before it never compare as later.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .errors import TamperDetected

#: Domain of the file's MAC, so the key cannot authenticate anything else.
_MAC_DOMAIN = b"ska-nvram-v1\0"


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


class SealedFileCounter:
    """A :class:`MonotonicCounter` in a MAC-sealed file, written atomically (a temporary
    file, fsync, rename over the old one, fsync of the directory), so a power cut leaves
    either the old value or the new one."""

    def __init__(self, path: str | Path, key: bytes) -> None:
        self.path = Path(path)
        self._key = key

    def read(self) -> CounterValue | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(raw)
            value = CounterValue(int(doc["epoch"]), int(doc["count"]))
            mac = bytes.fromhex(doc["mac"])
        except (ValueError, KeyError, TypeError):
            raise TamperDetected(f"HSM counter file {self.path} is unreadable") from None
        if not hmac.compare_digest(mac, self._mac(value)):
            raise TamperDetected(f"HSM counter file {self.path} failed authentication "
                                 "(edited, or another HSM's)")
        return value

    def advance(self, value: CounterValue) -> None:
        current = self.read()
        if current is not None and value < current:
            raise TamperDetected(f"HSM counter cannot move back from {current} to {value}")
        body = json.dumps({"epoch": value.epoch, "count": value.count,
                           "mac": self._mac(value).hex()}).encode()
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)

    def _mac(self, value: CounterValue) -> bytes:
        message = _MAC_DOMAIN + f"{value.epoch}\0{value.count}".encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
