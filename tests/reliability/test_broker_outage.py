"""Regression: an HSM outage must not end a request (the broker marked it FAILED).

Found by the kill loop: while the HSM process was down, the release scheduler's
``advance`` got a :class:`TransportError`, which the broker treated like a refusal and
recorded FAILED for ever - though the HSM would have signed once back. Now the request
is kept, looked at again shortly, the caller gets a 503, and it is released on return.
"""

from __future__ import annotations

import base64
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from custody.broker import RETRY_SECONDS, Broker
from custody.db import Status, make_engine, make_sessions
from hsm_emulator import Hsm, ManualClock
from hsm_emulator.decoders import transfer_payload
from hsm_emulator.errors import TransportError
from hsm_emulator.model import Action
from tests.conftest import SO, TEST_PASSPHRASE
from tests.helpers import Approver

from .local import DESK, treasury


class UnpluggableHsm:
    """The in-process HSM behind a cable that can be pulled: every call then fails the
    way :class:`~hsm_emulator.remote.RemoteHsmClient` fails when the process is gone."""

    def __init__(self, hsm: Hsm) -> None:
        self.hsm = hsm
        self.down = False

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.hsm, name)
        if not callable(target):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                raise TransportError(f"{name}: cannot reach the HSM (unplugged)")
            return target(*args, **kwargs)

        return call


def test_an_hsm_outage_keeps_the_request_and_it_releases_on_return(
        tmp_path: Path, clock: ManualClock) -> None:
    """The HSM checked the last approval and executed (``approve``, one call), then the
    cable was pulled before its answer came back: the outcome is unknown to the broker,
    which keeps the request, answers 503, and on return learns the HSM's result."""
    traders = [Approver.new(n) for n in ("t1", "t2", "t3")]
    hsm, broker = treasury(tmp_path, clock, traders, UnpluggableHsm)
    cable: UnpluggableHsm = broker.hsm  # type: ignore[assignment]
    try:
        row = broker.submit(DESK, "treasury", Action.USE, transfer_payload("TST", 1000, "bob"),
                            "TEST_TRANSFER", None, None)
        challenge = base64.b64decode(row.challenge_b64)
        broker.approvers.approve(row.id, traders[0].spki_b64, traders[0].sign(challenge))
        real_approve = hsm.approve

        def approve_then_unplug(*args: Any, **kwargs: Any) -> Any:
            done = real_approve(*args, **kwargs)
            cable.down = True
            raise TransportError("approve: the connection dropped before the answer")
            return done  # pragma: no cover

        hsm.approve = approve_then_unplug  # type: ignore[method-assign]
        with pytest.raises(TransportError):
            broker.approvers.approve(row.id, traders[1].spki_b64, traders[1].sign(challenge))
        kept = broker.get(row.id)
        assert kept.status == Status.PENDING, kept.error  # was: FAILED, for ever
        assert kept.wake_at is not None and kept.wake_at <= clock.now() + RETRY_SECONDS
        assert hsm.request_result(row.id).signatures  # signed in the HSM, unknown here
        clock.advance(RETRY_SECONDS)
        with pytest.raises(TransportError):  # the scheduler during the outage ...
            broker.tick()  # ... (run_scheduler goes on): the request is still kept
        assert broker.get(row.id).status == Status.PENDING
        del hsm.approve
        cable.down = False
        clock.advance(RETRY_SECONDS)
        assert broker.tick() == 1
        done = broker.get(row.id)
        assert done.status == Status.EXECUTED
        assert done.result == [base64.b64encode(s).decode()
                               for s in hsm.request_result(row.id).signatures]
    finally:
        broker.close()
        hsm.close()


def test_an_hsm_outage_before_the_last_approval_is_a_503_and_changes_nothing(
        tmp_path: Path, clock: ManualClock) -> None:
    traders = [Approver.new(n) for n in ("t1", "t2", "t3")]
    hsm, broker = treasury(tmp_path, clock, traders, UnpluggableHsm)
    cable: UnpluggableHsm = broker.hsm  # type: ignore[assignment]
    try:
        row = broker.submit(DESK, "treasury", Action.USE, transfer_payload("TST", 1000, "bob"),
                            "TEST_TRANSFER", None, None)
        challenge = base64.b64decode(row.challenge_b64)
        broker.approvers.approve(row.id, traders[0].spki_b64, traders[0].sign(challenge))
        cable.down = True
        with pytest.raises(TransportError):
            broker.approvers.approve(row.id, traders[1].spki_b64, traders[1].sign(challenge))
        assert broker.get(row.id).status == Status.PENDING
        assert len(broker.approvals(row.id)) == 1  # never acknowledged: not recorded
        cable.down = False  # the approver retries
        done = broker.approvers.approve(row.id, traders[1].spki_b64, traders[1].sign(challenge))
        assert done.status == Status.EXECUTED and done.result
    finally:
        broker.close()
        hsm.close()


def test_the_release_scheduler_outlives_a_database_outage(tmp_path: Path) -> None:
    """It used to die on the first OperationalError: the worker process exited and an
    API replica's scheduler thread stopped silently."""
    hsm = Hsm.open(tmp_path / "hsm.sqlite", TEST_PASSPHRASE, so_passphrase=SO)
    broker = Broker(hsm, make_sessions(make_engine(f"sqlite:///{tmp_path / 'b.sqlite'}")))
    calls = []

    def due() -> list[str]:
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("SELECT", {}, Exception("server closed the connection"))
        stop.set()
        return []

    broker.scheduler.due = due  # type: ignore[method-assign]
    stop = threading.Event()
    thread = threading.Thread(target=broker.run_scheduler, args=(stop, 0.01))
    thread.start()
    thread.join(timeout=10)
    try:
        assert not thread.is_alive() and len(calls) == 3
    finally:
        broker.close()
        hsm.close()
