"""Enrolment: devices and passkeys ask, administrators decide, ruleModify adds them."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from approvals_app.main import create_app
from approvals_app.settings import Settings
from custody.broker import REJECT_PREFIX
from custody.enrolment import enrol_message
from hsm_emulator import Hsm
from hsm_emulator.decoders import transfer_payload
from tests.api.test_api_tutorial import SECRET, bearer
from tests.conftest import SO, TEST_PASSPHRASE
from tests.helpers import Approver, tiered_policy
from tests.webauthn_soft import SoftPasskey

ADMIN = bearer("key_admin", sub="alice-admin")


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    hsm = Hsm.open(tmp_path / "hsm.sqlite", TEST_PASSPHRASE, so_passphrase=SO)
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'b.sqlite'}", jwt_secret=SECRET)
    with TestClient(create_app(settings, hsm, scheduler=False)) as client:
        yield client
    hsm.close()


@pytest.fixture
def admins() -> list[Approver]:
    return [Approver.new("admin-1"), Approver.new("admin-2")]


@pytest.fixture
def treasury(api: TestClient, admins: list[Approver]) -> str:
    policy = tiered_policy(admins, [Approver.new("compliance")], admins=admins)
    r = api.post("/v1/key", json={"label": "treasury", "algorithm": "SECP256K1",
                                  "policy": policy}, headers=ADMIN)
    assert r.status_code == 201, r.text
    return "treasury"


def hsm_fp(api: TestClient) -> str:
    der = base64.b64decode(api.get("/v1/hsm").json()["identityPublicKey"])
    return hashlib.sha256(der).hexdigest()


def enrol(api: TestClient, who: Approver, name: str = "bob", fp: str | None = None) -> Any:
    fp = fp or hsm_fp(api)
    proof = who.sign(enrol_message(name, who.spki_b64, fp))
    return api.post("/v1/enrolment", json={"name": name, "publicKey": who.spki_b64,
                                           "hsmFingerprint": fp,
                                           "proof": base64.b64encode(proof).decode()})


def confirm(api: TestClient, enrolment_id: str, headers: dict[str, str] | None = None,
            fp: str | None = None) -> Any:
    return api.post(f"/v1/enrolment/{enrolment_id}/confirm",
                    json={"hsmFingerprint": fp or hsm_fp(api)}, headers=headers or ADMIN)


def page_tasks(api: TestClient, who: Approver, credential: str | None = None) -> Any:
    ts = dt.datetime.now(dt.UTC).isoformat()
    return api.post("/approver/api/tasks", json={
        "timestamp": ts, "timestampSignature": base64.b64encode(who.sign(ts.encode())).decode(),
        "approverCertificate": credential or who.spki_b64})


def approve(api: TestClient, who: Any, credential: str, task_id: str, challenge_b64: str,
            reject: bool = False) -> Any:
    challenge = base64.b64decode(challenge_b64)
    sig = who.sign(REJECT_PREFIX + challenge if reject else challenge)
    return api.post("/v1/rejection" if reject else "/v1/approval", json={
        "id": task_id, "approvalToBeSigned": challenge_b64,
        "signature": base64.b64encode(sig).decode(), "approverCertificate": credential})


def test_only_an_administrator_confirms(api: TestClient) -> None:
    device = Approver.new("phone")
    r = enrol(api, device)
    assert r.status_code == 201, r.text
    e = r.json()
    assert e["status"] == "PENDING" and e["credential"] is None
    assert page_tasks(api, device).status_code == 403  # not confirmed: no task listing
    assert api.post(f"/v1/enrolment/{e['id']}/confirm",
                    json={"hsmFingerprint": hsm_fp(api)}).status_code == 401
    assert confirm(api, e["id"], bearer("business")).status_code == 403
    assert confirm(api, e["id"], fp="0" * 64).status_code == 400
    assert api.get(f"/v1/enrolment/{e['id']}").json()["status"] == "PENDING"  # unchanged
    r = confirm(api, e["id"], bearer("security_officer"))
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "CONFIRMED" and r.json()["credential"] == device.spki_b64
    assert confirm(api, e["id"]).status_code == 409  # decided once
    listed = page_tasks(api, device).json()
    assert listed["tasks"] == [] and listed["auditHead"]["epoch"] == 0  # the witness's input
    listed = api.get("/v1/enrolments", params={"status": "CONFIRMED"}, headers=ADMIN).json()
    assert [x["id"] for x in listed["enrolments"]] == [e["id"]]
    assert api.get("/v1/enrolments", headers=bearer("business")).status_code == 403


def test_hostile_enrolments_change_nothing(api: TestClient) -> None:
    device, other = Approver.new("phone"), Approver.new("other")
    fp = hsm_fp(api)
    forged = base64.b64encode(other.sign(enrol_message("bob", device.spki_b64, fp))).decode()
    bodies = [
        {"name": "bob", "publicKey": device.spki_b64, "hsmFingerprint": fp, "proof": forged},
        {"name": "bob\nadmin", "publicKey": device.spki_b64, "hsmFingerprint": fp,
         "proof": forged},
        {"name": "bob", "publicKey": device.spki_b64, "hsmFingerprint": "xyz", "proof": forged},
        {"name": "bob", "publicKey": Approver.new("ed", "ED25519").spki_b64,
         "hsmFingerprint": fp, "proof": forged},
        {"name": "bob", "publicKey": "not base64!", "hsmFingerprint": fp, "proof": forged},
        {"name": "bob", "publicKey": device.spki_b64, "hsmFingerprint": fp, "proof": "%%"},
    ]
    for body in bodies:
        r = api.post("/v1/enrolment", json=body)
        assert r.status_code in (400, 422), (body, r.text)
        assert r.headers["content-type"] == "application/problem+json"
    assert api.post("/v1/enrolment", json={"name": "bob"}).status_code == 422
    assert api.get("/v1/enrolments", headers=ADMIN).json() == {"enrolments": []}
    assert enrol(api, device).status_code == 201
    assert enrol(api, device).status_code == 409  # one enrolment per key
    assert api.get("/v1/enrolment/nope").status_code == 404
    assert api.post("/v1/enrolment/nope/confirm", json={"hsmFingerprint": fp},
                    headers=ADMIN).status_code == 404


def test_a_device_shown_another_hsm_key_is_not_confirmed(api: TestClient) -> None:
    e = enrol(api, Approver.new("phone"), fp="ab" * 32).json()
    r = confirm(api, e["id"])
    assert r.status_code == 403 and "another HSM" in r.json()["detail"]
    assert api.post(f"/v1/enrolment/{e['id']}/refuse", headers=ADMIN).json()[
        "status"] == "REFUSED"


def test_joining_a_group_is_a_policy_modification(api: TestClient, treasury: str,
                                                  admins: list[Approver]) -> None:
    device = Approver.new("phone")
    e = enrol(api, device).json()
    join = {"label": treasury, "group": "traders"}
    assert api.post(f"/v1/enrolment/{e['id']}/join", json=join,
                    headers=ADMIN).status_code == 409  # not confirmed yet
    confirm(api, e["id"])
    assert api.post(f"/v1/enrolment/{e['id']}/join", json=join,
                    headers=bearer("security_officer")).status_code == 403
    assert api.post(f"/v1/enrolment/{e['id']}/join", json={**join, "group": "nobody"},
                    headers=ADMIN).status_code == 400
    r = api.post(f"/v1/enrolment/{e['id']}/join", json=join, headers=ADMIN)
    assert r.status_code == 201 and r.json()["status"] == "PENDING", r.text
    key = api.get(f"/v1/key/{treasury}", headers=ADMIN).json()
    assert device.spki_b64 not in str(key["policy"])  # nothing changes before approvals
    challenge = api.app.state.broker.get(r.json()["requestId"]).challenge_b64  # type: ignore[attr-defined]
    for admin in admins:
        last = approve(api, admin, admin.spki_b64, r.json()["requestId"], challenge)
    assert last.json()["status"] == "EXECUTED", last.text
    key = api.get(f"/v1/key/{treasury}", headers=ADMIN).json()
    traders = key["policy"]["ruleUse"]["tokens"][1]["groups"][0]["approvals"]
    assert {"type": "public_key", "value": device.spki_b64, "name": "bob"} in traders


def test_a_passkey_enrols_and_approves(api: TestClient, treasury: str,
                                       admins: list[Approver]) -> None:
    passkey = SoftPasskey()
    fp = hsm_fp(api)
    start = api.post("/v1/enrolment/passkey", json={"name": "carol", "hsmFingerprint": fp})
    assert start.status_code == 201, start.text
    options = json.loads(start.json()["options"])
    assert options["rp"]["id"] == "localhost" and options["pubKeyCredParams"] == [
        {"type": "public-key", "alg": -7}]
    eid = start.json()["id"]
    wrong = passkey.registration(b"\0" * 32)
    assert api.post(f"/v1/enrolment/{eid}/passkey",
                    json={"credential": wrong}).status_code == 400
    challenge = base64.urlsafe_b64decode(options["challenge"] + "==")
    for stranger in (SoftPasskey(origin="https://evil.example"), SoftPasskey(rp_id="evil.io")):
        r = api.post(f"/v1/enrolment/{eid}/passkey",
                     json={"credential": stranger.registration(challenge)})
        assert r.status_code == 400, r.text
    assert api.post(f"/v1/enrolment/{eid}/passkey", json={"credential": {
        "id": "x", "rawId": "x", "type": "public-key", "response": {}}}).status_code == 400
    r = api.post(f"/v1/enrolment/{eid}/passkey",
                 json={"credential": passkey.registration(challenge)})
    assert r.status_code == 200 and r.json()["status"] == "PENDING", r.text
    assert api.post(f"/v1/enrolment/{eid}/passkey", json={
        "credential": passkey.registration(challenge)}).status_code == 409  # once
    assert confirm(api, eid).json()["credential"] == passkey.value
    modify = api.post(f"/v1/enrolment/{eid}/join", json={"label": treasury,
                                                        "group": "traders"}, headers=ADMIN)
    mid = modify.json()["requestId"]
    m_challenge = api.app.state.broker.get(mid).challenge_b64  # type: ignore[attr-defined]
    for admin in admins:
        approve(api, admin, admin.spki_b64, mid, m_challenge)
    payload = base64.b64encode(transfer_payload("TST", 1000, "bob", 1)).decode()
    sid = api.post("/v1/sign", json={"signRequest": {
        "payload": payload, "payloadType": "TEST_TRANSFER", "signKeyName": treasury}},
        headers=bearer("business")).json()["signRequestId"]
    ts = dt.datetime.now(dt.UTC).isoformat()
    listed = api.post("/approver/api/tasks", json={
        "timestamp": ts, "timestampSignature": base64.b64encode(
            passkey.sign(ts.encode())).decode(), "approverCertificate": passkey.value})
    assert listed.status_code == 200, listed.text
    task = listed.json()["tasks"][0]
    assert task["id"] == sid and [t["name"] for t in task["tokens"]] == ["medium", "large"]
    r = approve(api, passkey, passkey.value, sid, task["approvalToBeSigned"])
    assert r.status_code == 200 and r.json()["status"] == "PENDING", r.text
    r = approve(api, admins[0], admins[0].spki_b64, sid, task["approvalToBeSigned"])
    assert r.json()["status"] == "EXECUTED", r.text


def test_the_page_is_served_with_a_strict_policy(api: TestClient) -> None:
    r = api.get("/approver/")
    assert r.status_code == 200 and "<title>SKA approvals</title>" in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert api.get("/approver/app.js").headers["content-type"].startswith("text/javascript")
    assert api.get("/approver/../main.py").status_code == 404
    assert api.get("/approver/secret.py").status_code == 404
    assert api.get("/approver", follow_redirects=False).status_code == 308


def test_listing_needs_a_valid_signed_timestamp(api: TestClient) -> None:
    device = Approver.new("phone")
    confirm(api, enrol(api, device).json()["id"])
    ts = dt.datetime.now(dt.UTC).isoformat()
    bad = api.post("/approver/api/tasks", json={
        "timestamp": ts, "timestampSignature": base64.b64encode(
            Approver.new("x").sign(ts.encode())).decode(), "approverCertificate": device.spki_b64})
    assert bad.status_code == 403
    assert api.get("/approver/api/events", params={"timestamp": ts, "signature": "AA==",
                                                   "certificate": device.spki_b64}
                   ).status_code == 403
