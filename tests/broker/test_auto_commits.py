"""The broker's hot paths, counted in the HSM's durable commits (each a WAL sync and an
anti-rollback counter advance: see tests/hsm/test_counted_commits.py): auto-tier
requests signed together cost one, whatever their number; a 2-of-3 request one to
begin and one per approval - the last approval's check and the signing share it (the
HSM's ``approve``)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from custody.autosign import AutoSigner
from custody.broker import Broker, Call, Principal
from custody.db import Status, make_engine, make_sessions
from hsm_emulator import Hsm, ManualClock, decoders
from hsm_emulator.decoders import transfer_payload
from hsm_emulator.model import Action
from tests.conftest import SO, TEST_PASSPHRASE
from tests.helpers import Approver, tiered_policy
from tests.hsm.test_counted_commits import CountingCounter

DESK = Principal("desk-user", "desk", frozenset({"business"}))


@pytest.fixture
def counted(tmp_path: Path, people: dict[str, Approver]
            ) -> Iterator[tuple[Broker, CountingCounter]]:
    counter = CountingCounter()
    hsm = Hsm.open(tmp_path / "h.sqlite", TEST_PASSPHRASE, so_passphrase=SO,
                   clock=ManualClock(), decoders=decoders.test_registry(), nvram=counter)
    counter.hsm = hsm
    broker = Broker(hsm, make_sessions(make_engine(f"sqlite:///{tmp_path / 'b.sqlite'}")))
    broker.intake.create_key("desk", "treasury", "SECP256K1",
                             policy=tiered_policy([people[p] for p in ("t1", "t2", "t3")],
                                                  [people["c1"]]))
    yield broker, counter
    broker.close()
    hsm.close()


def _call(amount: int, nonce: int) -> Call:
    return Call(DESK, "treasury", Action.USE, transfer_payload("TST", amount, "bob", 1, nonce),
                "TEST_TRANSFER", None, None)


def test_auto_requests_signed_together_are_one_counted_commit(
        counted: tuple[Broker, CountingCounter]) -> None:
    broker, counter = counted
    before = counter.advances
    futures = AutoSigner(broker).sign_together([_call(10 + i, i) for i in range(25)])
    assert all(broker.get(f.result()).status == Status.EXECUTED for f in futures)
    assert counter.advances - before == 1


def test_a_quorum_request_costs_one_commit_to_begin_and_one_per_approval(
        counted: tuple[Broker, CountingCounter], people: dict[str, Approver]) -> None:
    broker, counter = counted
    before = counter.advances
    row = broker.submit(DESK, "treasury", Action.USE, transfer_payload("TST", 1000, "bob", 1, 7),
                        "TEST_TRANSFER", None, None)
    assert counter.advances - before == 1  # begin
    challenge = base64.b64decode(row.challenge_b64 or "")
    steps, statuses = [], []
    for who in ("t1", "t2"):
        before = counter.advances
        row = broker.approvers.approve(row.id, people[who].spki_b64, people[who].sign(challenge))
        steps.append(counter.advances - before)
        statuses.append(row.status)
    assert statuses == [Status.PENDING, Status.EXECUTED]
    assert steps == [1, 1]  # the last approval is checked and signs in one counted commit
    assert len(row.result or []) == 1 and row.approved_by == [
        people["t1"].spki_b64, people["t2"].spki_b64]
    assert [a.approver_key_b64 for a in broker.approvals(row.id)] == [
        people["t1"].spki_b64, people["t2"].spki_b64]  # both recorded
