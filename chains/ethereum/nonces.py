"""Nonce allocation per (chain id, address): never reused, never skipped.

An account's transactions execute in nonce order, so a skipped nonce blocks every later
transaction and a reused one replaces (or loses to) another transfer. The allocator is a
small SQL state machine per nonce slot, every step one ``BEGIN IMMEDIATE`` transaction,
so concurrent workers - threads or processes sharing the database - and restarts agree:

``reserve`` -> ``reserved`` -> ``commit(tx_hash)`` -> ``committed``
                           \\-> ``release``         -> ``released`` (the next reserve
                                                      takes the lowest released slot)

Rules:

* A fresh ``reserve`` takes the lowest *released* slot, else the next new nonce.
  Released slots were never broadcast, so refilling them first is what keeps the
  sequence gap-free.
* A *committed* nonce belongs to its transfer for good. If its transaction is dropped
  or stuck, the slot is reused only by :meth:`NonceStore.reserve_replacement` - a
  replacement of that same transfer (fee bump, or a zero-value cancel) - never by a new
  transfer; ``commit`` then records the replacement's hash next to the old ones.
* :meth:`NonceStore.reconcile` runs at start with the node's ``pending`` transaction
  count: nonces below it are used on chain (released or stale reserved slots there are
  closed as ``external``), the next nonce never goes below it, and stale reservations at
  or above it - a worker died between reserving and broadcasting - are released.
  Committed slots the node does not know are reported for rebroadcast, not reused.

:class:`NonceStore` is the interface; :class:`SqliteNonceStore` keeps it in a SQLite
file here, and the same statements run on the broker's database later.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from chains.errors import ChainError

RESERVED, COMMITTED, RELEASED, EXTERNAL = "reserved", "committed", "released", "external"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS eth_nonce_accounts (
    chain_id INTEGER NOT NULL, address TEXT NOT NULL, next_nonce INTEGER NOT NULL,
    PRIMARY KEY (chain_id, address));
CREATE TABLE IF NOT EXISTS eth_nonce_slots (
    chain_id INTEGER NOT NULL, address TEXT NOT NULL, nonce INTEGER NOT NULL,
    state TEXT NOT NULL, owner TEXT NOT NULL DEFAULT '', tx_hashes TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL, PRIMARY KEY (chain_id, address, nonce));
"""


class NonceError(ChainError):
    """A nonce operation that would break the sequence (wrong state, unknown slot)."""

    code = "chain.nonce_error"


@dataclass(frozen=True)
class Reservation:
    chain_id: int
    address: str  #: lower-case 0x hex
    nonce: int
    replacement: bool = False


@dataclass(frozen=True)
class ReconcileReport:
    next_nonce: int
    released_stale: tuple[int, ...]  #: reservations nobody broadcast, freed
    closed_external: tuple[int, ...]  #: slots the chain shows used by someone else
    unknown_to_node: tuple[int, ...]  #: committed, but not in the node's pending count


class NonceStore(Protocol):
    def reconcile(self, chain_id: int, address: str, pending: int) -> ReconcileReport: ...

    def reserve(self, chain_id: int, address: str, owner: str = "") -> Reservation: ...

    def reserve_replacement(self, chain_id: int, address: str, nonce: int) -> Reservation: ...

    def commit(self, reservation: Reservation, tx_hash: str) -> None: ...

    def release(self, reservation: Reservation) -> None: ...

    def slot(self, chain_id: int, address: str, nonce: int) -> tuple[str, tuple[str, ...]]: ...


