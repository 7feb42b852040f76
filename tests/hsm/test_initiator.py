"""The proven initiator: a key whose policy names ``initiators`` takes the initiator from
the desk's own signature (an initiation), never from the broker's word.

HSM tests run against the in-process HSM and the HSM as its own process (as in
``test_conformance.py``); API tests go through ``POST /v1/sign`` with a real TestClient.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from approvals_app.main import create_app
from approvals_app.settings import Settings
from custody.approver_keys import ApproverKey, save_key, save_pin
from custody.approver_verify import verify_task
from custody.explain import explain
from custody.initiator import initiation, sign_initiation
from hsm_emulator import Action, Hsm, Passphrase
from hsm_emulator.audit import verify_log
from hsm_emulator.challenge import open_challenge
from hsm_emulator.client import HsmClient, local_client
from hsm_emulator.errors import (
    ApprovalRefused,
    HsmError,
    InvalidInput,
    PolicyInvalid,
    RequestExists,
)
from hsm_emulator.flow import Approval
from hsm_emulator.initiation import hsm_id, initiation_message, payload_digest
from hsm_emulator.policy import parse_policy
from hsm_emulator.remote import RemoteHsmClient, serve
from tests.api.test_api_flows import answer, status, tasks
from tests.api.test_api_tutorial import SECRET, bearer
from tests.conftest import SO, TEST_PASSPHRASE
from tests.helpers import Approver, group, tiered_policy, token
from tests.hsm.test_conformance import PASSPHRASE, HsmProcess, TimeControl, pay, refused
from tests.webauthn_soft import SoftPasskey

TT = "TEST_TRANSFER"


@pytest.fixture
def desk() -> Approver:
    """A desk's initiation key: an initiator, in no group."""
    return Approver.new("desk-1", "P256")


