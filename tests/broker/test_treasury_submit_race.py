"""A new transfer is submitted once: by the call that created it, or - only if that call
died - by a worker after the creator's lease.

Found by the kill loop with transfers (tests/reliability/killloop.py --transfers, SQLite,
first iteration): the worker's step picked up a transfer still ``requested`` with no sign
request while the API's create call was submitting it, so both raised a sign request and
the HSM signed the auto-tier transfer twice (two EXECUTED rows for one transfer; the same
nonce, so the chain saw one transaction, but one intent performed twice in the HSM and
counted twice against a velocity limit; on the approval tiers, two approval tasks).
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from typing import Any

import pytest
from sqlalchemy import select

from chains.ethereum.encoding import checksum
from custody.db import SignRequest
from custody.treasury.ledger import SUBMIT_LEASE_SECONDS
from tests.broker import test_treasury_resume as resume
from tests.broker.test_treasury_resume import WEI, Crash, Service, _finish, _funded, _wallet
from tests.helpers import Approver
from tests.treasury_kit import transfer

pytestmark = pytest.mark.slow
nets, service = resume.nets, resume.service  # the fixtures, shared


def _requests_for(service: Service, transfer_id: str) -> list[str]:
    with service.broker.sessions() as s:
        rows = s.scalars(select(SignRequest)).all()
        return [r.id for r in rows if (r.meta_data or {}).get("transferId") == transfer_id]


def _signings(service: Service, request_ids: list[str]) -> int:
    assert service.client is not None
    hsm = service.client.app.state.hsm  # type: ignore[attr-defined]
    return sum(1 for e in hsm.audit_entries(1, 100_000)
               if e.event.get("op") in ("sign.now", "request.execute")
               and e.event.get("result") == "ok" and e.event.get("requestId") in request_ids)


def test_a_worker_does_not_submit_beside_the_creating_call(
        service: Service, people: dict[str, Approver]) -> None:
    w, eth, _, before = _funded(service, people)
    broker, treasury = service.broker, service.treasury
    original = broker.submit
    raced: list[Any] = []

    def submit_while_a_worker_steps(*args: Any, **kwargs: Any) -> Any:
        if not raced:  # the create call is submitting: a worker's step runs meanwhile
            meta = args[6] if len(args) > 6 else kwargs["meta"]
            raced.append(treasury.advance(meta["transferId"]))
        return original(*args, **kwargs)

    broker.submit = submit_while_a_worker_steps  # type: ignore[method-assign]
    dest = checksum(os.urandom(20))
    t = transfer(service.client, w["id"], "ETH", "0.5", dest)  # small: auto-signed
    broker.submit = original  # type: ignore[method-assign]
    assert raced and raced[0].state == "requested"  # the worker left it to the creator
    done = _finish(service, t["id"])
    requests = _requests_for(service, t["id"])
    assert len(requests) == 1, requests
    assert _signings(service, requests) == 1  # the HSM signed it once
    assert done["nonce"] == before and eth.pending_nonce(w["address"]) == before + 1
    assert eth.balance(dest) == WEI // 2


def test_a_worker_takes_over_after_the_creator_died(
        service: Service, people: dict[str, Approver]) -> None:
    assert service.client is not None
    w = _wallet(service, people)
    eth = service.nets.eth
    assert eth is not None
    original = service.broker.submit

    def died(*_a: Any, **_k: Any) -> Any:
        raise Crash("the API died before submitting")

    service.broker.submit = died  # type: ignore[method-assign]
    dest = checksum(os.urandom(20))
    with pytest.raises(BaseException):  # noqa: B017 - through HTTP it arrives wrapped
        transfer(service.client, w["id"], "ETH", "0.5", dest)
    service.broker.submit = original  # type: ignore[method-assign]
    service.restart()
    treasury = service.treasury
    with treasury.sessions() as s:
        from custody.treasury.models import TransferRecord

        stored = s.scalars(select(TransferRecord).where(
            TransferRecord.destination == dest)).one()
    assert stored.state == "requested" and stored.sign_request_id is None
    assert treasury.advance(stored.id).sign_request_id is None  # its creator's lease holds
    treasury.ledger.clock = lambda: time.time() + SUBMIT_LEASE_SECONDS + 1
    _finish(service, stored.id)
    requests = _requests_for(service, stored.id)
    assert len(requests) == 1 and _signings(service, requests) == 1
    assert eth.balance(dest) == WEI // 2


def test_a_signature_the_broker_never_recorded_is_adopted_not_repeated(
        service: Service, people: dict[str, Approver]) -> None:
    """The HSM signed the auto tier, the process died before the broker's row: the
    worker's resubmission finds the HSM's request (its id is the transfer's own) instead
    of having the payload signed a second time."""
    assert service.client is not None
    w = _wallet(service, people)
    eth = service.nets.eth
    assert eth is not None
    broker = service.broker
    original = broker.intake._record_executed

    def died(*_a: Any, **_k: Any) -> Any:
        raise Crash("signed by the HSM, not recorded")

    broker.intake._record_executed = died  # type: ignore[method-assign]
    dest = checksum(os.urandom(20))
    with pytest.raises(BaseException):  # noqa: B017 - through HTTP it arrives wrapped
        transfer(service.client, w["id"], "ETH", "0.5", dest)
    broker.intake._record_executed = original  # type: ignore[method-assign]
    service.restart()
    treasury = service.treasury
    with treasury.sessions() as s:
        from custody.treasury.models import TransferRecord

        stored = s.scalars(select(TransferRecord).where(
            TransferRecord.destination == dest)).one()
    treasury.ledger.clock = lambda: time.time() + SUBMIT_LEASE_SECONDS + 1
    _finish(service, stored.id)
    with treasury.sessions() as s:
        final = base64.b64decode(s.get(TransferRecord, stored.id).payload_b64)  # type: ignore[union-attr]
    digest = hashlib.sha256(final).hexdigest()
    hsm = service.client.app.state.hsm  # type: ignore[attr-defined]
    assert sum(1 for e in hsm.audit_entries(1, 100_000)
               if e.event.get("op") in ("sign.now", "request.execute")
               and e.event.get("result") == "ok"
               and e.event.get("payloadDigest") == digest) == 1  # signed once
    assert eth.balance(dest) == WEI // 2
