"""The HSM unreachable while a new transfer is submitted: the transfer waits and is
submitted again, it does not fail - and a transfer that does fail there gives back the
Ethereum nonce it had taken.

Found while extending the kill loop to transfers (tests/reliability/killloop.py
--transfers): ``TransferIntake.submit`` treated the HSM's ``TransportError`` as a refusal - the
create answered 400 "the HSM refused the request", the transfer ended FAILED, and its
nonce slot (taken by finalizing the auto tier before signing) stayed reserved for ever.
The next transfer took the nonce after it, so its transaction waited in the mempool
behind the gap and every later transfer of the wallet stayed ``broadcast``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from sqlalchemy import select

from chains.ethereum.encoding import checksum
from custody.treasury.ledger import RETRY_SECONDS
from custody.treasury.models import NonceSlot
from hsm_emulator.errors import KeyBlocked, TransportError
from tests.broker import test_treasury_resume as resume
from tests.broker.test_treasury_resume import WEI, Service, _finish, _funded
from tests.helpers import Approver
from tests.treasury_kit import DESK, transfer

pytestmark = pytest.mark.slow
nets, service = resume.nets, resume.service  # the fixtures, shared


def _fail_once(service: Service, exc: Exception) -> None:
    hsm = service.broker.hsm
    original = hsm.sign_now

    def down(*_a: Any, **_k: Any) -> Any:
        hsm.sign_now = original  # type: ignore[method-assign]
        raise exc

    hsm.sign_now = down  # type: ignore[method-assign]


def _slots(service: Service) -> list[tuple[int, str]]:
    with service.broker.sessions() as s:
        return sorted((int(x.nonce), x.state) for x in s.scalars(select(NonceSlot)))


def test_an_hsm_outage_defers_the_transfer(service: Service,
                                           people: dict[str, Approver]) -> None:
    w, eth, _, before = _funded(service, people)
    _fail_once(service, TransportError("the HSM is unreachable"))
    dest = checksum(os.urandom(20))
    t = transfer(service.client, w["id"], "ETH", "0.5", dest)  # small: auto-signed
    assert t["state"] == "requested" and t["signRequestId"] is None  # waits, not failed
    service.treasury.ledger.clock = lambda: time.time() + RETRY_SECONDS + 1
    done = _finish(service, t["id"])
    assert done["nonce"] == before and eth.balance(dest) == WEI // 2
    nxt = transfer(service.client, w["id"], "ETH", "0.25", checksum(os.urandom(20)))
    assert _finish(service, nxt["id"])["nonce"] == before + 1
    assert eth.pending_nonce(w["address"]) == before + 2


def test_a_refusal_at_submit_gives_the_nonce_back(service: Service,
                                                  people: dict[str, Approver]) -> None:
    w, eth, _, before = _funded(service, people)
    _fail_once(service, KeyBlocked("the key is blocked"))
    r = service.client.post("/v1/transfers", json={
        "wallet": w["id"], "asset": "ETH", "amount": "0.5",
        "destination": checksum(os.urandom(20))}, headers=DESK)
    assert r.status_code == 400, r.text
    assert ("free" in {state for _, state in _slots(service)}
            and "reserved" not in {state for _, state in _slots(service)})
    nxt = transfer(service.client, w["id"], "ETH", "0.25", checksum(os.urandom(20)))
    assert _finish(service, nxt["id"])["nonce"] == before  # the freed nonce, no gap
    assert eth.pending_nonce(w["address"]) == before + 1
