"""The approval flow inside the HSM, and every way of getting around it - all refused.

Each refusal must (1) raise the right error, (2) produce no signature, (3) leave the
request open or closed exactly as before, and (4) appear in the audit log.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import coincurve
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hsm_emulator import Action, Hsm, ManualClock
from hsm_emulator.challenge import open_challenge
from hsm_emulator.decoders import transfer_payload
from hsm_emulator.errors import (
    ApprovalRefused,
    DecodeError,
    HsmError,
    IntentMismatch,
    InvalidInput,
    KeyBlocked,
    PolicyNotMet,
    RequestClosed,
)
from hsm_emulator.flow import Approval
from tests.helpers import Approver, group, tiered_policy, token

TT = "TEST_TRANSFER"


@pytest.fixture
def treasury(hsm: Hsm, people: dict[str, Approver]) -> str:
    traders = [people["t1"], people["t2"], people["t3"]]
    hsm.create_key("treasury", "SECP256K1",
                   policy=tiered_policy(traders, [people["c1"], people["c2"]]))
    return "treasury"


def pay(amount: int, fee: int = 1, dest: str = "bob") -> bytes:
    return transfer_payload("TST", amount, dest, fee)


def approve(ch: Any, *who: Approver) -> list[Approval]:
    return [w.approve(ch.envelope) for w in who]


def last_audit(hsm: Hsm) -> dict[str, Any]:
    return hsm.audit_entries(1, 10_000)[-1].event


def refused(hsm: Hsm, exc: type[HsmError], fn: Any, *args: Any, **kw: Any) -> HsmError:
    before = len(hsm.audit_entries(1, 10_000))
    with pytest.raises(exc) as err:
        fn(*args, **kw)
    entries = hsm.audit_entries(1, 10_000)
    assert len(entries) == before + 1, "refusal was not audited"
    assert entries[-1].event["result"] == "refused"
    assert entries[-1].event["code"] == exc.code
    return err.value


def verify_ecdsa_digest(pub: bytes, digest: bytes, sig: bytes) -> bool:
    """Check a 65-byte recoverable signature independently: recover the key."""
    recovered = coincurve.PublicKey.from_signature_and_message(sig, digest, hasher=None)
    return recovered.format() == pub


# -- the happy paths --------------------------------------------------------------------


def test_tutorial_shape_general_payload(hsm: Hsm, people: dict[str, Approver]) -> None:
    """Seed 003's flow: 1-of-1 approver, UNSPECIFIED payload, SHA256_WITH_ECDSA."""
    a = people["t1"]
    hsm.create_key("TSB_TUTORIAL_1-P256", "P256", policy={"ruleUse": {"tokens": [
        token("Token1", [group("Group1", 1, [a])], timeout=3600)]}})
    payload = b"ApproveSignTaskPayload"
    ch = hsm.begin("TSB_TUTORIAL_1-P256", Action.USE, payload, "UNSPECIFIED", "SHA256_WITH_ECDSA")
    body = open_challenge(ch.approval_to_be_signed, hsm.identity_public_key())
    assert body["payloadDigest"] == hashlib.sha256(payload).hexdigest()
    assert body["keyLabel"] == "TSB_TUTORIAL_1-P256" and body["action"] == "use"
    result = hsm.execute(ch.request_id, approve(ch, a))
    pub = serialization.load_der_public_key(hsm.get_key("TSB_TUTORIAL_1-P256").public_key_spki)
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    pub.verify(result.signatures[0], payload, ec.ECDSA(hashes.SHA256()))  # raises if wrong
    assert result.approved_by == (a.spki_b64,)


def test_small_is_auto_signed(hsm: Hsm, treasury: str) -> None:
    p = pay(100)
    result = hsm.sign_now(treasury, p, TT)
    assert result.token == "small"
    pub = hsm.get_key(treasury).public_key
    assert verify_ecdsa_digest(pub, hashlib.sha256(p).digest(), result.signatures[0])


def test_medium_needs_two_traders(hsm: Hsm, treasury: str, people: dict[str, Approver]) -> None:
    refused(hsm, PolicyNotMet, hsm.sign_now, treasury, pay(101), TT)
    ch = hsm.begin(treasury, Action.USE, pay(101), TT)
    refused(hsm, PolicyNotMet, hsm.execute, ch.request_id, approve(ch, people["t1"]))
    result = hsm.execute(ch.request_id, approve(ch, people["t1"], people["t3"]))
    assert result.token == "medium" and len(result.approved_by) == 2


