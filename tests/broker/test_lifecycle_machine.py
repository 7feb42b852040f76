"""The request lifecycle as a hypothesis state machine, crashes included.

Requests of three tiers are created, approved or rejected by each approver (and an
outsider), cancelled; time passes on a :class:`ManualClock`; the broker crashes - either
between two calls, or right after the HSM executed and before the broker recorded it -
and is recreated on the same database and HSM store. After every step:

* the HSM executed each request at most once (its own audit log says so);
* a final state never changes, and nothing ends FAILED (no step here is a fault);
* EXECUTED only if the policy was really met: enough distinct approvers of the right
  groups, every one of them an approval the broker accepted, and the hold passed;
* no accepted approval is lost, crash or not.

At the end every request must be final, or become final once the service's own
scheduler step (``Broker.tick``) has run after the holds and timeouts passed.

CI runs a few cases; a long run: ``LIFECYCLE_EXAMPLES=500 LIFECYCLE_STEPS=60``.
"""

from __future__ import annotations

import base64
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from custody.broker import REJECT_PREFIX, Broker, Principal
from custody.db import FINAL, ApprovalRecord, SignRequest, Status, make_engine, make_sessions
from custody.errors import Conflict, CustodyError
from hsm_emulator import Hsm, ManualClock
from hsm_emulator.decoders import transfer_payload
from hsm_emulator.errors import HsmError, RequestClosed
from hsm_emulator.model import Action
from tests.conftest import SO, TEST_PASSPHRASE
from tests.helpers import Approver, tiered_policy

EXAMPLES = int(os.environ.get("LIFECYCLE_EXAMPLES", "30"))
STEPS = int(os.environ.get("LIFECYCLE_STEPS", "20"))
HOLD, TIMEOUT, MEDIUM_TIMEOUT = 100, 1000, 3600  #: seconds; tiered_policy's medium: 1 h
SMALL, MEDIUM = 100, 5000  #: tier bounds in base units
AMOUNTS = (50, 1000, 10**6)  #: one of each tier
DESK = Principal("desk-user", "desk-1", frozenset({"business"}))

PEOPLE = {name: Approver.new(name, kind) for name, kind in (
    ("t1", "P256"), ("t2", "ED25519"), ("t3", "SECP256K1"), ("c1", "P256"), ("x", "P256"))}
TRADERS, COMPLIANCE = ("t1", "t2", "t3"), ("c1",)
BY_SPKI = {p.spki_b64: name for name, p in PEOPLE.items()}


class PowerCut(Exception):
    """The broker process died here."""


class DyingHsm:
    """The HSM, except that when armed the broker 'dies' right after an ``execute`` the
    HSM has committed - before the broker could record the result."""

    def __init__(self, hsm: Hsm) -> None:
        self.hsm = hsm
        self.armed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.hsm, name)

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        result = self.hsm.execute(*args, **kwargs)
        if self.armed:
            raise PowerCut("after execute")
        return result


