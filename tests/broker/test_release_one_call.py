"""The broker's last approval: one HSM call (``approve``) checks it and executes, when
the broker's copy of the policy says it releases; otherwise the two-call path. A crash
between the HSM's commit and the broker's records is recovered by the sweep, through
``request_status`` (refused: closed) and ``request_result``."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from approvals_app.recovery import sweep
from custody.broker import Broker
from custody.db import SignRequest, Status, make_engine, make_sessions
from custody.errors import Conflict
from hsm_emulator import Hsm, ManualClock, decoders
from hsm_emulator.decoders import transfer_payload
from hsm_emulator.errors import ApprovalRefused
from hsm_emulator.model import Action
from tests.conftest import SO, TEST_PASSPHRASE
from tests.helpers import Approver, tiered_policy
from tests.reliability.local import DESK

TT = "TEST_TRANSFER"


class World:
    def __init__(self, tmp_path: Path, people: dict[str, Approver],
                 policy: dict[str, Any] | None = None) -> None:
        self.clock = ManualClock()
        self.people = people
        self.hsm = Hsm.open(tmp_path / "h.sqlite", TEST_PASSPHRASE, so_passphrase=SO,
                            clock=self.clock, decoders=decoders.test_registry())
        self.hsm.create_key("treasury", "SECP256K1", policy=policy or tiered_policy(
            [people["t1"], people["t2"], people["t3"]], [people["c1"]]))
        self.broker = Broker(self.hsm, make_sessions(make_engine(
            f"sqlite:///{tmp_path / 'b.sqlite'}")), clock=self.clock.now)
        self.broker.intake.claim_key("treasury", DESK.tenant)

    def submit(self, amount: int, nonce: int = 0, fee: int = 1,
               fee_cap: int | None = None) -> SignRequest:
        return self.broker.submit(DESK, "treasury", Action.USE,
                                  transfer_payload("TST", amount, "bob", fee, nonce), TT,
                                  None, None, fee_cap=fee_cap)

    def answer(self, row: SignRequest, who: str) -> SignRequest:
        challenge = base64.b64decode(row.challenge_b64 or "")
        person = self.people[who]
        return self.broker.approvers.approve(row.id, person.spki_b64, person.sign(challenge))

    def ops(self, request_id: str) -> list[tuple[str, str]]:
        """The HSM's audit of this request: (op, result), in order."""
        return [(str(e.event["op"]), str(e.event["result"]))
                for e in self.hsm.audit_entries(1, 10_000)
                if e.event.get("requestId") == request_id]

    def hsm_calls(self, names: tuple[str, ...]) -> list[str]:
        """Record which of ``names`` the broker calls on the HSM from now on."""
        seen: list[str] = []
        for name in names:
            real = getattr(self.hsm, name)

            def spy(*args: Any, _n: str = name, _real: Callable[..., Any] = real,
                    **kwargs: Any) -> Any:
                seen.append(_n)
                return _real(*args, **kwargs)

            setattr(self.hsm, name, spy)
        return seen

    def close(self) -> None:
        self.broker.close()
        self.hsm.close()


@pytest.fixture
def world(tmp_path: Path, people: dict[str, Approver]) -> Iterator[World]:
    w = World(tmp_path, people)
    yield w
    w.close()


CALLS = ("check_approval", "approve", "execute", "request_status", "request_result")


def test_the_last_approval_is_one_hsm_call(world: World) -> None:
    row = world.submit(1000)
    seen = world.hsm_calls(CALLS)
    assert world.answer(row, "t1").status == Status.PENDING
    first = list(seen)
    done = world.answer(row, "t2")
    assert done.status == Status.EXECUTED and done.result
    assert first == ["check_approval", "request_status"]  # not predicted: two calls
    assert seen[len(first):] == ["approve"]  # predicted: one call, no status read
    assert world.ops(row.id) == [("request.begin", "ok"), ("approval.check", "ok"),
                                 ("approval.check", "ok"), ("request.execute", "ok")]
    assert len(world.broker.approvals(row.id)) == 2
    assert done.result == [base64.b64encode(s).decode()
                           for s in world.hsm.request_result(row.id).signatures]


