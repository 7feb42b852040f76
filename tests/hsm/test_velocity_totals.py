"""The ledger's running totals give what summing every row of the window gives.

:mod:`hsm_emulator.ledger` answers ``spent(asset, since, tokens)`` from two prefix sums
per (asset, token) instead of reading the window. For random ledgers (several families,
assets and tokens, amounts beyond 64 bits, times that repeat, some rows inside a batch),
random windows and random ``releasedBy`` filters, the answer equals the plain sum over
the recorded rows; a clock that steps back only makes the answer larger; and a store
written before the totals existed is filled in on opening and answers the same.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from hsm_emulator.ledger import VelocityLedger
from hsm_emulator.model import Intent, IntentKind, Transfer
from hsm_emulator.store import Passphrase, Store, default_nvram

FAMILIES = ("f1", "f2")
ASSETS = ("A", "B")
TOKENS = ("auto", "small", "")
T0 = 1_800_000_000.0


class _Clock:
    def __init__(self) -> None:
        self.t = T0

    def now(self) -> float:
        return self.t


_spend = st.tuples(st.sampled_from(FAMILIES), st.sampled_from(ASSETS),
                   st.integers(0, 2**80), st.sampled_from(TOKENS),
                   st.sampled_from([0.0, 0.0, 0.5, 1.0, 7.0, 30.0]), st.booleans())
_query = st.tuples(st.sampled_from(FAMILIES), st.sampled_from(ASSETS),
                   st.floats(-5.0, 200.0, allow_nan=False),
                   st.none() | st.frozensets(st.sampled_from((*TOKENS, "other")), max_size=3))


def _store(tmp: str) -> Store:
    return Store(Path(tmp) / "hsm.sqlite", Passphrase("ledger-test", 2**10))


def _intent(asset: str, amount: int) -> Intent:
    return Intent("test", "test", IntentKind.TRANSFER, (Transfer(asset, amount, "dest"),))


def _plain(rows: list[tuple[str, str, int, float, str]], family: str, asset: str,
           since: float, tokens: frozenset[str] | None) -> int:
    return sum(n for f, a, n, at, t in rows if f == family and a == asset and at >= since and
               (tokens is None or t in tokens))


def _replay(ledger: VelocityLedger, store: Store, clock: _Clock,
            spends: list[tuple[Any, ...]]) -> list[tuple[str, str, int, float, str]]:
    """Record ``spends``; consecutive ones flagged ``batched`` go in one buffered batch."""
    rows: list[tuple[str, str, int, float, str]] = []
    i = 0
    while i < len(spends):
        j = i + 1
        if spends[i][5]:
            while j < len(spends) and spends[j][5]:
                j += 1
        with store.transaction(), (ledger.buffered() if spends[i][5] else _nothing()):
            for family, asset, amount, token, step, _ in spends[i:j]:
                clock.t += step
                ledger.record(family, _intent(asset, amount), token)
                rows.append((family, asset, amount, clock.t, token))
        i = j
    return rows


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@settings(max_examples=60, deadline=None)
@given(st.lists(_spend, max_size=40), st.lists(_query, min_size=1, max_size=10))
def test_totals_equal_the_full_sums(spends: list[tuple[Any, ...]],
                                    queries: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store, clock = _store(tmp), _Clock()
        try:
            ledger = VelocityLedger(store, clock)  # type: ignore[arg-type]
            rows = _replay(ledger, store, clock, spends)
            for family, asset, offset, tokens in queries:
                since = T0 + offset
                got = ledger.spent(family)(asset, since, tokens)
                assert got == _plain(rows, family, asset, since, tokens), _evidence(
                    store, rows, family, asset, since, tokens)
        finally:
            store.close()


def _evidence(store: Store, rows: list[tuple[str, str, int, float, str]], family: str,
              asset: str, since: float, tokens: frozenset[str] | None) -> str:
    """What a mismatch needs to be understood: the query, the rows as recorded and as
    stored (this test once failed in a full run and passed on replay, unexplained)."""
    stored = store.execute("SELECT rowid, * FROM spends ORDER BY rowid")
    return (f"query {family}/{asset} since {since!r} tokens {tokens}; "
            f"recorded {rows}; stored {stored}")


@settings(max_examples=30, deadline=None)
@given(st.lists(_spend, min_size=1, max_size=30), st.lists(_query, min_size=1, max_size=6))
def test_inside_a_batch_pending_rows_count(spends: list[tuple[Any, ...]],
                                           queries: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store, clock = _store(tmp), _Clock()
        ledger = VelocityLedger(store, clock)  # type: ignore[arg-type]
        half = len(spends) // 2
        rows = _replay(ledger, store, clock, [(*s[:5], False) for s in spends[:half]])
        with store.transaction(), ledger.buffered():
            rows += _replay(ledger, store, clock, [(*s[:5], False) for s in spends[half:]])
            for family, asset, offset, tokens in queries:
                since = T0 + offset
                assert ledger.spent(family)(asset, since, tokens) == _plain(
                    rows, family, asset, since, tokens)
        store.close()


def test_a_clock_that_steps_back_only_counts_more() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store, clock = _store(tmp), _Clock()
        ledger = VelocityLedger(store, clock)  # type: ignore[arg-type]
        clock.t = T0 + 100
        ledger.record("f", _intent("A", 5), "auto")
        clock.t = T0  # stepped back: the row keeps the previous time
        ledger.record("f", _intent("A", 7), "auto")
        spent = ledger.spent("f")
        assert spent("A", T0 + 50) == 12  # the plain sum would say 5
        assert spent("A", T0 + 50, frozenset({"auto"})) == 12
        assert spent("A", T0 + 101) == 0
        store.close()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(FAMILIES), st.sampled_from(ASSETS),
                          st.integers(0, 2**70), st.floats(0.0, 100.0, allow_nan=False),
                          st.sampled_from(TOKENS)), max_size=30),
       st.lists(_query, min_size=1, max_size=6))
def test_a_store_from_before_the_totals_is_filled_in(
        rows: list[tuple[str, str, int, float, str]], queries: list[tuple[Any, ...]]) -> None:
    """Old rows, in any time order, without the total columns: opening adds and fills them.
    (A store from before the totals is also from before the anti-rollback state: no state
    row, no counter file; it is bound at its first open.)"""
    with tempfile.TemporaryDirectory() as tmp:
        _store(tmp).close()
        default_nvram(Path(tmp) / "hsm.sqlite").unlink()
        db = sqlite3.connect(Path(tmp) / "hsm.sqlite")
        db.execute("DELETE FROM meta WHERE name='state'")
        db.execute("DROP INDEX spends_by_token")
        db.execute("ALTER TABLE spends DROP COLUMN cum_all")
        db.execute("ALTER TABLE spends DROP COLUMN cum_token")
        db.executemany("INSERT INTO spends VALUES (?, ?, ?, ?, ?)",
                       [(f, a, str(n), T0 + at, t) for f, a, n, at, t in rows])
        db.commit()
        db.close()
        store, clock = _store(tmp), _Clock()
        ledger = VelocityLedger(store, clock)  # type: ignore[arg-type]
        stored = [(f, a, n, T0 + at, t) for f, a, n, at, t in rows]
        for family, asset, offset, tokens in queries:
            since = T0 + offset
            assert ledger.spent(family)(asset, since, tokens) == _plain(
                stored, family, asset, since, tokens)
        store.close()