def test_large_waits_for_hold_and_compliance(hsm: Hsm, clock: ManualClock, treasury: str,
                                              people: dict[str, Approver]) -> None:
    ch = hsm.begin(treasury, Action.USE, pay(10**9), TT)
    full = approve(ch, people["t1"], people["t2"], people["c2"])
    refused(hsm, PolicyNotMet, hsm.execute, ch.request_id, full)  # hold not over
    clock.advance(86399)
    err = refused(hsm, PolicyNotMet, hsm.execute, ch.request_id, full)
    assert "hold ends in 1s" in err.reason
    clock.advance(1)
    refused(hsm, PolicyNotMet, hsm.execute, ch.request_id, full[:2])  # no compliance
    assert hsm.execute(ch.request_id, full).token == "large"


# -- attacks ----------------------------------------------------------------------------


def test_forged_signature(hsm: Hsm, treasury: str, people: dict[str, Approver]) -> None:
    ch = hsm.begin(treasury, Action.USE, pay(200), TT)
    t1 = people["t1"]
    forged = Approval("public_key", t1.spki_b64, people["x"].sign(ch.envelope))
    refused(hsm, ApprovalRefused, hsm.execute, ch.request_id,
            [forged, people["t2"].approve(ch.envelope)])
    garbage = Approval("public_key", t1.spki_b64, b"\x30\x06\x02\x01\x01\x02\x01\x01")
    refused(hsm, ApprovalRefused, hsm.check_approval, ch.request_id, garbage)


def test_outsider_and_wrong_group(hsm: Hsm, treasury: str, people: dict[str, Approver]) -> None:
    ch = hsm.begin(treasury, Action.USE, pay(200), TT)
    refused(hsm, ApprovalRefused, hsm.execute, ch.request_id, approve(ch, people["x"], people["t1"]))
    # compliance officers are approvers of this rule but not traders: 2 of them are not a quorum
    refused(hsm, PolicyNotMet, hsm.execute, ch.request_id, approve(ch, people["c1"], people["c2"]))


def test_same_approver_twice_counts_once(hsm: Hsm, treasury: str,
                                         people: dict[str, Approver]) -> None:
    ch = hsm.begin(treasury, Action.USE, pay(200), TT)
    t1 = people["t1"]
    refused(hsm, PolicyNotMet, hsm.execute, ch.request_id, [t1.approve(ch.envelope)] * 2)


def test_replayed_from_another_request(hsm: Hsm, treasury: str,
                                       people: dict[str, Approver]) -> None:
    small_ch = hsm.begin(treasury, Action.USE, pay(200), TT)
    big_ch = hsm.begin(treasury, Action.USE, pay(4000, dest="mallory"), TT)
    stolen = approve(small_ch, people["t1"], people["t2"])
    refused(hsm, ApprovalRefused, hsm.execute, big_ch.request_id, stolen)
    first = hsm.execute(small_ch.request_id, stolen)
    refused(hsm, RequestClosed, hsm.execute, small_ch.request_id, stolen)  # never twice
    assert hsm.request_result(small_ch.request_id) == first  # but never lost either
    with pytest.raises(RequestClosed):
        hsm.request_result(big_ch.request_id)


def test_replayed_from_another_key(hsm: Hsm, treasury: str, people: dict[str, Approver]) -> None:
    traders = [people["t1"], people["t2"], people["t3"]]
    hsm.create_key("other", "SECP256K1", policy=tiered_policy(traders, [people["c1"]]))
    other = hsm.begin("other", Action.USE, pay(200), TT)
    mine = hsm.begin(treasury, Action.USE, pay(200), TT)
    refused(hsm, ApprovalRefused, hsm.execute, mine.request_id,
            approve(other, people["t1"], people["t2"]))


def test_swapped_payload_after_approval(hsm: Hsm, treasury: str,
                                        people: dict[str, Approver]) -> None:
    ch = hsm.begin(treasury, Action.USE, pay(200, fee=5), TT, fee_cap=10)
    ok = approve(ch, people["t1"], people["t2"])
    for bad in (pay(4000, fee=5), pay(200, fee=5, dest="mallory"), pay(200, fee=11)):
        refused(hsm, IntentMismatch, hsm.execute, ch.request_id, ok, payload=bad)
    bumped = pay(200, fee=9)  # a fee bump within the approved cap keeps the approvals
    result = hsm.execute(ch.request_id, ok, payload=bumped)
    pub = hsm.get_key(treasury).public_key
    assert verify_ecdsa_digest(pub, hashlib.sha256(bumped).digest(), result.signatures[0])


