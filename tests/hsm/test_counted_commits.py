"""How many durable, counted commits each signing call costs, and that none returns a
signature before its commit is on disk and counted.

Every commit that changes the store is synced and then advances the anti-rollback
counter (:mod:`hsm_emulator.store`): the two syncs are most of a call's cost, so a call
that opened a second transaction (audit, ledger and request records committing apart)
would double it. These tests count SQL ``COMMIT`` statements and counter advances per
call, and check at each advance that the store's commit came first.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hsm_emulator import Action, CounterValue, Hsm, ManualClock, decoders
from hsm_emulator.decoders import transfer_payload
from hsm_emulator.errors import ApprovalRefused, PolicyNotMet
from hsm_emulator.flow import Approval
from hsm_emulator.results import ApprovalOutcome
from tests.conftest import SO, TEST_PASSPHRASE
from tests.helpers import Approver, tiered_policy

TT = "TEST_TRANSFER"


class CountingCounter:
    """A monotonic counter that counts its advances and, at each, checks that the
    store has already committed the value it is moved to (the write order)."""

    def __init__(self) -> None:
        self.value: CounterValue | None = None
        self.advances = 0
        self.hsm: Hsm | None = None

    def read(self) -> CounterValue | None:
        return self.value

    def advance(self, value: CounterValue) -> None:
        if self.hsm is not None:
            db = self.hsm._store.unsafe_connection()
            assert not db.in_transaction  # committed before the counter moves
            assert self.hsm._store.counter_value == value
        self.advances += 1
        self.value = value


class Calls:
    """The HSM under test, its counter, and the SQL commits seen so far."""

    def __init__(self, hsm: Hsm, counter: CountingCounter) -> None:
        self.hsm, self.counter, self.commits = hsm, counter, 0
        hsm._store.unsafe_connection().set_trace_callback(self._trace)

    def _trace(self, sql: str) -> None:
        self.commits += sql.strip().upper() == "COMMIT"

    def cost(self, call: Callable[[], Any]) -> tuple[int, int]:
        """(SQL commits, counter advances) that ``call`` made; after it returned the
        counter holds the store's last commit (nothing left to advance)."""
        commits, advances = self.commits, self.counter.advances
        try:
            call()
        finally:
            assert self.counter.value == self.hsm._store.counter_value
        return self.commits - commits, self.counter.advances - advances


@pytest.fixture
def calls(tmp_path: Path, people: dict[str, Approver]) -> Iterator[Calls]:
    counter = CountingCounter()
    hsm = Hsm.open(tmp_path / "h.sqlite", TEST_PASSPHRASE, so_passphrase=SO,
                   clock=ManualClock(), decoders=decoders.test_registry(), nvram=counter)
    hsm.create_key("k", "SECP256K1",
                   policy=tiered_policy([people["t1"], people["t2"]], [people["c1"]]))
    counter.hsm = hsm
    yield Calls(hsm, counter)
    hsm.close()


def _pay(amount: int, nonce: int) -> bytes:
    return transfer_payload("TST", amount, "d", 1, nonce=nonce)


def test_one_sign_now_is_one_counted_commit(calls: Calls) -> None:
    hsm = calls.hsm
    assert calls.cost(lambda: hsm.sign_now("k", _pay(10, 1), TT)) == (1, 1)
    # kept as an executed request (its own id): the record joins the same commit
    assert calls.cost(lambda: hsm.sign_now("k", _pay(10, 2), TT, request_id="request-2")) == (1, 1)


def test_one_batch_is_one_counted_commit_whatever_its_size(calls: Calls) -> None:
    hsm = calls.hsm
    for size in (1, 10, 200):
        batch = [_pay(1, 1000 * size + i) for i in range(size)]
        assert calls.cost(lambda b=batch: hsm.sign_batch("k", b, TT)) == (1, 1)  # type: ignore[misc]


def test_a_refusal_commits_only_its_audit_entry(calls: Calls) -> None:
    """The refused call's transaction rolls back (nothing signed); its audit entry is
    the one commit - audited like any change, so a rewind cannot drop it."""
    def refused() -> None:
        with pytest.raises(PolicyNotMet):
            calls.hsm.sign_now("k", _pay(1000, 3), TT)

    assert calls.cost(refused) == (1, 1)


def test_reads_commit_nothing(calls: Calls) -> None:
    hsm = calls.hsm
    hsm.sign_now("k", _pay(10, 4), TT, request_id="request-4")
    for read in (hsm.list_keys, lambda: hsm.dry_run("k", _pay(10, 5), TT),
                 lambda: hsm.request_result("request-4"), lambda: hsm.audit_entries(1, 10)):
        assert calls.cost(read) == (0, 0)


def test_the_release_path_commits_once_per_approval_and_once_to_sign(
        calls: Calls, people: dict[str, Approver]) -> None:
    """What the broker does for a medium transfer: begin, each approval checked
    (audited), the status read, then execute. Each audited step is its own counted
    commit; the status read commits nothing."""
    hsm = calls.hsm
    challenge = hsm.begin("k", Action.USE, _pay(1000, 6), TT)
    approvals = [people[p].approve(challenge.envelope) for p in ("t1", "t2")]
    for approval in approvals:
        assert calls.cost(lambda a=approval: hsm.check_approval(  # type: ignore[misc]
            challenge.request_id, a)) == (1, 1)
    assert calls.cost(lambda: hsm.request_status(challenge.request_id, approvals)) == (0, 0)
    assert calls.cost(lambda: hsm.execute(challenge.request_id, approvals)) == (1, 1)


def test_the_last_approval_checked_and_signed_is_one_counted_commit(
        calls: Calls, people: dict[str, Approver]) -> None:
    """``approve`` - the approval checked and, the policy then met, the request executed -
    in one transaction: each approval one counted commit, the last one included; a
    refused one too (its audit entry)."""
    hsm = calls.hsm
    challenge = hsm.begin("k", Action.USE, _pay(1000, 7), TT)
    first, last = (people[p].approve(challenge.envelope) for p in ("t1", "t2"))
    outcome: list[ApprovalOutcome] = []
    assert calls.cost(lambda: outcome.append(hsm.approve(challenge.request_id, first))) == (1, 1)
    assert outcome[-1].execution is None
    forged = Approval("public_key", people["t2"].spki_b64, people["x"].sign(challenge.envelope))

    def refused() -> None:
        with pytest.raises(ApprovalRefused):
            hsm.approve(challenge.request_id, forged, [first])

    assert calls.cost(refused) == (1, 1)
    assert calls.cost(lambda: outcome.append(
        hsm.approve(challenge.request_id, last, [first]))) == (1, 1)
    assert outcome[-1].execution is not None and outcome[-1].execution.token == "medium"


def test_the_trace_sees_commits(tmp_path: Path) -> None:
    """The counting above relies on SQLite reporting the ``COMMIT`` it runs."""
    seen: list[str] = []
    db = sqlite3.connect(tmp_path / "x.sqlite", isolation_level=None)
    db.set_trace_callback(seen.append)
    db.execute("BEGIN IMMEDIATE")
    db.execute("CREATE TABLE t (x)")
    db.execute("COMMIT")
    db.close()
    assert "COMMIT" in seen
