"""Append-only, hash-chained audit log with HSM-signed heads.

Each entry's hash covers the previous hash, its sequence number, time and event, so an
edited, removed or reordered entry breaks the chain. The HSM signs the head (sequence
number and hash) on request and at every :data:`CHECKPOINT_EVERY` entries; a verifier
holding a signed head detects truncation too. Verification needs only the entries, a
signed head and the HSM's public identity key: it can run offline.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any

from .errors import AuditFailure
from .identity import Domain, IdentityKey, verify_identity
from .model import canonical_json
from .store import Store

GENESIS = "0" * 64
#: The HSM signs the head every this many entries, so truncation past a checkpoint shows.
CHECKPOINT_EVERY = 256


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: float
    event: dict[str, Any]
    prev: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "at": self.at, "event": self.event, "prev": self.prev,
                "hash": self.hash}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AuditEntry:
        return cls(int(d["seq"]), float(d["at"]), dict(d["event"]), str(d["prev"]),
                   str(d["hash"]))


@dataclass(frozen=True)
class SignedHead:
    seq: int
    hash: str
    at: float
    signature: bytes

    def body(self) -> bytes:
        return canonical_json({"seq": self.seq, "hash": self.hash, "at": self.at})

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash, "at": self.at,
                "signature": self.signature.hex()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SignedHead:
        return cls(int(d["seq"]), str(d["hash"]), float(d["at"]), bytes.fromhex(d["signature"]))


def entry_hash(prev: str, seq: int, at: float, event: dict[str, Any] | bytes) -> str:
    """SHA-256 over ``prev \n seq \n repr(at) \n canonical(event)``."""
    body = event if isinstance(event, bytes) else canonical_json(event)
    return hashlib.sha256(f"{prev}\n{seq}\n{at!r}\n".encode() + body).hexdigest()


def event_text(event: dict[str, Any]) -> str:
    """``canonical_json(event)`` as text, built directly for the usual flat event.

    An event whose keys are strings and whose values are strings or integers (every
    signing event) is written out here - sorted keys, ``json``'s own string escaping,
    ``int`` digits - which is byte for byte what ``canonical_json`` gives, without the
    general encoder's set-up per call. Anything else goes through ``canonical_json``.
    So the hash definition of :func:`entry_hash` is unchanged.
    """
    parts = []
    for key in sorted(event):
        value = event[key]
        kind = type(value)
        if type(key) is not str or (kind is not str and kind is not int):
            return canonical_json(event).decode()
        text = encode_basestring(value) if kind is str else int.__repr__(value)
        parts.append(f"{encode_basestring(key)}:{text}")
    return "{" + ",".join(parts) + "}"


class AuditLog:
    """The log inside the HSM's store. Appends join the caller's store transaction."""

    def __init__(self, store: Store, identity: IdentityKey) -> None:
        self._store = store
        self._identity = identity
        row = store.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        self._seq, self._head = (int(row[0][0]), str(row[0][1])) if row else (0, GENESIS)
        self._buffer: list[tuple[Any, ...]] | None = None

    def append(self, at: float, event: dict[str, Any]) -> AuditEntry:
        """Append one entry; raises :class:`AuditFailure` if it cannot be written."""
        prev = self._head
        seq, digest = self._write(at, event)
        return AuditEntry(seq, at, event, prev, digest)

    def record(self, at: float, event: dict[str, Any]) -> None:
        """:meth:`append` for bulk callers that do not use the entry it returns."""
        self._write(at, event)

    def _write(self, at: float, event: dict[str, Any]) -> tuple[int, str]:
        """Write (or buffer) the next entry and move the head to it."""
        seq = self._seq + 1
        text = event_text(event)
        digest = entry_hash(self._head, seq, at, text.encode())
        row = (seq, at, text, self._head, digest)
        try:
            if self._buffer is not None:
                self._buffer.append(row)
            else:
                self._store.execute("INSERT INTO audit VALUES (?, ?, ?, ?, ?)", row)
            if seq % CHECKPOINT_EVERY == 0:
                head = self._sign(seq, digest, at)
                self._store.execute("INSERT INTO audit_heads VALUES (?, ?)",
                                    (seq, json.dumps(head.to_json())))
        except Exception as exc:
            raise AuditFailure(f"audit entry could not be written: {exc}") from None
        self._seq, self._head = seq, digest
        return seq, digest

    @contextmanager
    def buffered(self) -> Iterator[None]:
        """Collect appends and write them in one statement, inside the caller's
        transaction (so still before anything is returned): for bulk operations."""
        if self._buffer is not None:
            yield
            return
        self._buffer = []
        try:
            yield
            rows, self._buffer = self._buffer, None
            try:
                self._store.insert_rows("audit", rows)
            except Exception as exc:
                raise AuditFailure(f"audit entries could not be written: {exc}") from None
        finally:
            self._buffer = None

    def reload(self) -> None:
        """Re-read the head after a rolled-back transaction."""
        row = self._store.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        self._seq, self._head = (int(row[0][0]), str(row[0][1])) if row else (0, GENESIS)

    def head(self, at: float) -> SignedHead:
        return self._sign(self._seq, self._head, at)

    def _sign(self, seq: int, digest: str, at: float) -> SignedHead:
        unsigned = SignedHead(seq, digest, at, b"")
        return SignedHead(seq, digest, at, self._identity.sign(Domain.AUDIT_HEAD, unsigned.body()))

    def entries(self, start: int = 1, limit: int = 1000) -> list[AuditEntry]:
        rows = self._store.execute(
            "SELECT seq, at, event, prev, hash FROM audit WHERE seq >= ? ORDER BY seq LIMIT ?",
            (start, limit),
        )
        return [AuditEntry(int(r[0]), float(r[1]), json.loads(r[2]), str(r[3]), str(r[4]))
                for r in rows]

    def checkpoints(self) -> list[SignedHead]:
        rows = self._store.execute("SELECT body FROM audit_heads ORDER BY seq")
        return [SignedHead.from_json(json.loads(r[0])) for r in rows]


@dataclass(frozen=True)
class AuditReport:
    ok: bool
    entries: int
    problems: tuple[str, ...]


def verify_log(
    entries: Sequence[AuditEntry], heads: Iterable[SignedHead], identity_public_der: bytes
) -> AuditReport:
    """Verify a whole log (from seq 1) against signed heads, offline.

    Finds edited entries (hash mismatch), removed or reordered ones (sequence or chain
    break), and truncation (a signed head beyond the last entry or not matching it).
    """
    problems: list[str] = []
    prev = GENESIS
    by_seq: dict[int, str] = {}
    for i, e in enumerate(entries, start=1):
        if e.seq != i:
            problems.append(f"entry at position {i} has seq {e.seq}: removed or reordered")
            break
        if e.prev != prev:
            problems.append(f"entry {e.seq}: chain broken (prev hash differs)")
            break
        if entry_hash(prev, e.seq, e.at, e.event) != e.hash:
            problems.append(f"entry {e.seq}: content does not match its hash (edited)")
            break
        prev = e.hash
        by_seq[e.seq] = e.hash
    heads = list(heads)
    if not heads:
        problems.append("no signed head to anchor the log")
    for h in heads:
        if not verify_identity(identity_public_der, Domain.AUDIT_HEAD, h.body(), h.signature):
            problems.append(f"head {h.seq}: signature invalid")
        elif h.seq > len(entries):
            problems.append(f"head {h.seq}: log truncated (only {len(entries)} entries)")
        elif h.seq and by_seq.get(h.seq) != h.hash:
            problems.append(f"head {h.seq}: does not match entry {h.seq}")
    return AuditReport(not problems, len(entries), tuple(problems))
