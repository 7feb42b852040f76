"""The store's sealed state: what binds its whole content to the HSM's counter.

Sealed records (:mod:`hsm_emulator.store`) each authenticate themselves, but an older
version of one still authenticates; the plain ``spends`` table (the velocity ledger)
and the audit table authenticate nothing on their own. So each commit also writes one
``state`` row, MACed under a key derived from the store's data key, holding

* the counter value of this commit (:class:`~hsm_emulator.nvram.CounterValue`), which
  the HSM's monotonic counter (:mod:`hsm_emulator.nvram`) then moves to;
* a keyed digest of every sealed record: the XOR of HMAC(kind, id, nonce, ciphertext)
  over the records, updated per write (XOR of pseudo-random values the attacker cannot
  compute, so no set of older versions can be combined to match it);
* a hash chain over the ``spends`` rows in insertion order (the ledger only appends),
  and their count;
* the audit log's last sequence number and hash (the log chains itself beyond that).

At open the digests are recomputed from the file and compared: a rewound, edited, added
or removed record, spend or audit entry is :class:`TamperDetected`; a whole store copied
back is consistent in itself but behind the counter (:class:`StoreRolledBack`, checked
by the store).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any

from .errors import TamperDetected
from .nvram import CounterValue

_GENESIS = bytes(32)
#: A record's (nonce, ciphertext) as the file holds it.
Row = tuple[bytes, bytes]


@dataclass(frozen=True)
class SealedState:
    """What one ``state`` row says (after its MAC verified)."""

    value: CounterValue
    records: str
    spends: str
    spend_count: int
    audit_seq: int
    audit_hash: str


class StateSeal:
    """The running digests of one open store and the ``state`` row they make.

    A write passes the row it replaces (read from the file in the same transaction), so
    no per-record state is kept: memory stays constant however many records the store
    holds (it used to keep one digest per record, ~0.2-0.4 KiB each, for ever - the soak's
    memory tracing, tests/reliability/REPORT.md). :meth:`begin` remembers the digests
    and a rollback restores them; :meth:`commit` forgets them.
    """

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._records = 0
        self._spends = _GENESIS
        self._spend_count = 0
        self._before = (0, _GENESIS, 0)

    # -- recomputing from the file ------------------------------------------------------

    def load(self, db: sqlite3.Connection) -> None:
        """Recompute every digest from the store file (at open)."""
        for kind, ident, nonce, body in db.execute("SELECT kind, id, nonce, body FROM records"):
            self._records ^= self._record(kind, ident, bytes(nonce), bytes(body))
        self.spends(db.execute(
            "SELECT family, asset, amount, at, token, cum_all, cum_token FROM spends "
            "ORDER BY rowid"))

    # -- changes ------------------------------------------------------------------------

    def begin(self) -> None:
        self._before = (self._records, self._spends, self._spend_count)

    def put(self, kind: str, ident: str, nonce: bytes, body: bytes, old: Row | None) -> None:
        """A record written; ``old``: the (nonce, body) it replaces in the file, if any."""
        self.delete(kind, ident, old)
        self._records ^= self._record(kind, ident, nonce, body)

    def delete(self, kind: str, ident: str, old: Row | None) -> None:
        if old is not None:
            self._records ^= self._record(kind, ident, bytes(old[0]), bytes(old[1]))

    def spends(self, rows: Iterable[Sequence[Any]]) -> None:
        """Chain appended ledger rows (family, asset, amount, at, token and the running
        totals ``cum_all``, ``cum_token`` the velocity checks read: an edited total would
        otherwise lower a limit's count unseen)."""
        digest, count = self._spends, self._spend_count
        for row in rows:
            digest = hashlib.sha256(digest + _row_bytes(row)).digest()
            count += 1
        self._spends, self._spend_count = digest, count

    def rollback(self) -> None:
        self._records, self._spends, self._spend_count = self._before

    def commit(self) -> None:
        self._before = (self._records, self._spends, self._spend_count)

    def _record(self, kind: str, ident: str, nonce: bytes, body: bytes) -> int:
        mac = hmac.new(self._key, b"ska-state-record-v1\0" + kind.encode() + b"\0" +
                       ident.encode() + b"\0" + nonce + body, hashlib.sha256)
        return int.from_bytes(mac.digest(), "big")

    # -- the state row ------------------------------------------------------------------

    def row(self, value: CounterValue, audit_seq: int, audit_hash: str) -> bytes:
        """The ``state`` row for a commit at ``value`` with the audit head given."""
        doc = {"epoch": value.epoch, "count": value.count,
               "records": f"{self._records:064x}", "spends": self._spends.hex(),
               "spendCount": self._spend_count, "auditSeq": audit_seq,
               "auditHash": audit_hash}
        body = json.dumps(doc, sort_keys=True)
        return json.dumps({"state": doc, "mac": self._mac(body.encode()).hex()}).encode()

    def check(self, row: bytes, audit_seq: int, audit_hash: str) -> SealedState:
        """The state ``row`` says, once its MAC and every digest match the file."""
        try:
            outer = json.loads(row)
            doc, mac = outer["state"], bytes.fromhex(outer["mac"])
            body = json.dumps(doc, sort_keys=True).encode()
            state = SealedState(CounterValue(int(doc["epoch"]), int(doc["count"])),
                                str(doc["records"]), str(doc["spends"]),
                                int(doc["spendCount"]), int(doc["auditSeq"]),
                                str(doc["auditHash"]))
        except (ValueError, KeyError, TypeError):
            raise TamperDetected("the HSM store's state record is unreadable") from None
        if not hmac.compare_digest(mac, self._mac(body)):
            raise TamperDetected("the HSM store's state record failed authentication")
        if state.records != f"{self._records:064x}":
            raise TamperDetected("the HSM store's sealed records do not match its state "
                                 "record: a record was rewound, edited, added or removed")
        if (state.spends, state.spend_count) != (self._spends.hex(), self._spend_count):
            raise TamperDetected("the HSM store's velocity ledger (spends) does not match "
                                 "its state record: rows were removed, edited or added")
        if state.audit_seq != audit_seq:
            raise TamperDetected(f"the HSM store's audit log ends at entry {audit_seq}, its "
                                 f"state record at entry {state.audit_seq}: the log was "
                                 "truncated or extended")
        if state.audit_hash != audit_hash:
            raise TamperDetected(f"the HSM store's audit entry {audit_seq} is not the one its "
                                 "state record names: the log was rewritten")
        return state

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, b"ska-state-v1\0" + body, hashlib.sha256).digest()


def _row_bytes(row: Sequence[Any]) -> bytes:
    """A ledger row as the chain hashes it (floats by ``repr``, which round-trips): the
    ``json.dumps`` of its seven fields as strings, written out directly - a list of
    strings is each one's ASCII-escaped JSON joined by ``", "`` in brackets, what
    ``json.dumps`` gives with its defaults - without the encoder's set-up per row."""
    family, asset, amount, at, token, cum_all, cum_token = row
    return ("[" + ", ".join([_json_str(str(family)), _json_str(str(asset)),
                             _json_str(str(amount)), _json_str(repr(float(at))),
                             _json_str(str(token)), _json_str(str(cum_all)),
                             _json_str(str(cum_token))]) + "]").encode()