class SqliteNonceStore:
    """:class:`NonceStore` in SQLite: one connection per thread, IMMEDIATE transactions."""

    def __init__(self, path: str | Path, busy_timeout: float = 30.0) -> None:
        self.path = str(path)
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._conn().executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- operations -------------------------------------------------------------------

    def reconcile(self, chain_id: int, address: str, pending: int) -> ReconcileReport:
        address = _norm(address)
        with self._tx() as db:
            nxt = max(self._next(db, chain_id, address), pending)
            db.execute("UPDATE eth_nonce_accounts SET next_nonce=? WHERE chain_id=? AND "
                       "address=?", (nxt, chain_id, address))
            external = self._slots(db, chain_id, address, (RELEASED, RESERVED), below=pending)
            stale = self._slots(db, chain_id, address, (RESERVED,), at_least=pending)
            unknown = self._slots(db, chain_id, address, (COMMITTED,), at_least=pending)
            self._set(db, chain_id, address, external, EXTERNAL)
            self._set(db, chain_id, address, stale, RELEASED)
        return ReconcileReport(nxt, stale, external, unknown)

    def reserve(self, chain_id: int, address: str, owner: str = "") -> Reservation:
        address = _norm(address)
        with self._tx() as db:
            row = db.execute("SELECT MIN(nonce) FROM eth_nonce_slots WHERE chain_id=? AND "
                             "address=? AND state=?", (chain_id, address, RELEASED)).fetchone()
            if row[0] is not None:
                nonce = int(row[0])
            else:
                nonce = self._next(db, chain_id, address)
                db.execute("UPDATE eth_nonce_accounts SET next_nonce=? WHERE chain_id=? AND "
                           "address=?", (nonce + 1, chain_id, address))
            db.execute("INSERT OR REPLACE INTO eth_nonce_slots (chain_id, address, nonce, "
                       "state, owner, tx_hashes, updated_at) VALUES (?, ?, ?, ?, ?, '', ?)",
                       (chain_id, address, nonce, RESERVED, owner, time.time()))
        return Reservation(chain_id, address, nonce)

    def reserve_replacement(self, chain_id: int, address: str, nonce: int) -> Reservation:
        """The slot of a committed transfer, for its replacement only (see module doc)."""
        address = _norm(address)
        with self._tx() as db:
            self._state(db, chain_id, address, nonce, (COMMITTED,))
        return Reservation(chain_id, address, nonce, replacement=True)

    def commit(self, reservation: Reservation, tx_hash: str) -> None:
        """Record the broadcast ``tx_hash`` in the slot. Idempotent for the same hash."""
        r = reservation
        allowed = (COMMITTED,) if r.replacement else (RESERVED, COMMITTED)
        with self._tx() as db:
            hashes = self._state(db, r.chain_id, r.address, r.nonce, allowed)
            if tx_hash in hashes.split(","):
                return
            if not r.replacement and hashes:
                raise NonceError(f"nonce {r.nonce} of {r.address} is committed to another "
                                 "transaction; only a replacement may reuse it")
            joined = f"{hashes},{tx_hash}" if hashes else tx_hash
            db.execute("UPDATE eth_nonce_slots SET state=?, tx_hashes=?, updated_at=? WHERE "
                       "chain_id=? AND address=? AND nonce=?",
                       (COMMITTED, joined, time.time(), r.chain_id, r.address, r.nonce))

    def release(self, reservation: Reservation) -> None:
        """Give back a reserved nonce that was never broadcast; a replacement is a no-op."""
        r = reservation
        if r.replacement:
            return
        with self._tx() as db:
            self._state(db, r.chain_id, r.address, r.nonce, (RESERVED,))
            self._set(db, r.chain_id, r.address, (r.nonce,), RELEASED)

    def slot(self, chain_id: int, address: str, nonce: int) -> tuple[str, tuple[str, ...]]:
        """``(state, tx hashes)`` of one slot, for operators and tests."""
        row = self._conn().execute(
            "SELECT state, tx_hashes FROM eth_nonce_slots WHERE chain_id=? AND address=? AND "
            "nonce=?", (chain_id, _norm(address), nonce)).fetchone()
        if row is None:
            raise NonceError(f"no nonce slot {nonce} for {address}")
        return row[0], tuple(h for h in row[1].split(",") if h)

    # -- helpers ----------------------------------------------------------------------

    @staticmethod
    def _next(db: sqlite3.Connection, chain_id: int, address: str) -> int:
        row = db.execute("SELECT next_nonce FROM eth_nonce_accounts WHERE chain_id=? AND "
                         "address=?", (chain_id, address)).fetchone()
        if row is None:
            db.execute("INSERT INTO eth_nonce_accounts VALUES (?, ?, 0)", (chain_id, address))
            return 0
        return int(row[0])

    @staticmethod
    def _slots(db: sqlite3.Connection, chain_id: int, address: str, states: tuple[str, ...],
               below: int | None = None, at_least: int | None = None) -> tuple[int, ...]:
        marks = ",".join("?" * len(states))
        sql = (f"SELECT nonce FROM eth_nonce_slots WHERE chain_id=? AND address=? AND "  # noqa: S608 - placeholders only
               f"state IN ({marks})")
        args: list[object] = [chain_id, address, *states]
        if below is not None:
            sql += " AND nonce < ?"
            args.append(below)
        if at_least is not None:
            sql += " AND nonce >= ?"
            args.append(at_least)
        return tuple(int(r[0]) for r in db.execute(sql + " ORDER BY nonce", args))

    @staticmethod
    def _set(db: sqlite3.Connection, chain_id: int, address: str, nonces: tuple[int, ...],
             state: str) -> None:
        db.executemany("UPDATE eth_nonce_slots SET state=?, updated_at=? WHERE chain_id=? AND "
                       "address=? AND nonce=?",
                       [(state, time.time(), chain_id, address, n) for n in nonces])

    @staticmethod
    def _state(db: sqlite3.Connection, chain_id: int, address: str, nonce: int,
               allowed: tuple[str, ...]) -> str:
        row = db.execute("SELECT state, tx_hashes FROM eth_nonce_slots WHERE chain_id=? AND "
                         "address=? AND nonce=?", (chain_id, address, nonce)).fetchone()
        if row is None or row[0] not in allowed:
            state = "absent" if row is None else row[0]
            raise NonceError(f"nonce {nonce} of {address} is {state}, expected {allowed}")
        return str(row[1])


def _norm(address: str) -> str:
    if not (isinstance(address, str) and len(address) == 42 and address[:2] == "0x"):
        raise NonceError(f"not an address: {address!r}")
    return address.lower()