@pytest.fixture(params=["local", "remote"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HsmClient]:
    time_control = TimeControl()
    if request.param == "local":
        hsm = Hsm.open(tmp_path / "hsm.sqlite", Passphrase(PASSPHRASE, scrypt_n=2**10),
                       so_passphrase=SO, clock=time_control.clock)
        yield local_client(hsm)
        hsm.close()
        return
    sockdir = Path(tempfile.mkdtemp(prefix="ska-", dir="/tmp" if os.path.isdir("/tmp")
                                    else None))
    server = HsmProcess.start(tmp_path, sockdir, time_control)
    try:
        remote = server.connect()
        yield remote
        remote.close()
        assert server.proc.poll() is None, "the HSM process died during the test"
    finally:
        server.stop()
        shutil.rmtree(sockdir, ignore_errors=True)


def initiated_policy(people: dict[str, Approver], *initiators: dict[str, Any]
                     ) -> dict[str, Any]:
    policy = tiered_policy([people["t1"], people["t2"], people["t3"]],
                           [people["c1"], people["c2"]])
    return {**policy, "initiators": list(initiators)}


@pytest.fixture
def treasury(client: HsmClient, people: dict[str, Approver], desk: Approver) -> str:
    """Traders t1-t3 approve; the desk and trader t1 may initiate."""
    client.create_key("treasury", "SECP256K1",
                      policy=initiated_policy(people, desk.entry(), people["t1"].entry()))
    return "treasury"


def initiate(client: HsmClient, who: Approver, label: str, payload: bytes, request_id: str,
             *, action: str = "use", payload_type: str = TT,
             new_policy: dict[str, Any] | None = None, hsm: str | None = None) -> Approval:
    message = initiation_message(
        hsm_id=hsm or hsm_id(client.identity_public_key()), key_label=label, action=action,
        payload_type=payload_type, payload_digest=payload_digest(payload, new_policy),
        request_id=request_id)
    return Approval("public_key", who.spki_b64, who.sign(message))


def approve(envelope: bytes, *who: Approver) -> list[Approval]:
    return [w.approve(envelope) for w in who]


# -- the HSM ------------------------------------------------------------------------------


def test_a_valid_initiation_names_the_initiator(client: HsmClient, treasury: str,
                                                people: dict[str, Approver],
                                                desk: Approver) -> None:
    rid = "req-valid-0001"
    ch = client.begin(treasury, Action.USE, pay(1000), TT, initiator="broker says bob",
                      request_id=rid, initiation=initiate(client, desk, treasury, pay(1000),
                                                          rid))
    body = open_challenge(ch.approval_to_be_signed, client.identity_public_key())
    identity = hashlib.sha256(base64.b64decode(desk.spki_b64)).hexdigest()
    assert ch.request_id == rid and body["initiator"] == "key:" + identity
    assert body["initiatorProven"] is True and body["initiatorName"] == "desk-1"
    result = client.execute(rid, approve(ch.envelope, people["t1"], people["t2"]))
    assert result.token == "medium"
    events = [e.event for e in client.audit_entries(1, 10_000)]
    begun = [e for e in events if e.get("op") == "request.begin" and e.get("requestId") == rid]
    executed = [e for e in events if e.get("op") == "request.execute"
                and e.get("requestId") == rid]
    assert begun[-1]["initiator"] == executed[-1]["initiator"] == "key:" + identity
    assert begun[-1]["initiatorName"] == "desk-1" and begun[-1]["result"] == "ok"
    assert verify_log(client.audit_entries(1, 10_000), [client.audit_head()],
                      client.identity_public_key()).ok


def test_no_initiation_is_refused(client: HsmClient, treasury: str, desk: Approver) -> None:
    err = refused(ApprovalRefused, client.begin, treasury, Action.USE, pay(1000), TT,
                  initiator="trader-2", request_id="req-none-0001")
    assert "initiation" in err.reason
    refused(ApprovalRefused, client.sign_now, treasury, pay(50), TT)  # auto tier too
    refused(ApprovalRefused, client.sign_now, treasury, pay(50), TT, request_id="req-none-02")
    refused(ApprovalRefused, client.begin, treasury, Action.MODIFY,  # every action but block
            new_policy={"openActions": ["use"]})
    # the request id the initiation signs must be the request's: none given, none made
    good = initiate(client, desk, treasury, pay(1000), "req-none-0003")
    refused(InvalidInput, client.begin, treasury, Action.USE, pay(1000), TT, initiation=good)
    assert client.begin(treasury, Action.USE, pay(1000), TT, request_id="req-none-0003",
                        initiation=good).request_id == "req-none-0003"


def test_forged_and_foreign_initiations_are_refused(client: HsmClient, treasury: str,
                                                    people: dict[str, Approver],
                                                    desk: Approver) -> None:
    rid, p = "req-forged-01", pay(1000)
    message = initiation_message(
        hsm_id=hsm_id(client.identity_public_key()), key_label=treasury, action="use",
        payload_type=TT, payload_digest=payload_digest(p), request_id=rid)
    forged = Approval("public_key", desk.spki_b64, people["x"].sign(message))
    err = refused(ApprovalRefused, client.begin, treasury, Action.USE, p, TT,
                  request_id=rid, initiation=forged)
    assert "does not verify" in err.reason
    garbage = Approval("public_key", desk.spki_b64, b"\x30\x06\x02\x01\x01\x02\x01\x01")
    refused(ApprovalRefused, client.begin, treasury, Action.USE, p, TT, request_id=rid,
            initiation=garbage)
    refused(ApprovalRefused, client.begin, treasury, Action.USE, p, TT, request_id=rid,
            initiation=Approval("public_key", "not base64 !", b"sig"))
    md5 = Approval("public_key", desk.spki_b64, desk.sign(message), "MD5")
    refused(ApprovalRefused, client.begin, treasury, Action.USE, p, TT, request_id=rid,
            initiation=md5)
    # a key the policy does not name as initiator: an outsider, and an approver
    for who in (people["x"], people["t2"]):
        err = refused(ApprovalRefused, client.begin, treasury, Action.USE, p, TT,
                      request_id=rid, initiation=initiate(client, who, treasury, p, rid))
        assert "not an initiator" in err.reason
    # nothing was recorded under the id: the real initiation still works
    assert client.begin(treasury, Action.USE, p, TT, request_id=rid,
                        initiation=initiate(client, desk, treasury, p, rid)).request_id == rid


def test_an_initiation_is_good_for_its_own_request_only(client: HsmClient, treasury: str,
                                                        people: dict[str, Approver],
                                                        desk: Approver) -> None:
    client.create_key("treasury-2", "SECP256K1",
                      policy=initiated_policy(people, desk.entry()))
    rid = "req-replay-01"
    signed = initiate(client, desk, treasury, pay(1000), rid)

    def refuses(*args: Any, **kw: Any) -> None:
        err = refused(ApprovalRefused, client.begin, *args, initiation=signed, **kw)
        assert "does not verify" in err.reason

    refuses(treasury, Action.USE, pay(1001), TT, request_id=rid)  # another payload
    refuses("treasury-2", Action.USE, pay(1000), TT, request_id=rid)  # another key
    refuses(treasury, Action.USE, pay(1000), TT, request_id="req-replay-02")  # another id
    refuses(treasury, Action.BLOCK, request_id=rid)  # another action
    other_hsm = initiate(client, desk, treasury, pay(1000), rid, hsm="0" * 16)
    refused(ApprovalRefused, client.begin, treasury, Action.USE, pay(1000), TT,
            request_id=rid, initiation=other_hsm)
    ch = client.begin(treasury, Action.USE, pay(1000), TT, request_id=rid, initiation=signed)
    # once used, the id is spent: the same initiation makes no second request
    refused(RequestExists, client.begin, treasury, Action.USE, pay(1000), TT,
            request_id=rid, initiation=signed)
    refused(RequestExists, client.sign_now, treasury, pay(1000), TT, request_id=rid,
            initiation=signed)
    assert client.request_challenge(rid).envelope == ch.envelope


def test_the_proven_initiator_cannot_approve(client: HsmClient, treasury: str,
                                             people: dict[str, Approver]) -> None:
    t1 = people["t1"]
    rid = "req-sod-00001"
    # the broker names nobody (or someone else): the HSM knows better
    ch = client.begin(treasury, Action.USE, pay(1000), TT, initiator="", request_id=rid,
                      initiation=initiate(client, t1, treasury, pay(1000), rid))
    assert ch.body["initiatorName"] == "trader-1"
    err = refused(ApprovalRefused, client.check_approval, rid, t1.approve(ch.envelope))
    assert "initiator of a request" in err.reason
    refused(ApprovalRefused, client.execute, rid, approve(ch.envelope, t1, people["t2"]))
    refused(ApprovalRefused, client.request_status, rid, [t1.approve(ch.envelope)])
    assert client.execute(rid, approve(ch.envelope, people["t2"], people["t3"])).token == (
        "medium")


def test_a_passkey_binding_of_the_initiator_cannot_approve(client: HsmClient,
                                                           people: dict[str, Approver]
                                                           ) -> None:
    """The initiator's key listed as a passkey approver (another encoding and binding
    of the same key): still the same person."""
    passkey = SoftPasskey()
    as_key = Approver("pk-person", passkey.key)
    traders = group("traders", 2, [people["t2"], people["t3"]])
    traders["approvals"].append(passkey.entry("pk-person-phone"))
    policy = {"ruleUse": {"tokens": [token("two", [traders])]},
              "initiators": [as_key.entry()]}
    client.create_key("pk", "P256", policy=policy)
    rid = "req-passkey-1"
    msg = b"hello"
    ch = client.begin("pk", Action.USE, msg, "UNSPECIFIED", "SHA256_WITH_ECDSA",
                      request_id=rid, initiation=initiate(client, as_key, "pk", msg, rid,
                                                          payload_type="UNSPECIFIED"))
    err = refused(ApprovalRefused, client.check_approval, rid, passkey.approve(ch.envelope))
    assert "initiator of a request" in err.reason
    refused(ApprovalRefused, client.execute, rid,
            [passkey.approve(ch.envelope), people["t2"].approve(ch.envelope)])
    assert client.execute(rid, approve(ch.envelope, people["t2"], people["t3"])).token == "two"
    # the other way round: a passkey initiates (a WebAuthn assertion over the initiation),
    # and its bare key, listed as an approver, cannot approve
    traders = group("traders", 2, [people["t2"], people["t3"], as_key])
    client.create_key("pk2", "P256", policy={"ruleUse": {"tokens": [token("two", [traders])]},
                                             "initiators": [passkey.entry("phone")]})
    rid = "req-passkey-2"
    message = initiation_message(
        hsm_id=hsm_id(client.identity_public_key()), key_label="pk2", action="use",
        payload_type="UNSPECIFIED", payload_digest=payload_digest(msg), request_id=rid)
    ch = client.begin("pk2", Action.USE, msg, "UNSPECIFIED", "SHA256_WITH_ECDSA",
                      request_id=rid, initiation=Approval("webauthn", passkey.value,
                                                          passkey.sign(message)))
    assert ch.body["initiatorName"] == "phone"
    err = refused(ApprovalRefused, client.check_approval, rid, as_key.approve(ch.envelope))
    assert "initiator of a request" in err.reason


def test_auto_tier_batches_and_keys_without_initiators(client: HsmClient, treasury: str,
                                                       people: dict[str, Approver],
                                                       desk: Approver) -> None:
    rid = "req-auto-0001"
    result = client.sign_now(treasury, pay(50), TT, request_id=rid,
                             initiation=initiate(client, desk, treasury, pay(50), rid))
    assert result.token == "small" and client.request_result(rid) == result
    err = refused(InvalidInput, client.sign_batch, treasury, [pay(10), pay(20)], TT)
    assert "one by one" in err.reason
    # a key whose policy names no initiators takes no initiation
    client.create_key("plain", "SECP256K1", policy=tiered_policy(
        [people["t1"], people["t2"], people["t3"]], [people["c1"]]))
    stray = initiate(client, desk, "plain", pay(50), "req-stray-01")
    refused(InvalidInput, client.sign_now, "plain", pay(50), TT, request_id="req-stray-01",
            initiation=stray)
    refused(InvalidInput, client.begin, "plain", Action.USE, pay(1000), TT,
            request_id="req-stray-01", initiation=stray)
    assert client.sign_batch("plain", [pay(10), pay(20)], TT)[1].token == "small"


def test_modify_and_block_are_initiated(client: HsmClient, treasury: str,
                                        people: dict[str, Approver], desk: Approver) -> None:
    new_policy = tiered_policy([people["t1"], people["t2"], people["t3"]], [people["c1"]])
    rid = "req-modify-01"
    wrong = initiate(client, desk, treasury, b"", rid, action="modify",
                     payload_type="UNSPECIFIED", new_policy={**new_policy, "openActions": []})
    refused(ApprovalRefused, client.begin, treasury, Action.MODIFY, new_policy=new_policy,
            request_id=rid, initiation=wrong)
    ch = client.begin(treasury, Action.MODIFY, new_policy=new_policy, request_id=rid,
                      initiation=initiate(client, desk, treasury, b"", rid, action="modify",
                                          payload_type="UNSPECIFIED", new_policy=new_policy))
    client.execute(rid, approve(ch.envelope, people["t2"], people["t3"]))
    assert "initiators" not in client.get_key(treasury).policy
    assert client.sign_now(treasury, pay(50), TT).token == "small"  # no initiation now
    client.create_key("blockable", "P256", policy=initiated_policy(people, desk.entry()))
    rid = "req-block-001"
    ch = client.begin("blockable", Action.BLOCK, request_id=rid, initiation=initiate(
        client, desk, "blockable", b"", rid, action="block", payload_type="UNSPECIFIED"))
    client.execute(rid, approve(ch.envelope, people["t1"]))
    # an emergency stop needs no desk signature: blocking only denies service
    client.create_key("stoppable", "P256", policy=initiated_policy(people, desk.entry()))
    ch = client.begin("stoppable", Action.BLOCK)
    client.execute(ch.request_id, approve(ch.envelope, people["t1"]))
    assert client.get_key("stoppable").blocked
    refused(ApprovalRefused, client.begin, "stoppable", Action.UNBLOCK)


def test_policy_initiators_parse(people: dict[str, Approver], desk: Approver) -> None:
    base = tiered_policy([people["t1"], people["t2"], people["t3"]], [people["c1"]])
    policy = parse_policy({**base, "initiators": [desk.entry(), people["t1"].entry()]})
    assert [a.name for a in policy.initiators] == ["desk-1", "trader-1"]
    assert policy.digest != parse_policy(base).digest  # part of the document
    assert policy.with_blocked(True).initiators == policy.initiators
    assert parse_policy(base).initiators == ()
    assert any(line.startswith("Initiators: desk-1, trader-1 ") for line in explain(
        {**base, "initiators": [desk.entry(), people["t1"].entry()]}))
    passkey = SoftPasskey()
    spki = base64.b64encode(passkey.spki).decode()
    bad: list[Any] = [
        [], "desk", [desk.entry(), desk.entry()], [{"type": "x509", "value": desk.spki_b64}],
        [{"type": "public_key", "value": "not base64 !"}],
        [{**desk.entry(), "quorum": 1}],
        # one key once, whatever its encoding or binding
        [passkey.entry("phone"), {"type": "public_key", "value": spki}],
    ]
    for initiators in bad:
        with pytest.raises(PolicyInvalid) as err:
            parse_policy({**base, "initiators": initiators})
        assert err.value.field.startswith("policy.initiators"), err.value


# -- the API -------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "remote-hsm"])
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    hsm = Hsm.open(tmp_path / "hsm.sqlite", TEST_PASSPHRASE, so_passphrase=SO)
    hsm_client: HsmClient = hsm
    stop = threading.Event()
    if request.param == "remote-hsm":
        ready, secret = threading.Event(), os.urandom(32)
        address = f"unix:{tmp_path / 'hsm.sock'}"
        threading.Thread(target=serve, args=(hsm, address, secret),
                         kwargs={"ready": ready, "stop": stop}, daemon=True).start()
        assert ready.wait(10)
        hsm_client = RemoteHsmClient(address, secret)
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'broker.sqlite'}",
                        jwt_secret=SECRET)
    with TestClient(create_app(settings, hsm_client)) as test_client:
        yield test_client
    stop.set()
    hsm.close()


