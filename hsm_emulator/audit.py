"""Append-only, hash-chained audit log with HSM-signed heads.

Each entry's hash covers the previous hash, its sequence number, time and event, so an
edited, removed or reordered entry breaks the chain. The HSM signs the head (sequence
number and hash, with its counter's epoch and count) on request and at every
:data:`CHECKPOINT_EVERY` entries; a verifier holding a signed head detects truncation
too, and one that remembers the highest head it saw detects a rewound HSM. Verification
needs only the entries, a signed head and the HSM's public identity key: it can run
offline.

Caller strings are bounded before they are logged (:func:`bounded`, applied to every
appended event), so no caller can make an entry too large to page out of the HSM or to
verify: in an event, at any depth,

* a string (or dict key) longer than :data:`MAX_TEXT` characters, or one that is not
  valid Unicode (a lone surrogate), becomes its first :data:`KEEP_TEXT` characters and a
  marker ``...[<n> chars, sha256 <hex of its UTF-8>]`` - so a caller who kept the
  original can still show which string it was;
* a list or dict of more than :data:`MAX_ITEMS` items keeps its first items (a dict's in
  key order) and a marker ``...[<n> items, sha256 <hex of its canonical JSON>]`` as the
  last item (a dict's under the key ``"..."``);
* a list or dict nested deeper than :data:`MAX_DEPTH`, an integer of :data:`MAX_INT_BITS`
  bits or more and a non-finite float become a marker string;
* if the event's canonical JSON is still longer than :data:`MAX_EVENT` bytes, its
  largest top-level values become markers until it fits.

An entry's event is then at most :data:`MAX_EVENT` bytes of canonical JSON, whatever
callers sent, so a page of entries always fits in the remote HSM's reply frame. The hash
chain covers the bounded event, which is what is stored and returned.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any

from .canonical import canonical_json, canonical_text
from .errors import AuditFailure, TamperDetected
from .identity import Domain, IdentityKey, verify_identity
from .store import Store

GENESIS = "0" * 64
#: The HSM signs the head every this many entries, so truncation past a checkpoint shows.
CHECKPOINT_EVERY = 256
#: Longest string, in characters, an audit event keeps as it is (an RSA-4096 key in hex fits).
MAX_TEXT = 1280
#: Characters of an over-long string kept in front of its marker.
KEEP_TEXT = 64
#: Most items a list, or keys a dict, in an audit event keeps (the marker included).
MAX_ITEMS = 64
#: Deepest nesting of lists and dicts kept (the event itself is depth 1).
MAX_DEPTH = 8
#: Integers of this many bits or more are logged as a marker.
MAX_INT_BITS = 256
#: Bytes of canonical JSON an event may take once its parts are bounded.
MAX_EVENT = 64 * 1024


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
    """The log's head as the HSM signed it: sequence number and hash of the last entry,
    when, and - so approvers and auditors can witness that the HSM's state never goes
    back - the HSM's counter value at signing (:class:`~hsm_emulator.nvram.CounterValue`:
    ``epoch``, which a restore from backup moves on, and ``counter``, its count). Heads
    signed before witnesses existed (checkpoints in older stores) carry neither, and
    their signed body has neither: they still verify."""

    seq: int
    hash: str
    at: float
    signature: bytes
    epoch: int | None = None
    counter: int | None = None

    def body(self) -> bytes:
        """The bytes signed: canonical JSON of ``seq``, ``hash``, ``at`` and, when set,
        ``epoch`` and ``counter``."""
        doc: dict[str, Any] = {"seq": self.seq, "hash": self.hash, "at": self.at}
        if self.epoch is not None:
            doc["epoch"] = self.epoch
        if self.counter is not None:
            doc["counter"] = self.counter
        return canonical_json(doc)

    def verify(self, identity_public_der: bytes) -> bool:
        """Whether the HSM with this identity key signed this head."""
        return verify_identity(identity_public_der, Domain.AUDIT_HEAD, self.body(),
                               self.signature)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seq": self.seq, "hash": self.hash, "at": self.at,
                               "signature": self.signature.hex()}
        if self.epoch is not None:
            out["epoch"] = self.epoch
        if self.counter is not None:
            out["counter"] = self.counter
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SignedHead:
        return cls(int(d["seq"]), str(d["hash"]), float(d["at"]), bytes.fromhex(d["signature"]),
                   _optional_int(d.get("epoch")), _optional_int(d.get("counter")))


def _optional_int(value: Any) -> int | None:
    """A whole number or None; a bool or a float is not a counter value."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"not a whole number: {value!r}")
    return value


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