def test_timeout(hsm: Hsm, clock: ManualClock, treasury: str, people: dict[str, Approver]) -> None:
    ch = hsm.begin(treasury, Action.USE, pay(200), TT)
    clock.advance(3601)
    refused(hsm, PolicyNotMet, hsm.execute, ch.request_id, approve(ch, people["t1"], people["t2"]))


def test_initiator_cannot_approve(hsm: Hsm, treasury: str, people: dict[str, Approver]) -> None:
    t1 = people["t1"]
    ch = hsm.begin(treasury, Action.USE, pay(200), TT, initiator=t1.spki_b64)
    refused(hsm, ApprovalRefused, hsm.execute, ch.request_id, approve(ch, t1, people["t2"]))


def test_initiator_named_in_the_policy_cannot_approve(hsm: Hsm, treasury: str,
                                                     people: dict[str, Approver]) -> None:
    """A desk user (JWT subject "trader-1") who is also an approver (policy name
    "trader-1") cannot approve the request they made, whatever key they use."""
    ch = hsm.begin(treasury, Action.USE, pay(200), TT, initiator=people["t1"].name)
    refused(hsm, ApprovalRefused, hsm.execute, ch.request_id,
            approve(ch, people["t1"], people["t2"]))
    assert hsm.execute(ch.request_id, approve(ch, people["t2"], people["t3"])).token == "medium"


def test_undecodable_payload_cannot_use_amount_tiers(hsm: Hsm, treasury: str) -> None:
    refused(hsm, PolicyNotMet, hsm.sign_now, treasury, b"\x00" * 32, "UNSPECIFIED",
            "SHA256_WITH_ECDSA")
    refused(hsm, DecodeError, hsm.sign_now, treasury, b"{not json", TT)


def test_structuring_is_stopped_by_velocity(hsm: Hsm, people: dict[str, Approver]) -> None:
    hsm.create_key("v", "SECP256K1", policy={"ruleUse": {"tokens": [token("auto", [], conditions={
        "amounts": [{"asset": "TST", "max": 100}], "maxFee": [{"asset": "TST", "max": 0}],
        "velocity": [{"asset": "TST", "windowSeconds": 86400, "max": 300}]})]}})
    for i in range(3):
        hsm.sign_now("v", transfer_payload("TST", 100, "bob", nonce=i), TT)
    refused(hsm, PolicyNotMet, hsm.sign_now, "v", transfer_payload("TST", 1, "bob", nonce=9), TT)


def test_block_unblock_modify_need_their_rules(hsm: Hsm, treasury: str,
                                               people: dict[str, Approver]) -> None:
    t1, t2 = people["t1"], people["t2"]
    block = hsm.begin(treasury, Action.BLOCK)
    refused(hsm, PolicyNotMet, hsm.execute, block.request_id)
    hsm.execute(block.request_id, approve(block, t1))
    assert hsm.get_key(treasury).blocked
    refused(hsm, KeyBlocked, hsm.sign_now, treasury, pay(1), TT)
    refused(hsm, KeyBlocked, hsm.begin, treasury, Action.USE, pay(1), TT)
    unblock = hsm.begin(treasury, Action.UNBLOCK)
    refused(hsm, PolicyNotMet, hsm.execute, unblock.request_id, approve(unblock, t1))
    hsm.execute(unblock.request_id, approve(unblock, t1, t2))
    assert hsm.sign_now(treasury, pay(1), TT).token == "small"

    loose = {"ruleUse": {"tokens": [token("anything", [])]}}
    modify = hsm.begin(treasury, Action.MODIFY, new_policy=loose)
    refused(hsm, PolicyNotMet, hsm.execute, modify.request_id, approve(modify, people["x"])[:0])
    pending = hsm.begin(treasury, Action.USE, pay(200), TT)
    hsm.execute(modify.request_id, approve(modify, t1, t2))
    assert hsm.get_key(treasury).policy_digest != pending.body["policyDigest"]
    # a request made under the old policy cannot be released under the new one
    refused(hsm, RequestClosed, hsm.execute, pending.request_id)


