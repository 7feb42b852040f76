"""The HSM's own store: one SQLite file, key records sealed with AES-256-GCM.

Layout of protection:

* a random 256-bit data key (DEK) seals every record; each record's additional data is
  its kind and id, so a record copied onto another id, edited or truncated fails to open
  (:class:`TamperDetected`) and is never used;
* the DEK is stored wrapped under a key-encryption key (KEK) derived from a passphrase
  with scrypt, or read from a sealed key file; the wrong one fails with
  :class:`StoreLocked` before anything else is read.

The store is opened with an exclusive lock: an HSM is one device, and two processes
sharing one store would defeat replay protection.

Anti-rollback: every commit that changes anything also writes the store's sealed
``state`` row (:mod:`hsm_emulator.rollback`: the next counter value and digests of every
record, the velocity ledger and the audit head), commits durably (``synchronous=FULL``),
and only then advances the HSM's monotonic counter (:mod:`hsm_emulator.nvram`). A power
cut between the two leaves the store exactly one step ahead of the counter, which the
next open finishes; a store behind the counter is refused (:class:`StoreRolledBack`).
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .errors import (
    CounterFailure,
    HsmError,
    InvalidInput,
    StoreLocked,
    StoreRolledBack,
    TamperDetected,
)
from .nvram import CounterValue, MonotonicCounter, SealedFileCounter
from .rollback import Row, StateSeal

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL, id TEXT NOT NULL, nonce BLOB NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (kind, id));
CREATE TABLE IF NOT EXISTS spends (
    family TEXT NOT NULL, asset TEXT NOT NULL, amount TEXT NOT NULL, at REAL NOT NULL,
    token TEXT NOT NULL DEFAULT '', cum_all TEXT NOT NULL DEFAULT '0',
    cum_token TEXT NOT NULL DEFAULT '0');
CREATE INDEX IF NOT EXISTS spends_by_time ON spends (family, asset, at);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY, at REAL NOT NULL, event TEXT NOT NULL,
    prev TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit_heads (seq INTEGER PRIMARY KEY, body TEXT NOT NULL);
"""

#: The plain tables :meth:`Store.insert_rows` writes to, and its statement for each.
_PLAIN_INSERTS = {"audit": "INSERT INTO audit VALUES ",
                  "spends": "INSERT INTO spends (family, asset, amount, at, token, cum_all, "
                            "cum_token) VALUES "}
#: Rows per multi-row INSERT (SQLite's variable limit may lower it).
MAX_ROWS_PER_INSERT = 500

#: scrypt cost (RFC 7914). 2**15 takes ~0.1 s here: slow for guessing, fine for unlocking.
SCRYPT_N = 2**15


@dataclass(frozen=True)
class Passphrase:
    value: str
    scrypt_n: int = SCRYPT_N

    def __repr__(self) -> str:
        return "Passphrase(***)"


@dataclass(frozen=True)
class KeyFile:
    """A sealed 32-byte key file; created (mode 0600) on first use if ``create``."""

    path: Path
    create: bool = True


Unlock = Passphrase | KeyFile
#: Where the HSM's counter is kept: a path for a :class:`SealedFileCounter`, or any
#: :class:`MonotonicCounter` (a TPM NV counter, a real HSM's); None: ``<store>.nvram``.
Nvram = str | Path | MonotonicCounter | None


def default_nvram(path: str | Path) -> Path:
    """Where the counter file of the store at ``path`` is kept unless told otherwise."""
    return Path(f"{path}.nvram")