def test_a_crash_after_the_hsm_signed_is_recovered_by_the_sweep(world: World) -> None:
    """The process died after the HSM's commit, before the broker recorded anything: the
    request is open here and executed in the HSM. The sweep's ``advance`` is refused by
    ``request_status`` (closed) and records the HSM's result; nothing is signed twice."""
    row = world.submit(1000)
    world.answer(row, "t1")
    real = world.broker.store.finish  # its first write: the approval with the execution

    def die(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("killed after the HSM executed")

    world.broker.store.finish = die  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        world.answer(row, "t2")
    world.broker.store.finish = real  # type: ignore[method-assign]
    assert world.broker.get(row.id).status == Status.PENDING
    assert len(world.broker.approvals(row.id)) == 1
    executed = world.hsm.request_result(row.id)
    assert sweep(world.broker) == 1
    done = world.broker.get(row.id)
    assert done.status == Status.EXECUTED
    assert done.result == [base64.b64encode(s).decode() for s in executed.signatures]
    assert done.approved_by == list(executed.approved_by)
    assert sweep(world.broker) == 0
    assert world.ops(row.id).count(("request.execute", "ok")) == 1


def test_the_releasing_approval_and_the_execution_are_recorded_together(world: World) -> None:
    """One transaction: the database failing at the execution's UPDATE (after the
    approval's INSERT ran) keeps neither, and the sweep records the HSM's result."""
    row = world.submit(1000)
    world.answer(row, "t1")
    engine = world.broker.store.sessions.kw["bind"]

    def fail_the_update(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.lstrip().upper().startswith("UPDATE SIGN_REQUESTS"):
            raise RuntimeError("the database failed mid-transaction")

    event.listen(engine, "before_cursor_execute", fail_the_update)
    try:
        with pytest.raises(RuntimeError):
            world.answer(row, "t2")
    finally:
        event.remove(engine, "before_cursor_execute", fail_the_update)
    assert len(world.broker.approvals(row.id)) == 1  # the INSERT went with the UPDATE
    assert world.broker.get(row.id).status == Status.PENDING
    assert sweep(world.broker) == 1
    done = world.broker.get(row.id)
    assert done.status == Status.EXECUTED and len(done.approved_by or []) == 2
    assert world.ops(row.id).count(("request.execute", "ok")) == 1


def test_the_release_writes_its_approval_and_execution_in_one_transaction(
        world: World) -> None:
    row = world.submit(1000)
    world.answer(row, "t1")
    engine = world.broker.store.sessions.kw["bind"]
    commits: list[int] = []
    event.listen(engine, "commit", lambda _conn: commits.append(1))
    done = world.answer(row, "t2")
    assert done.status == Status.EXECUTED
    assert len(commits) == 1
    assert [a.approver_key_b64 for a in world.broker.approvals(row.id)] == [
        world.people[p].spki_b64 for p in ("t1", "t2")]


def test_a_forged_last_approval_is_refused_once_and_records_nothing(world: World) -> None:
    row = world.submit(1000)
    world.answer(row, "t1")
    challenge = base64.b64decode(row.challenge_b64 or "")
    t2, x = world.people["t2"], world.people["x"]
    with pytest.raises(ApprovalRefused):
        world.broker.approvers.approve(row.id, t2.spki_b64, x.sign(challenge))
    assert world.ops(row.id)[-1] == ("approval.check", "refused")
    assert world.ops(row.id).count(("approval.check", "refused")) == 1  # one refusal
    assert len(world.broker.approvals(row.id)) == 1
    assert world.broker.get(row.id).status == Status.PENDING
    assert world.answer(row, "t2").status == Status.EXECUTED


def test_an_approver_answering_twice_is_a_conflict(world: World) -> None:
    row = world.submit(1000)
    world.answer(row, "t1")
    with pytest.raises(Conflict):
        world.answer(row, "t1")
    assert world.broker.get(row.id).status == Status.PENDING
    assert world.answer(row, "t3").status == Status.EXECUTED


def test_a_wrong_guess_is_an_approval_recorded(tmp_path: Path,
                                               people: dict[str, Approver]) -> None:
    """The broker's clock a day ahead of the HSM's: it guesses the large tier's hold is
    over; the HSM says not met, so the approval is only recorded (one call, one commit)
    and the request is held."""
    w = World(tmp_path, people)
    try:
        w.broker.store.clock = lambda: w.clock.now() + 86400
        row = w.submit(10**6)  # large: two traders and compliance, 24 h hold
        w.answer(row, "t1")
        w.answer(row, "t2")
        seen = w.hsm_calls(CALLS)
        kept = w.answer(row, "c1")
        assert seen[0] == "approve" and kept.status == Status.APPROVED
        assert len(w.broker.approvals(row.id)) == 3
        assert w.ops(row.id)[-1] == ("approval.check", "ok")
        w.clock.advance(86400)
        assert w.broker.advance(row.id).status == Status.EXECUTED
    finally:
        w.close()


def test_a_velocity_limit_is_left_to_the_hsm(tmp_path: Path,
                                             people: dict[str, Approver]) -> None:
    """The broker cannot see what the key has spent: a token with a velocity limit is
    not guessed, so the approval takes the two-call path, whose status read is the
    HSM's - and the payload is not finalized (no nonce taken) for a request that does
    not release."""
    policy = tiered_policy([people["t1"], people["t2"]], [people["c1"]])
    policy["ruleUse"]["tokens"][1]["conditions"]["velocity"] = [
        {"asset": "TST", "max": 2000, "windowSeconds": 3600}]
    w = World(tmp_path, people, json.loads(json.dumps(policy)))
    finalized: list[str] = []

    def finalize(row: SignRequest) -> None:
        finalized.append(row.id)

    w.broker.release.finalize = finalize
    try:
        first, second = w.submit(1500, nonce=1), w.submit(1500, nonce=2)
        w.answer(first, "t1")
        assert w.answer(first, "t2").status == Status.EXECUTED
        w.answer(second, "t1")
        seen = w.hsm_calls(CALLS)
        kept = w.answer(second, "t2")
        assert seen == ["check_approval", "request_status"] and kept.status == Status.PENDING
        assert finalized == [first.id]  # the second, over the window, was not finalized
        assert w.answer(second, "c1").status == Status.APPROVED  # large: the 24 h hold
    finally:
        w.close()


def test_the_payload_is_finalized_before_the_one_call(world: World) -> None:
    """As :meth:`Release._release` does: the rebuilt payload (a fee bump within the cap)
    is what the HSM signs; a rebuild that changes the intent fails the request, as it
    did on the two-call path."""
    rebuilt: list[bytes] = []

    def finalize(row: SignRequest) -> bytes:
        rebuilt.append(transfer_payload("TST", 1000, "bob", 7, 0))
        return rebuilt[-1]

    world.broker.release.finalize = finalize
    row = world.submit(1000, fee=5, fee_cap=10)
    world.answer(row, "t1")
    seen = world.hsm_calls(CALLS)
    done = world.answer(row, "t2")
    assert seen == ["approve"]
    assert done.status == Status.EXECUTED and len(rebuilt) == 1
    signed = world.hsm.audit_entries(1, 10_000)[-1].event
    assert signed["payloadDigest"] == hashlib.sha256(rebuilt[0]).hexdigest()

    world.broker.release.finalize = lambda row: transfer_payload("TST", 1000, "mallory", 1, 1)
    bad = world.submit(1000, nonce=1)
    world.answer(bad, "t1")
    seen.clear()
    failed = world.answer(bad, "t2")
    assert failed.status == Status.FAILED and "intent" in (failed.error or "")
    assert ("request.execute", "ok") not in world.ops(bad.id)
    # the one call refused the release; the two-call path then answered as it always has
    assert seen == ["approve", "check_approval", "request_status", "execute"]