@pytest.fixture
def api_treasury(api: TestClient, people: dict[str, Approver], desk: Approver) -> str:
    policy = tiered_policy([people["t1"], people["t2"], people["t3"]], [people["c1"]], hold=2,
                           timeout=600)
    policy["initiators"] = [desk.entry(), people["t1"].entry()]
    r = api.post("/v1/key", json={"label": "treasury", "algorithm": "EC",
                                  "curveOid": "1.3.132.0.10", "policy": policy},
                 headers=bearer("key_admin"))
    assert r.status_code == 201, r.text
    return "treasury"


def sign_body(amount: int, init: dict[str, str] | None = None, nonce: int = 0
              ) -> dict[str, Any]:
    payload = base64.b64encode(pay(amount, nonce=nonce)).decode()
    body: dict[str, Any] = {"signRequest": {"payload": payload, "payloadType": TT,
                                            "signKeyName": "treasury"}}
    if init is not None:
        body["initiation"] = init
    return body


def test_api_hsm_id(api: TestClient) -> None:
    doc = api.get("/v1/hsm").json()
    assert doc["hsmId"] == hsm_id(base64.b64decode(doc["identityPublicKey"]))


def test_api_sign_with_a_proven_initiator(api: TestClient, api_treasury: str,
                                          people: dict[str, Approver], desk: Approver) -> None:
    hsm = api.get("/v1/hsm").json()
    hsm_der = base64.b64decode(hsm["identityPublicKey"])
    desk_key, t1_key = ApproverKey(desk.private), ApproverKey(people["t1"].private)
    # no initiation: refused, nothing recorded
    r = api.post("/v1/sign", json=sign_body(1000), headers=bearer("business"))
    assert r.status_code == 403 and r.json()["code"] == "hsm.approval_refused", r.text
    assert "initiation" in r.json()["detail"]
    # a forged one (the outsider signs for the desk's key)
    forged = initiation(ApproverKey(people["x"].private), hsm_id=hsm["hsmId"],
                        label="treasury", payload=pay(1000), payload_type=TT)
    forged["credential"] = desk.spki_b64
    r = api.post("/v1/sign", json=sign_body(1000, forged), headers=bearer("business"))
    assert r.status_code == 403 and "does not verify" in r.json()["detail"], r.text

    # trader-1 initiates; the business app calling the API is someone else entirely
    init = initiation(t1_key, hsm_id=hsm["hsmId"], label="treasury", payload=pay(1000),
                      payload_type=TT)
    r = api.post("/v1/sign", json=sign_body(1000, init), headers=bearer("business"))
    assert r.status_code == 201, r.text
    rid = r.json()["signRequestId"]
    assert rid == init["requestId"] and status(api, rid)["status"] == "PENDING"
    # a retry with the same initiation answers the first request
    again = api.post("/v1/sign", json=sign_body(1000, init), headers=bearer("business"))
    assert again.status_code == 201 and again.json()["signRequestId"] == rid
    # its requestId for another payload: a conflict, never the first request's answer
    other = initiation(t1_key, hsm_id=hsm["hsmId"], label="treasury", payload=pay(1001),
                       payload_type=TT, request_id=rid)
    r = api.post("/v1/sign", json=sign_body(1001, other), headers=bearer("business"))
    assert r.status_code == 409, r.text
    # one ticket per request: not with an Idempotency-Key too
    r = api.post("/v1/sign", json=sign_body(1000, init),
                 headers={**bearer("business"), "Idempotency-Key": "k-1"})
    assert r.status_code == 400 and "Idempotency-Key" in r.json()["detail"], r.text

    # approvers see who asked, proven; trader-1 may not approve its own request
    task = next(t for t in tasks(api, people["t1"]) if t["id"] == rid)
    verified = verify_task(task, hsm_der)
    assert verified.body["initiatorProven"] is True
    assert ("initiator", f"trader-1 (key:{t1_key.fingerprint}), proven by their signature"
            ) in verified.intent_lines()
    r = answer(api, people["t1"], task)
    assert r.status_code == 403 and "initiator" in r.json()["detail"], r.text
    assert answer(api, people["t2"], task).json()["status"] == "PENDING"
    assert answer(api, people["t3"], task).json()["status"] == "EXECUTED"

    # the auto tier, initiated: signed at once; without an initiation: refused
    small = initiation(desk_key, hsm_id=hsm["hsmId"], label="treasury", payload=pay(50),
                       payload_type=TT)
    r = api.post("/v1/sign", json=sign_body(50, small), headers=bearer("business"))
    assert r.status_code == 201 and status(api, small["requestId"])["status"] == "EXECUTED"
    for nonce in (1, 2):  # the batching path is never taken for this key
        r = api.post("/v1/sign", json=sign_body(50, nonce=nonce), headers=bearer("business"))
        assert r.status_code == 403, r.text


