"""The nonce allocator: racing threads, releases, replacements and restarts."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from chains.ethereum.nonces import (
    COMMITTED,
    EXTERNAL,
    RELEASED,
    NonceError,
    Reservation,
    SqliteNonceStore,
)

A = "0x" + "ab" * 20
B = "0x" + "cd" * 20


def test_threads_racing_never_reuse_or_skip(tmp_path: Path) -> None:
    store = SqliteNonceStore(tmp_path / "n.sqlite")
    committed: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(25):
                r = store.reserve(1, A)
                if rng.random() < 0.3:  # signing refused: the nonce goes back
                    store.release(r)
                    continue
                store.commit(r, f"0x{seed:02x}{r.nonce:06x}")
                with lock:
                    committed.append(r.nonce)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(committed) == len(set(committed)), "a nonce was used twice"
    # released slots are refilled first, so the committed ones form 0..n-1 ...
    leftover = [n for n in range(max(committed) + 1) if n not in set(committed)]
    assert all(store.slot(1, A, n)[0] == RELEASED for n in leftover)
    # ... and the next reservations fill exactly those gaps, lowest first
    assert [store.reserve(1, A).nonce for _ in leftover] == leftover


def test_accounts_and_chains_are_independent(tmp_path: Path) -> None:
    store = SqliteNonceStore(tmp_path / "n.sqlite")
    assert [store.reserve(1, A).nonce, store.reserve(1, B).nonce,
            store.reserve(5, A).nonce, store.reserve(1, A.upper().replace("0X", "0x")).nonce
            ] == [0, 0, 0, 1]


def test_restart_and_reconcile_with_the_node(tmp_path: Path) -> None:
    path = tmp_path / "n.sqlite"
    store = SqliteNonceStore(path)
    r0, r1, r2, _r3 = (store.reserve(1, A) for _ in range(4))
    store.commit(r0, "0xaa")
    store.commit(r1, "0xbb")
    store.release(r2)  # never broadcast
    # r3: the worker died between reserving and broadcasting
    store.close()

    store = SqliteNonceStore(path)  # restart
    report = store.reconcile(1, A, pending=2)  # the node saw 0 and 1
    assert report.next_nonce == 4
    assert report.released_stale == (3,) and report.unknown_to_node == ()
    assert [store.reserve(1, A).nonce for _ in range(3)] == [2, 3, 4]

    # someone else used the account up to nonce 9: jump, close the slots the chain took
    report = store.reconcile(1, A, pending=10)
    assert report.next_nonce == 10
    assert report.closed_external == (2, 3, 4)
    assert store.slot(1, A, 3)[0] == EXTERNAL
    assert store.reserve(1, A).nonce == 10


def test_node_behind_us_reports_rather_than_reuses(tmp_path: Path) -> None:
    store = SqliteNonceStore(tmp_path / "n.sqlite")
    for i in range(3):
        store.commit(store.reserve(1, A), f"0x{i}")
    report = store.reconcile(1, A, pending=1)  # nonces 1 and 2 were dropped by the node
    assert report.next_nonce == 3 and report.unknown_to_node == (1, 2)
    assert store.reserve(1, A).nonce == 3  # never handed to a new transfer


def test_dropped_slot_is_reused_only_by_its_replacement(tmp_path: Path) -> None:
    store = SqliteNonceStore(tmp_path / "n.sqlite")
    r = store.reserve(1, A)
    store.commit(r, "0xold")
    rep = store.reserve_replacement(1, A, r.nonce)
    assert rep.nonce == r.nonce and rep.replacement
    store.commit(rep, "0xnew")
    assert store.slot(1, A, 0) == (COMMITTED, ("0xold", "0xnew"))
    assert store.reserve(1, A).nonce == 1  # a fresh transfer never gets slot 0
    with pytest.raises(NonceError):
        store.reserve_replacement(1, A, 1)  # reserved, not committed: nothing to replace
    with pytest.raises(NonceError):
        store.release(r)  # committed: cannot go back
    with pytest.raises(NonceError):
        store.commit(Reservation(1, A.lower(), 7), "0x")  # never reserved


def test_commit_is_idempotent_but_never_overwrites(tmp_path: Path) -> None:
    store = SqliteNonceStore(tmp_path / "n.sqlite")
    r = store.reserve(1, A)
    store.commit(r, "0x1")
    store.commit(r, "0x1")  # the same broadcast recorded twice: fine
    with pytest.raises(NonceError):
        store.commit(r, "0x2")  # another transaction in the slot needs reserve_replacement
    assert store.slot(1, A, 0) == (COMMITTED, ("0x1",))