class _Layout:
    """The canonical JSON of ``{**common, **item}`` for many items with the same keys:
    ``common``'s fragments encoded once, the keys sorted once (see
    :meth:`AuditLog.record_all`). Only for events :func:`bounded` leaves as they are and
    :func:`event_text` writes directly, so the text is theirs byte for byte."""

    def __init__(self, parts: list[tuple[str, str, str | None]], keys: frozenset[str]) -> None:
        #: per key, sorted: the key, its JSON and ``:``, and its whole fragment if common
        self._parts = parts
        self._keys = keys  #: the item keys

    @classmethod
    def of(cls, common: dict[str, Any], item: dict[str, Any]) -> _Layout | None:
        """The layout for items keyed like ``item``; None if the events are not plain."""
        if not _plain(common) or len(common) + len(item) > 16 or not all(
                type(k) is str and _short(k) and k not in common for k in item):
            return None
        parts: list[tuple[str, str, str | None]] = []
        for key in sorted([*common, *item]):
            head = encode_basestring(key) + ":"
            parts.append((key, head, head + _scalar(common[key]) if key in common else None))
        return cls(parts, frozenset(item))

    def text(self, item: dict[str, Any]) -> str | None:
        """The event's text, or None if ``item`` does not fit the layout (other keys, a
        value that is not a short string or a small integer)."""
        if item.keys() != self._keys:
            return None
        out = []
        for key, head, fixed in self._parts:
            if fixed is not None:
                out.append(fixed)
                continue
            value = item[key]
            kind = type(value)
            if kind is str:
                if not _short(value):
                    return None
            elif kind is not int or value.bit_length() >= MAX_INT_BITS:
                return None
            out.append(head + _scalar(value))
        return "{" + ",".join(out) + "}"


def _scalar(value: str | int) -> str:
    """A plain event value's JSON, as :func:`event_text` writes it."""
    return encode_basestring(value) if type(value) is str else int.__repr__(value)


def bounded(event: dict[str, Any]) -> dict[str, Any]:
    """``event`` with caller strings and collections bounded as the module docstring
    says, so that no caller can make an audit entry too large to page out or verify.

    Returns ``event`` itself when nothing needs bounding - the usual flat event of short
    strings and integers, checked in one pass of about a microsecond on the signing path.
    """
    if _plain(event):
        return event
    return _fit(_bound_dict(event, 1))


def _plain(event: dict[str, Any]) -> bool:
    """Nothing to bound: at most 16 keys (so at most ~49 KB of JSON), short valid strings
    and integers only."""
    if len(event) > 16:
        return False
    for key, value in event.items():
        kind = type(value)
        if type(key) is not str or not _short(key):
            return False
        if kind is str:
            if not _short(value):
                return False
        elif kind is not int or value.bit_length() >= MAX_INT_BITS:
            return False
    return True


def _short(text: str) -> bool:
    """Kept as it is: at most MAX_TEXT characters, and UTF-8-encodable (a lone surrogate
    would make the entry impossible to write, or to send as JSON)."""
    if len(text) > MAX_TEXT:
        return False
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _bound(value: Any, depth: int) -> Any:
    """One value at nesting ``depth`` (the event's own values are at depth 2)."""
    if not isinstance(value, list | tuple | dict):
        return _bound_scalar(value)
    if depth > MAX_DEPTH:
        return f"...[nested too deep: {_items(value)}]"
    return _bound_dict(value, depth) if isinstance(value, dict) else _bound_list(value, depth)


def _bound_scalar(value: Any) -> Any:
    if isinstance(value, str):
        return value if _short(value) else _text_marker(value)
    if isinstance(value, int) and not isinstance(value, bool):
        bits = value.bit_length()
        return value if bits < MAX_INT_BITS else f"...[integer of {bits} bits]"
    if isinstance(value, float) and not math.isfinite(value):
        return f"...[{value!r}]"
    return value  # bool, None, a finite float; anything else canonical_json refuses


def _bound_list(items: list[Any] | tuple[Any, ...], depth: int) -> list[Any]:
    if len(items) <= MAX_ITEMS:
        return [_bound(v, depth + 1) for v in items]
    return [*(_bound(v, depth + 1) for v in items[:MAX_ITEMS - 1]), f"...[{_items(items)}]"]


def _bound_dict(doc: dict[Any, Any], depth: int) -> dict[str, Any]:
    names = list(doc) if len(doc) <= MAX_ITEMS else sorted(doc, key=str)[:MAX_ITEMS - 1]
    out = {_key(name): _bound(doc[name], depth + 1) for name in names}
    if len(doc) > MAX_ITEMS:
        out["..."] = f"...[{_items(doc)}]"
    return out


def _key(name: Any) -> str:
    text = name if isinstance(name, str) else str(name)
    return text if _short(text) else _text_marker(text)


def _text_marker(text: str) -> str:
    """The first KEEP_TEXT characters (lone surrogates shown escaped), the length and the
    SHA-256 of the UTF-8 (surrogates passed through, so every string has a digest)."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    head = text[:KEEP_TEXT].encode("utf-8", "backslashreplace").decode()[:KEEP_TEXT]
    return f"{head}...[{len(text)} chars, sha256 {digest}]"


def _items(value: list[Any] | tuple[Any, ...] | dict[Any, Any]) -> str:
    return f"{len(value)} items, sha256 {_digest(value)}"


def _digest(value: Any) -> str:
    """SHA-256 of ``value``'s canonical JSON, as far as it has one."""
    try:
        data = canonical_text(value)
    except (TypeError, ValueError, RecursionError):
        return "unavailable"
    return hashlib.sha256(data.encode("utf-8", "surrogatepass")).hexdigest()