def test_api_modify_with_an_initiation_and_the_key_file_helper(
        api: TestClient, api_treasury: str, people: dict[str, Approver], desk: Approver,
        tmp_path: Path) -> None:
    key_file, passphrase = tmp_path / "desk.pem", "desk passphrase long enough"
    save_key(key_file, ApproverKey(desk.private), passphrase)
    save_pin(key_file, base64.b64decode(api.get("/v1/hsm").json()["identityPublicKey"]),
             "test")
    new_policy = tiered_policy([people["t1"], people["t2"], people["t3"]], [people["c1"]])
    r = api.post("/v1/modify", json={"label": "treasury", "policy": new_policy},
                 headers=bearer("key_admin"))
    assert r.status_code == 403, r.text  # initiated keys: every action
    init = sign_initiation(key_file, passphrase, label="treasury", action="modify",
                           new_policy=new_policy)
    r = api.post("/v1/modify", json={"label": "treasury", "policy": new_policy,
                                     "initiation": init}, headers=bearer("key_admin"))
    assert r.status_code == 201 and r.json()["requestId"] == init["requestId"], r.text
    task = next(t for t in tasks(api, people["t2"]) if t["id"] == init["requestId"])
    assert json.loads(base64.b64decode(task["approvalToBeSigned"]))["body"][
        "initiatorName"] == "desk-1"
    answer(api, people["t2"], task)
    assert answer(api, people["t3"], task).json()["status"] == "EXECUTED"
    r = api.post("/v1/sign", json=sign_body(50), headers=bearer("business"))
    assert r.status_code == 201 and status(api, r.json()["signRequestId"])["status"] == (
        "EXECUTED")


def test_remote_initiation_argument_is_checked(tmp_path: Path) -> None:
    """The socket protocol refuses a malformed initiation before the HSM sees it."""
    hsm = Hsm.open(tmp_path / "hsm.sqlite", TEST_PASSPHRASE, so_passphrase=SO)
    ready, stop, secret = threading.Event(), threading.Event(), os.urandom(32)
    address = f"unix:{tmp_path / 'hsm.sock'}"
    threading.Thread(target=serve, args=(hsm, address, secret),
                     kwargs={"ready": ready, "stop": stop}, daemon=True).start()
    assert ready.wait(10)
    remote = RemoteHsmClient(address, secret)
    try:
        with pytest.raises(InvalidInput):
            remote._call("sign_now", {"label": "k", "payload": "", "initiation": "x"})
        with pytest.raises(InvalidInput):
            remote._call("begin", {"label": "k", "initiation": {"credentialType": 1}})
        with pytest.raises(HsmError):
            remote.sign_now("k", b"x", initiation="nope")  # type: ignore[arg-type]
    finally:
        remote.close()
        stop.set()
        hsm.close()