class Lifecycle(RuleBasedStateMachine):
    requests = Bundle("requests")

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.clock = ManualClock()
        self.db_url = f"sqlite:///{Path(self.dir.name) / 'broker.sqlite'}"
        self.hsm = Hsm.open(Path(self.dir.name) / "hsm.sqlite", TEST_PASSPHRASE,
                            so_passphrase=SO, clock=self.clock)
        self.hsm.create_key("treasury", "SECP256K1", policy=tiered_policy(
            [PEOPLE[n] for n in TRADERS], [PEOPLE[n] for n in COMPLIANCE], hold=HOLD,
            timeout=TIMEOUT))
        self.dying = DyingHsm(self.hsm)
        self.broker = self._broker()
        self.broker.intake.claim_key("treasury", DESK.tenant)
        self.nonce = 0
        self.amount: dict[str, int] = {}
        self.accepted: dict[str, set[str]] = {}  #: approvals the broker said yes to
        self.final: dict[str, str] = {}  #: first final status seen

    def _broker(self) -> Broker:
        sessions = make_sessions(make_engine(self.db_url))
        return Broker(self.dying, sessions, clock=self.clock.now)

    def teardown(self) -> None:
        try:
            self._everything_ends_final()
        finally:
            self.broker.close()
            self.hsm.close()
            self.dir.cleanup()

    # -- rules ----------------------------------------------------------------------------

    @rule(target=requests, amount=st.sampled_from(AMOUNTS))
    def create(self, amount: int) -> str:
        self.nonce += 1
        row = self.broker.submit(DESK, "treasury", Action.USE,
                                 transfer_payload("TST", amount, "bob", 1, self.nonce),
                                 "TEST_TRANSFER", None, None)
        self.amount[row.id] = amount
        self.accepted[row.id] = set()
        assert row.status == (Status.EXECUTED if amount <= SMALL else Status.PENDING)
        return str(row.id)

    @initialize(target=requests, amount=st.sampled_from(AMOUNTS[1:]))
    def first(self, amount: int) -> str:
        return str(self.create(amount))

    #: outsiders, rejections and power cuts drawn less often than plain approvals, so
    #: runs of a few steps still reach quorums and releases
    @rule(request_id=requests, who=st.sampled_from(["t1", "t2", "t3", "c1"] * 2 + ["x"]),
          reject=st.sampled_from([False] * 4 + [True]), die=st.sampled_from([False, True]))
    def answer(self, request_id: str, who: str, reject: bool, die: bool) -> None:
        person, row = PEOPLE[who], self.broker.get(request_id)
        challenge = base64.b64decode(row.challenge_b64) if row.challenge_b64 else b""
        self.dying.armed = die and not reject
        try:
            if reject:
                self.broker.approvers.reject(request_id, person.spki_b64,
                                   person.sign(REJECT_PREFIX + challenge))
            else:
                self.broker.approvers.approve(request_id, person.spki_b64, person.sign(challenge),
                                    challenge_b64=row.challenge_b64)
        except PowerCut:
            event("answer: power cut after the HSM executed")
            self.accepted[request_id].add(who)  # recorded before the release began
            self.crash()
            return
        except (CustodyError, HsmError) as exc:
            event(f"answer refused: {type(exc).__name__}")
            # the only reasons to refuse a member's answer: already answered, or the
            # request is closed (here or in the HSM), or a token's time ran out
            timed_out = self.clock.now() > row.hsm_time + min(TIMEOUT, MEDIUM_TIMEOUT)
            assert who == "x" or row.status in FINAL or timed_out or isinstance(
                exc, Conflict | RequestClosed), (who, row.status, exc)
            if row.status in FINAL:
                assert isinstance(exc, Conflict), exc
            return
        finally:
            self.dying.armed = False
        event(f"answer accepted: {'reject' if reject else 'approve'}")
        assert who != "x", "an outsider's answer was accepted"
        assert row.status not in FINAL, "an answer to a final request was accepted"
        if not reject:
            self.accepted[request_id].add(who)

    @rule(request_id=requests, die=st.booleans())
    def quorum(self, request_id: str, die: bool) -> None:
        """Every trader and compliance officer approves in turn (refusals are fine)."""
        for who in (*TRADERS, *COMPLIANCE):
            self.answer(request_id, who, reject=False, die=die)

    @rule(request_id=requests)
    def cancel(self, request_id: str) -> None:
        before = self.broker.get(request_id).status
        try:
            row = self.broker.cancel(DESK, request_id)
        except Conflict:
            assert before in FINAL
            return
        assert before not in FINAL
        assert row.status in (Status.CANCELLED, Status.EXECUTED)

    @rule(seconds=st.sampled_from([1, HOLD // 2, HOLD + 1, TIMEOUT, MEDIUM_TIMEOUT]))
    def time_passes(self, seconds: int) -> None:
        self.clock.advance(seconds)
        self.broker.tick()

    @rule()
    def crash(self) -> None:
        """The process dies and starts again on the same database and HSM store."""
        self.broker.close()
        self.hsm.close()
        self.hsm = Hsm.open(Path(self.dir.name) / "hsm.sqlite", TEST_PASSPHRASE,
                            clock=self.clock)
        self.dying = DyingHsm(self.hsm)
        self.broker = self._broker()
        self.broker.tick()  # what the restarted service's scheduler does first

    # -- invariants -----------------------------------------------------------------------

    def _rows(self) -> dict[str, SignRequest]:
        with self.broker.sessions() as s:
            return {r.id: r for r in s.query(SignRequest)}

    def _executions(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for e in self.hsm.audit_entries(1, 100_000):
            ev = e.event
            if ev.get("op") in ("request.execute", "sign.now") and ev.get("result") == "ok":
                counts[ev["requestId"]] = counts.get(ev["requestId"], 0) + 1
        return counts

    @invariant()
    def executed_at_most_once(self) -> None:
        for request_id, n in self._executions().items():
            assert n == 1, f"{request_id} executed {n} times by the HSM"

    @invariant()
    def final_states_never_change(self) -> None:
        for request_id, row in self._rows().items():
            assert row.status != Status.FAILED, (request_id, row.error)
            if request_id in self.final:
                assert row.status == self.final[request_id], (request_id, row.status)
            elif row.status in FINAL:
                self.final[request_id] = row.status

    @invariant()
    def executed_only_when_the_policy_was_met(self) -> None:
        executions = self._executions()
        for request_id, row in self._rows().items():
            if row.status != Status.EXECUTED:
                continue
            assert executions.get(request_id) == 1, "EXECUTED here but not in the HSM"
            names = {BY_SPKI[k] for k in row.approved_by or ()}
            assert names <= self.accepted[request_id], (names, self.accepted[request_id])
            traders = len(names & set(TRADERS))
            amount = self.amount[request_id]
            if amount > SMALL:
                assert traders >= 2, (request_id, names)
            if amount > MEDIUM:
                assert names & set(COMPLIANCE), (request_id, names)
                assert row.execution_time is not None
                assert row.execution_time.timestamp() >= row.hsm_time + HOLD, "hold skipped"

    @invariant()
    def no_approval_lost(self) -> None:
        with self.broker.sessions() as s:
            kept: dict[str, set[str]] = {}
            for r in s.query(ApprovalRecord).filter(ApprovalRecord.rejected.is_(False)):
                kept.setdefault(r.request_id, set()).add(BY_SPKI[r.approver_key_b64])
        for request_id, names in self.accepted.items():
            assert names <= kept.get(request_id, set()), (request_id, names)

    def _everything_ends_final(self) -> None:
        """After the holds and every timeout, the scheduler's own step settles all."""
        for step in (HOLD + 1, MEDIUM_TIMEOUT + TIMEOUT):
            self.clock.advance(step)
            self.broker.tick()
        stuck = {i: r.status for i, r in self._rows().items() if r.status not in FINAL}
        assert not stuck, f"never settled by the scheduler: {stuck}"
        self.executed_at_most_once()
        self.final_states_never_change()
        self.executed_only_when_the_policy_was_met()


Lifecycle.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize="LIFECYCLE_EXAMPLES" not in os.environ)
test_lifecycle = pytest.mark.slow(Lifecycle.TestCase)


def test_a_request_nobody_answers_expires_by_the_scheduler(tmp_path: Path,
                                                           clock: ManualClock) -> None:
    """Found by the machine: the scheduler woke only for holds, so a request whose
    timeout passed unanswered (or whose release a crash cut short) stayed PENDING."""
    hsm = Hsm.open(tmp_path / "hsm.sqlite", TEST_PASSPHRASE, so_passphrase=SO, clock=clock)
    hsm.create_key("treasury", "SECP256K1", policy=tiered_policy(
        [PEOPLE[n] for n in TRADERS], [PEOPLE[n] for n in COMPLIANCE]))
    broker = Broker(hsm, make_sessions(make_engine(f"sqlite:///{tmp_path / 'b.sqlite'}")),
                    clock=clock.now)
    broker.intake.claim_key("treasury", DESK.tenant)
    try:
        row = broker.submit(DESK, "treasury", Action.USE,
                            transfer_payload("TST", 1000, "bob", 1, 1), "TEST_TRANSFER",
                            None, None)
        assert row.status == Status.PENDING and row.wake_at is not None
        clock.advance(MEDIUM_TIMEOUT)
        broker.tick()
        assert broker.get(row.id).status == Status.PENDING  # not yet: the test is strict
        clock.advance(TIMEOUT)  # the large token (72 h) would still be attainable ...
        broker.tick()
        clock.advance(3 * 86400)  # ... until its own timeout
        broker.tick()
        assert broker.get(row.id).status == Status.EXPIRED
    finally:
        broker.close()
        hsm.close()
