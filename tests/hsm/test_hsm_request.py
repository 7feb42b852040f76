"""The HSM's typed request record: symmetric with the stored document, whose field names
stores written before the type existed already use."""

from __future__ import annotations

from hsm_emulator import Action, Hsm
from hsm_emulator.decoders import transfer_payload
from hsm_emulator.request import HsmRequest, RequestStatus
from tests.helpers import Approver, tiered_policy


def test_requests_round_trip_through_the_store(hsm: Hsm, people: dict[str, Approver]) -> None:
    hsm.create_key("k", "SECP256K1", policy=tiered_policy(
        [people["t1"], people["t2"], people["t3"]], [people["c1"]]))
    ch = hsm.begin("k", Action.USE, transfer_payload("TST", 500, "d", 1), "TEST_TRANSFER",
                   fee_cap=5, initiator="desk")
    stored = hsm._store.get("request", ch.request_id)
    req = HsmRequest.from_json(stored)
    assert req.to_json() == stored
    assert req.status is RequestStatus.OPEN and req.fee_cap == 5 and req.intent is not None
    assert req.challenge == ch.envelope and req.initiator == "desk"
    hsm.execute(ch.request_id, [people[n].approve(ch.envelope) for n in ("t1", "t2")])
    done = HsmRequest.from_json(hsm._store.get("request", ch.request_id))
    assert done.status is RequestStatus.EXECUTED and done.result is not None
    assert done.to_json() == hsm._store.get("request", ch.request_id)
    assert done.executed_at == done.result.executed_at
    assert done.cancelled().status is RequestStatus.CANCELLED
    kept = hsm.sign_now("k", transfer_payload("TST", 5, "d", 1), "TEST_TRANSFER",
                        request_id="kept-request-1")
    auto = HsmRequest.from_json(hsm._store.get("request", "kept-request-1"))
    assert auto.result == kept and auto.challenge == b"" and not auto.initiator_proven


def test_a_cancellation_keeps_its_reason(hsm: Hsm, people: dict[str, Approver]) -> None:
    """Stored only when given, so documents written before the field read unchanged."""
    hsm.create_key("k", "SECP256K1", policy=tiered_policy(
        [people["t1"], people["t2"], people["t3"]], [people["c1"]]))
    ch = hsm.begin("k", Action.USE, transfer_payload("TST", 500, "d", 1), "TEST_TRANSFER")
    open_doc = hsm._store.get("request", ch.request_id)
    assert open_doc is not None and "reason" not in open_doc
    hsm.cancel(ch.request_id, "desk withdrew it")
    stored = hsm._store.get("request", ch.request_id)
    req = HsmRequest.from_json(stored)
    assert req.reason == "desk withdrew it" and req.to_json() == stored
    assert HsmRequest.from_json(open_doc).reason == ""