def _fit(event: dict[str, Any]) -> dict[str, Any]:
    """Replace the largest top-level values by markers until the event's canonical JSON
    is at most MAX_EVENT bytes; failing that, keep only ``op``, ``result`` and ``code``."""
    total = len(canonical_json(event))
    if total <= MAX_EVENT:
        return event
    sizes = {name: len(canonical_json(value)) for name, value in event.items()}
    out = dict(event)
    for name in sorted(sizes, key=sizes.__getitem__, reverse=True):
        out[name] = f"...[{sizes[name]} bytes of JSON, sha256 {_digest(event[name])}]"
        total -= sizes[name] - len(canonical_json(out[name]))
        if total <= MAX_EVENT:
            return out
    kept: dict[str, Any] = {name: out[name] for name in ("op", "result", "code") if name in out}
    return {**kept, "...": f"...[{_items(event)}]"}


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
        seq, digest, logged = self._write(at, event)
        return AuditEntry(seq, at, logged, prev, digest)

    def record(self, at: float, event: dict[str, Any]) -> None:
        """:meth:`append` for bulk callers that do not use the entry it returns."""
        self._write(at, event)

    def record_all(self, now: Callable[[], float], common: dict[str, Any],
                   each: Sequence[dict[str, Any]]) -> None:
        """:meth:`record` of ``{**common, **e}`` for each ``e`` of ``each``, at ``now()``:
        for bulk callers (a batch of signatures), byte for byte the same entries.

        The usual entry - ``common`` and ``e`` flat, with disjoint keys, short strings and
        integers - is laid out once (:class:`_Layout`: ``common``'s part bounded and
        encoded once, the keys sorted once) and each entry's text is then its own values'
        JSON dropped into that layout; any other goes through :meth:`record`."""
        layout = _Layout.of(common, each[0]) if each else None
        for e in each:
            text = None if layout is None else layout.text(e)
            if text is None:
                self._write(now(), {**common, **e})
            else:
                self._put(self._seq + 1, now(), text)

    def _write(self, at: float, event: dict[str, Any]) -> tuple[int, str, dict[str, Any]]:
        """Write (or buffer) the next entry, its event :func:`bounded`, and move the head
        to it. Bounding here, where every entry passes, covers every caller string."""
        seq = self._seq + 1
        event = bounded(event)
        return seq, self._put(seq, at, event_text(event)), event

    def _put(self, seq: int, at: float, text: str) -> str:
        """Write (or buffer) entry ``seq`` with ``text`` (its event's canonical JSON, already
        bounded), sign a checkpoint when one is due, and move the head; its hash."""
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
        return digest

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
        """Sign the head with the counter value of the store's last commit, so a witness
        that remembers it can tell a rewound HSM (a lower epoch or sequence) from a live
        one."""
        value, at = self._store.counter_value, float(at)  # a float, as from_json reads it
        unsigned = SignedHead(seq, digest, at, b"", value.epoch, value.count)
        signature = self._identity.sign(Domain.AUDIT_HEAD, unsigned.body())
        return SignedHead(seq, digest, at, signature, value.epoch, value.count)

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

    def verify_own(self) -> None:
        """At start: the whole stored chain and every signed checkpoint, or
        :class:`TamperDetected` (the HSM will not sign a fresh head over a broken log).

        Entries are hashed from their stored text, which is their canonical JSON; one
        that is not is re-encoded before it counts as edited.
        """
        prev = GENESIS
        hashes: dict[int, str] = {}
        rows = self._store.execute("SELECT seq, at, event, prev, hash FROM audit ORDER BY seq")
        for seq, (n, at, text, stored_prev, digest) in enumerate(rows, start=1):
            if n != seq or stored_prev != prev:
                raise TamperDetected(f"the HSM's audit log is broken at entry {seq}: "
                                     "removed, reordered or rechained")
            if entry_hash(prev, n, at, text.encode()) != digest and entry_hash(
                    prev, n, at, json.loads(text)) != digest:
                raise TamperDetected(f"the HSM's audit entry {n} does not match its hash")
            prev = hashes[n] = digest
        public = self._identity.public_der
        for head in self.checkpoints():
            if not head.verify(public):
                raise TamperDetected(f"the HSM's audit checkpoint {head.seq}: bad signature")
            if hashes.get(head.seq) != head.hash:
                raise TamperDetected(f"the HSM's audit checkpoint {head.seq} does not match "
                                     "the log: truncated or rewritten")


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
        if not h.verify(identity_public_der):
            problems.append(f"head {h.seq}: signature invalid")
        elif h.seq > len(entries):
            problems.append(f"head {h.seq}: log truncated (only {len(entries)} entries)")
        elif h.seq and by_seq.get(h.seq) != h.hash:
            problems.append(f"head {h.seq}: does not match entry {h.seq}")
    return AuditReport(not problems, len(entries), tuple(problems))