class Store:
    def __init__(self, path: str | Path, unlock: Unlock, nvram: Nvram = None) -> None:
        self.path = str(path)
        self._lock = threading.RLock()
        self._seal: StateSeal | None = None  # set once unlocked: commits before are plain
        self._value = CounterValue(0, 0)
        self._unsynced: CounterValue | None = None  # committed, counter not yet advanced
        self._next_epoch: int | None = None  # set by start_epoch for the next commit
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before the counter moves past it (see above)
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
            self._db.executescript(SCHEMA)
            self._add_spend_tokens()
            self._add_spend_totals()
            self._max_variables = self._db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
            dek = self._unlock(unlock)
            self._aead = AESGCM(dek)
            self._counter = _counter(nvram, path, dek)
            self._bind(StateSeal(_subkey(dek, b"ska-state-mac-v1")))
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreLocked(f"cannot open HSM store {self.path}: {exc}") from None
        except HsmError:
            self._db.close()
            raise

    # -- anti-rollback ----------------------------------------------------------------

    def _bind(self, seal: StateSeal) -> None:
        """Check the store against its sealed state and the counter (or, for a new store
        or one from before the counter, bind it now)."""
        seal.load(self._db)
        row, held = self._meta("state"), self._counter.read()
        if row is None:
            if held is not None:
                raise StoreRolledBack(
                    f"the HSM counter is at {held.count} but this store has no state record: "
                    "a store from before the counter, or one whose state was removed")
            self._seal = seal
            with self.transaction(force=True):  # a new or pre-counter store: bind it
                pass
            return
        seq, digest = self._audit_head()
        state = seal.check(row, seq, digest)
        if held is None:
            raise StoreRolledBack(
                f"this store is at commit {state.value.count} but the HSM counter "
                f"({_where(self._counter)}) holds nothing: refused, as it would let any "
                "older copy of the store be used")
        if state.value.count < held.count or state.value.epoch < held.epoch or (
                state.value.epoch > held.epoch and state.value.count != held.count + 1):
            raise StoreRolledBack(
                f"the HSM store is at commit {state.value.count} (epoch "
                f"{state.value.epoch}) but the HSM counter is at {held.count} (epoch "
                f"{held.epoch}): an older copy of the store; refused")
        if state.value.count > held.count + 1:
            raise StoreRolledBack(
                f"the HSM store is at commit {state.value.count}, more than one ahead of "
                f"the HSM counter ({held.count}): the counter was rewound or replaced")
        if state.value != held:  # one ahead (maybe into a new epoch: a restore): the
            # counter's advance was cut; finish it
            self._counter.advance(state.value)
        self._seal, self._value = seal, state.value

    def _audit_head(self) -> tuple[int, str]:
        row = self._db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1"
                               ).fetchone()
        return (int(row[0]), str(row[1])) if row else (0, "")

    def _sync_counter(self) -> None:
        """Advance the counter to the last commit if an earlier advance failed."""
        if self._unsynced is None:
            return
        try:
            self._counter.advance(self._unsynced)
        except (OSError, HsmError) as exc:
            raise CounterFailure(f"the HSM counter could not be advanced: {exc}") from None
        self._unsynced = None

    def start_epoch(self, epoch: int) -> None:
        """Make the next commit start ``epoch`` (a restore from backup does): its value is
        ``(epoch, count + 1)``, so the count stays monotonic and every value from before
        compares as earlier. The epoch only moves forward."""
        if epoch <= self._value.epoch:
            raise InvalidInput(f"epoch {epoch} is not after the current {self._value.epoch}")
        self._next_epoch = epoch

    @property
    def counter_value(self) -> CounterValue:
        """The counter value of the last commit (the ``state`` row's)."""
        return self._value

    # -- master key -------------------------------------------------------------------

    def _unlock(self, unlock: Unlock) -> bytes:
        kdf_row = self._meta("kdf")
        if kdf_row is None:
            return self._initialise(unlock)
        params = json.loads(kdf_row)
        kek = _kek(unlock, params)
        wrapped = self._meta("dek")
        if wrapped is None:
            raise TamperDetected("HSM store has a KDF record but no wrapped data key")
        try:
            return AESGCM(kek).decrypt(wrapped[:12], wrapped[12:], b"dek")
        except InvalidTag:
            raise StoreLocked("wrong passphrase or key file for this HSM store") from None

    def _initialise(self, unlock: Unlock) -> bytes:
        params: dict[str, Any]
        if isinstance(unlock, Passphrase):
            if len(unlock.value) < 8:
                raise InvalidInput("passphrase: at least 8 characters")
            params = {"mode": "scrypt", "salt": secrets.token_hex(16), "n": unlock.scrypt_n,
                      "r": 8, "p": 1}
        else:
            params = {"mode": "keyfile"}
        kek = _kek(unlock, params)
        dek = secrets.token_bytes(32)
        nonce = secrets.token_bytes(12)
        with self.transaction():
            self._set_meta("kdf", json.dumps(params).encode())
            self._set_meta("dek", nonce + AESGCM(kek).encrypt(nonce, dek, b"dek"))
        return dek

    def _meta(self, name: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
        return None if row is None else bytes(row[0])

    def _set_meta(self, name: str, value: bytes) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))

    # -- transactions -----------------------------------------------------------------

    @contextmanager
    def transaction(self, *, force: bool = False) -> Iterator[None]:
        """All-or-nothing: a state change and its audit entry commit together. A commit
        that changed anything (or ``force``) writes the next ``state`` row with it and
        then advances the counter (the module docstring says why in that order)."""
        with self._lock:
            if self._db.in_transaction:  # nested: the outer transaction decides
                yield
                return
            self._sync_counter()
            seal, before = self._seal, self._db.total_changes
            self._db.execute("BEGIN IMMEDIATE")
            if seal is not None:
                seal.begin()
            try:
                yield
                value = None
                if seal is not None and (force or self._db.total_changes != before):
                    value = self._value.next() if self._next_epoch is None else (
                        CounterValue(self._next_epoch, self._value.count + 1))
                    self._set_meta("state", seal.row(value, *self._audit_head()))
            except BaseException:
                self._next_epoch = None
                self._db.execute("ROLLBACK")
                if seal is not None:
                    seal.rollback()
                raise
            self._db.execute("COMMIT")
            if seal is not None:
                seal.commit()
            if value is not None:
                self._next_epoch = None
                self._value = self._unsynced = value
                self._advance_counter()

    def _advance_counter(self) -> None:
        """Between the commit and the counter: a failure here is retried before the next
        transaction (:meth:`_sync_counter`), never reported as the committed call's."""
        with suppress(CounterFailure):
            self._sync_counter()

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    # -- sealed records ---------------------------------------------------------------

    def put(self, kind: str, ident: str, obj: dict[str, Any]) -> None:
        nonce = secrets.token_bytes(12)
        body = self._aead.encrypt(nonce, json.dumps(obj, sort_keys=True).encode(),
                                  _aad(kind, ident))
        with self.transaction():
            old = self._row(kind, ident)
            self._db.execute("INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?)",
                             (kind, ident, nonce, body))
            if self._seal is not None:
                self._seal.put(kind, ident, nonce, body, old)

    def _row(self, kind: str, ident: str) -> Row | None:
        """A record's (nonce, ciphertext) as the file holds it."""
        with self._lock:
            row = self._db.execute(
                "SELECT nonce, body FROM records WHERE kind=? AND id=?", (kind, ident)
            ).fetchone()
        return None if row is None else (bytes(row[0]), bytes(row[1]))

    def get(self, kind: str, ident: str) -> dict[str, Any] | None:
        row = self._row(kind, ident)
        if row is None:
            return None
        try:
            plain = self._aead.decrypt(bytes(row[0]), bytes(row[1]), _aad(kind, ident))
        except (InvalidTag, ValueError):
            raise TamperDetected(f"{kind} record {ident!r} failed authentication") from None
        result: dict[str, Any] = json.loads(plain)
        return result

    def delete(self, kind: str, ident: str) -> None:
        with self.transaction():
            old = self._row(kind, ident)
            self._db.execute("DELETE FROM records WHERE kind=? AND id=?", (kind, ident))
            if self._seal is not None:
                self._seal.delete(kind, ident, old)

    def ids(self, kind: str) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT id FROM records WHERE kind=? ORDER BY id", (kind,))
            return [r[0] for r in rows.fetchall()]

    # -- plain tables (velocity ledger, audit) ----------------------------------------

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        with self._lock:
            self._db.executemany(sql, rows)

    def _add_spend_tokens(self) -> None:
        """Stores made before velocity limits could name the tokens they count had no
        ``token`` column: add it (their rows count for limits without ``releasedBy``)."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(spends)")}
        if "token" not in columns:
            self._db.execute("ALTER TABLE spends ADD COLUMN token TEXT NOT NULL DEFAULT ''")

    def _add_spend_totals(self) -> None:
        """Stores made before the ledger kept running totals (see :mod:`.ledger`): add
        the columns, fill them in time order and index rows by token."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(spends)")}
        if "cum_all" not in columns or "cum_token" not in columns:
            with self.transaction():
                for name in ("cum_all", "cum_token"):
                    if name not in columns:
                        self._db.execute(
                            f"ALTER TABLE spends ADD COLUMN {name} TEXT NOT NULL DEFAULT '0'")
                totals: dict[tuple[str, ...], int] = {}
                rows = self._db.execute("SELECT rowid, family, asset, amount, token FROM spends "
                                        "ORDER BY at, rowid").fetchall()
                for rowid, family, asset, amount, token in rows:
                    for group in ((family, asset), (family, asset, token)):
                        totals[group] = totals.get(group, 0) + int(amount)
                    self._db.execute("UPDATE spends SET cum_all=?, cum_token=? WHERE rowid=?",
                                     (str(totals[(family, asset)]),
                                      str(totals[(family, asset, token)]), rowid))
        self._db.execute("CREATE INDEX IF NOT EXISTS spends_by_token "
                         "ON spends (family, asset, token, at)")

    def insert_rows(self, table: str, rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert ``rows`` (all of the table's width) into a plain table, in the caller's
        transaction, as one multi-row ``INSERT ... VALUES (..), (..)`` per chunk.

        SQLite does the same work per row either way, but binding and stepping one
        statement instead of one per row roughly halves the cost of a batch's audit
        and ledger rows compared with ``executemany``.
        """
        if not rows:
            return
        width = len(rows[0])
        per = max(1, min(MAX_ROWS_PER_INSERT, self._max_variables // width))
        one = "(" + ",".join("?" * width) + ")"
        with self.transaction():
            for start in range(0, len(rows), per):
                chunk = rows[start:start + per]
                self._db.execute(_PLAIN_INSERTS[table] + ",".join([one] * len(chunk)),
                                 [value for row in chunk for value in row])
            if table == "spends" and self._seal is not None:
                self._seal.spends(rows)  # the ledger is bound: see hsm_emulator.rollback

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def unsafe_connection(self) -> sqlite3.Connection:
        """The raw connection, for tamper tests that play an attacker with disk access."""
        return self._db


def _subkey(dek: bytes, purpose: bytes) -> bytes:
    """A key for one purpose (the state row's MAC, the counter file's), from the DEK."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(dek)


def _counter(nvram: Nvram, path: str | Path, dek: bytes) -> MonotonicCounter:
    if nvram is None or isinstance(nvram, str | Path):
        where = default_nvram(path) if nvram is None else Path(nvram)
        return SealedFileCounter(where, _subkey(dek, b"ska-nvram-v1"))
    return nvram


def _where(counter: MonotonicCounter) -> str:
    path = getattr(counter, "path", None)
    return str(path) if path is not None else type(counter).__name__


def _aad(kind: str, ident: str) -> bytes:
    return f"ska-record-v1\0{kind}\0{ident}".encode()


def _kek(unlock: Unlock, params: dict[str, Any]) -> bytes:
    if params["mode"] == "scrypt":
        if not isinstance(unlock, Passphrase):
            raise StoreLocked("this HSM store is protected by a passphrase, not a key file")
        kdf = Scrypt(salt=bytes.fromhex(params["salt"]), length=32, n=params["n"],
                     r=params["r"], p=params["p"])
        return kdf.derive(unlock.value.encode())
    if not isinstance(unlock, KeyFile):
        raise StoreLocked("this HSM store is protected by a key file, not a passphrase")
    return _read_key_file(unlock)


def _read_key_file(kf: KeyFile) -> bytes:
    path = Path(kf.path)
    if not path.exists():
        if not kf.create:
            raise StoreLocked(f"key file {path} does not exist")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(32))
    data = path.read_bytes()
    if len(data) != 32:
        raise StoreLocked(f"key file {path} must hold exactly 32 bytes")
    return data
