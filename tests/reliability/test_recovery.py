"""Regressions for the two fault-handling fixes in the API layer.

* A request whose last approval was recorded by a process that then died (before the
  release) stayed PENDING until its token's timeout - an hour; a retried approval is
  refused as "already answered". The worker's recovery sweep now releases it.
* A database outage answered 500 (an unhandled OperationalError); it is now a 503
  problem with Retry-After, like an HSM outage.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

from approvals_app import problems
from approvals_app.recovery import sweep
from custody.broker import REJECT_PREFIX
from custody.db import ApprovalRecord, Status
from hsm_emulator import ManualClock
from hsm_emulator.credentials import parse_credential
from hsm_emulator.decoders import transfer_payload
from hsm_emulator.model import Action
from tests.helpers import Approver

from .local import DESK, treasury


def test_the_sweep_releases_a_request_whose_release_a_crash_cut_short(
        tmp_path: Path, clock: ManualClock) -> None:
    traders = [Approver.new(n) for n in ("t1", "t2", "t3")]
    hsm, broker = treasury(tmp_path, clock, traders)
    try:
        row = broker.submit(DESK, "treasury", Action.USE, transfer_payload("TST", 1000, "bob"),
                            "TEST_TRANSFER", None, None)
        challenge = base64.b64decode(row.challenge_b64)
        for who in traders[:2]:  # what ApproverSessions.approve commits before the process died
            spki = hsm.check_approval(row.id, who.approve(challenge))
            with broker.sessions.begin() as s:
                s.add(ApprovalRecord(
                    request_id=row.id, approver=parse_credential("public_key", who.spki_b64).fingerprint,
                    approver_key_b64=spki, credential_type="public_key",
                    credential=who.spki_b64, digest="SHA-256",
                    signature_b64=base64.b64encode(who.sign(challenge)).decode()))
        assert broker.tick() == 0  # nothing is due for an hour: it was stuck
        assert broker.get(row.id).status == Status.PENDING
        assert sweep(broker) == 1
        done = broker.get(row.id)
        assert done.status == Status.EXECUTED and done.result
        assert sweep(broker) == 0
    finally:
        broker.close()
        hsm.close()


def test_a_database_outage_is_a_503_with_retry_after() -> None:
    app = FastAPI()
    problems.install(app)

    @app.get("/boom")
    def boom() -> None:
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    r = TestClient(app, raise_server_exceptions=False).get("/boom")
    assert r.status_code == 503
    assert r.headers["retry-after"] and r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "custody.database_unavailable"


def test_a_retried_cancel_after_a_crash_ends_cancelled(tmp_path: Path,
                                                       clock: ManualClock) -> None:
    """Found by the kill loop: the API died after the HSM cancelled, before the broker
    recorded it; the retried DELETE answered 200 but left the request PENDING for ever
    (the HSM's request_status still evaluates a cancelled request)."""
    hsm, broker = treasury(tmp_path, clock, [Approver.new(n) for n in ("t1", "t2", "t3")])
    try:
        row = broker.submit(DESK, "treasury", Action.USE, transfer_payload("TST", 1000, "bob"),
                            "TEST_TRANSFER", None, None)
        hsm.cancel(row.id, "cancelled by desk-user")  # ... and the process died here
        assert broker.cancel(DESK, row.id).status == Status.CANCELLED
    finally:
        broker.close()
        hsm.close()


def test_a_rejection_cut_short_by_a_crash_still_ends_rejected(tmp_path: Path,
                                                              clock: ManualClock) -> None:
    """Found by the kill loop: the broker closed a rejected request in the HSM, died
    before recording REJECTED, and on resuming recorded it as CANCELLED."""
    traders = [Approver.new(n) for n in ("t1", "t2", "t3")]
    hsm, broker = treasury(tmp_path, clock, traders)
    try:
        row = broker.submit(DESK, "treasury", Action.USE, transfer_payload("TST", 1000, "bob"),
                            "TEST_TRANSFER", None, None)
        message = REJECT_PREFIX + base64.b64decode(row.challenge_b64)
        broker.approvers.reject(row.id, traders[0].spki_b64, traders[0].sign(message))
        real_finish = broker.store.finish

        def die(*_args: object, **_kwargs: object) -> None:
            raise RuntimeError("killed after the HSM closed the request")

        broker.store.finish = die  # type: ignore[method-assign]
        with pytest.raises(RuntimeError):
            broker.approvers.reject(row.id, traders[1].spki_b64, traders[1].sign(message))
        broker.store.finish = real_finish  # type: ignore[method-assign]
        assert sweep(broker) == 1
        assert broker.get(row.id).status == Status.REJECTED
    finally:
        broker.close()
        hsm.close()