def test_a_policy_change_closes_open_requests_on_every_call(
        hsm: Hsm, treasury: str, people: dict[str, Approver]) -> None:
    """Approvals gathered under the old policy are not gathered on: every call on such a
    request answers that it is closed, and why (the broker mirrors the reason)."""
    t1, t2 = people["t1"], people["t2"]
    pending = hsm.begin(treasury, Action.USE, pay(200), TT)
    stricter = json.loads(json.dumps(hsm.get_key(treasury).policy))
    stricter.pop("keyStatus", None)
    stricter["ruleUse"]["tokens"][1]["timeout"] = 7200
    modify = hsm.begin(treasury, Action.MODIFY, new_policy=stricter)
    hsm.execute(modify.request_id, approve(modify, t1, t2))
    exc = refused(hsm, RequestClosed, hsm.check_approval, pending.request_id,
                  approve(pending, t1)[0])  # audited calls: refused and logged
    assert "policy changed" in exc.reason
    exc = refused(hsm, RequestClosed, hsm.execute, pending.request_id,
                  approve(pending, t1, t2))
    assert "policy changed" in exc.reason
    for read in (lambda: hsm.request_status(pending.request_id, approve(pending, t1)),
                 lambda: hsm.request_result(pending.request_id)):  # reads: refused too
        with pytest.raises(RequestClosed, match="policy changed"):
            read()
    hsm.cancel(pending.request_id, "the key's policy changed")  # closing it is allowed
    with pytest.raises(RequestClosed, match=r"is cancelled: the key's policy changed$"):
        hsm.request_result(pending.request_id)
    assert hsm.request_result(modify.request_id).action is Action.MODIFY  # executed: kept


def test_no_rule_means_no_action(hsm: Hsm) -> None:
    hsm.create_key("bare", "ED25519")
    refused(hsm, PolicyNotMet, hsm.sign_now, "bare", b"hello", "UNSPECIFIED", "EDDSA")
    hsm.create_key("open", "ED25519", policy={"openActions": ["use"]})
    assert len(hsm.sign_now("open", b"hello", "UNSPECIFIED", "EDDSA").signatures[0]) == 64


def test_cancelled_request_never_signs(hsm: Hsm, treasury: str,
                                       people: dict[str, Approver]) -> None:
    ch = hsm.begin(treasury, Action.USE, pay(200), TT)
    hsm.cancel(ch.request_id, "desk withdrew it")
    refused(hsm, RequestClosed, hsm.execute, ch.request_id, approve(ch, people["t1"], people["t2"]))


def test_altered_challenge_is_detected_by_clients(hsm: Hsm, treasury: str) -> None:
    ch = hsm.begin(treasury, Action.USE, pay(200), TT)
    doc = json.loads(ch.envelope)
    doc["body"]["intent"]["transfers"][0]["destination"] = "mallory"
    altered = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(ApprovalRefused):
        open_challenge(altered, hsm.identity_public_key())
    with pytest.raises(ApprovalRefused):
        open_challenge(base64.b64encode(ch.envelope).decode() + "!", hsm.identity_public_key())


def test_dry_run_says_what_is_missing(hsm: Hsm, clock: ManualClock, treasury: str,
                                      people: dict[str, Approver]) -> None:
    before = len(hsm.audit_entries())
    ev = hsm.dry_run(treasury, pay(10**9), TT, approvers=[people["t1"].spki_b64])
    assert not ev.released and any("hold ends in" in m for m in ev.missing())
    ev = hsm.dry_run(treasury, pay(10**9), TT, elapsed=86400, approvers=[
        people["t1"].spki_b64, people["t2"].spki_b64, people["c1"].spki_b64])
    assert ev.released_by == "large"
    assert len(hsm.audit_entries()) == before  # a dry run changes nothing


def test_bad_inputs_change_nothing(hsm: Hsm, treasury: str) -> None:
    before = hsm.list_keys()
    for args in [("x" * 200, "SECP256K1"), ("ok", "DSA"), ("bad label!", "RSA")]:
        with pytest.raises(InvalidInput):
            hsm.create_key(*args)
    with pytest.raises(HsmError):
        hsm.create_key("p", "SECP256K1", policy={"ruleUse": "yes"})
    with pytest.raises(HsmError):
        hsm.create_key("r", "RSA", key_size=1024)
    assert hsm.list_keys() == before
    with pytest.raises(HsmError):
        hsm.begin(treasury, "launch")
    with pytest.raises(HsmError):
        hsm.begin(treasury, Action.USE, b"x", "UNSPECIFIED", "MD5_WITH_RSA")
    with pytest.raises(HsmError):
        hsm.execute("../../etc/passwd")
