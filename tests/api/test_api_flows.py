"""The /v1 API with tiered policies, holds, rejections, and hostile callers."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from approvals_app.auth import issue_token
from approvals_app.main import create_app
from approvals_app.settings import Settings
from custody.broker import REJECT_PREFIX
from hsm_emulator import Hsm
from hsm_emulator.client import HsmClient
from hsm_emulator.decoders import transfer_payload
from hsm_emulator.remote import RemoteHsmClient, serve
from tests.api.test_api_tutorial import SECRET, bearer
from tests.conftest import SO, TEST_PASSPHRASE
from tests.helpers import Approver, tiered_policy


@pytest.fixture(params=["sqlite", "postgresql", "remote-hsm"])
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    """The same API tests on the embedded default, on a real PostgreSQL, and with the
    HSM reached over its socket protocol (RemoteHsmClient) instead of in-process."""
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres").create_database()
    else:
        url = f"sqlite:///{tmp_path / 'broker.sqlite'}"
    hsm = Hsm.open(tmp_path / "hsm.sqlite", TEST_PASSPHRASE, so_passphrase=SO)
    client: HsmClient = hsm
    stop = threading.Event()
    if request.param == "remote-hsm":
        ready, secret = threading.Event(), os.urandom(32)
        address = f"unix:{tmp_path / 'hsm.sock'}"
        threading.Thread(target=serve, args=(hsm, address, secret),
                         kwargs={"ready": ready, "stop": stop}, daemon=True).start()
        assert ready.wait(10)
        client = RemoteHsmClient(address, secret)
    settings = Settings(database_url=url, jwt_secret=SECRET)
    with TestClient(create_app(settings, client)) as test_client:
        yield test_client
    stop.set()
    hsm.close()


@pytest.fixture
def treasury(api: TestClient, people: dict[str, Approver]) -> str:
    policy = tiered_policy([people["t1"], people["t2"], people["t3"]], [people["c1"]], hold=2,
                           timeout=600)
    r = api.post("/v1/key", json={"label": "treasury", "algorithm": "EC",
                                  "curveOid": "1.3.132.0.10", "policy": policy},
                 headers=bearer("key_admin"))
    assert r.status_code == 201, r.text
    return "treasury"


def sign(api: TestClient, amount: int, nonce: int = 0, **hdr: Any) -> dict[str, Any]:
    payload = base64.b64encode(transfer_payload("TST", amount, "bob", 1, nonce)).decode()
    r = api.post("/v1/sign", json={"signRequest": {
        "payload": payload, "payloadType": "TEST_TRANSFER", "signKeyName": "treasury"}},
        headers=hdr or bearer("business"))
    assert r.status_code == 201, r.text
    return status(api, r.json()["signRequestId"])


def status(api: TestClient, request_id: str) -> dict[str, Any]:
    return api.get(f"/v1/request/{request_id}", headers=bearer("business")).json()


def tasks(api: TestClient, who: Approver, level: str = "level2") -> list[dict[str, Any]]:
    ts = dt.datetime.now(dt.UTC).isoformat()
    r = api.post("/v1/filteredSignApprovalTask", json={
        "timestamp": ts, "timestampSignature": base64.b64encode(who.sign(ts.encode())).decode(),
        "approverCertificate": who.spki_b64, "detailLevel": level})
    assert r.status_code == 200, r.text
    return list(r.json()["tasks"])


def answer(api: TestClient, who: Approver, task: dict[str, Any], reject: bool = False) -> Any:
    challenge = base64.b64decode(task["approvalToBeSigned"])
    sig = who.sign(REJECT_PREFIX + challenge if reject else challenge)
    return api.post("/v1/rejection" if reject else "/v1/approval", json={
        "id": task["id"], "approvalToBeSigned": task["approvalToBeSigned"],
        "signature": base64.b64encode(sig).decode(), "approverCertificate": who.spki_b64})


def test_small_is_executed_at_once(api: TestClient, treasury: str) -> None:
    body = sign(api, 50)
    assert body["status"] == "EXECUTED" and body["result"]


def test_medium_released_on_second_trader(api: TestClient, treasury: str,
                                          people: dict[str, Approver]) -> None:
    request = sign(api, 1000)
    assert request["status"] == "PENDING" and len(request["notYetApprovedBy"]) == 4
    t1_tasks = tasks(api, people["t1"])
    assert [t["id"] for t in t1_tasks] == [request["id"]]
    assert t1_tasks[0]["intent"]["transfers"][0]["amount"] == "1000"
    assert answer(api, people["t1"], t1_tasks[0]).json()["status"] == "PENDING"
    assert tasks(api, people["t1"]) == []  # answered tasks are not listed again
    assert answer(api, people["t1"], t1_tasks[0]).status_code == 409  # twice: conflict
    start = time.perf_counter()
    assert answer(api, people["t2"], tasks(api, people["t2"])[0]).json()["status"] == "EXECUTED"
    assert time.perf_counter() - start < 1.0  # released within the approving call
    assert len(status(api, request["id"])["approvedBy"]) == 2


def test_large_waits_for_the_hold_then_releases(api: TestClient, treasury: str,
                                                people: dict[str, Approver]) -> None:
    request = sign(api, 10**6)
    for who in ("t1", "t3", "c1"):
        answer(api, people[who], tasks(api, people[who])[0])
    assert status(api, request["id"])["status"] in ("APPROVED", "EXECUTED")
    deadline = time.time() + 10
    while status(api, request["id"])["status"] != "EXECUTED" and time.time() < deadline:
        time.sleep(0.05)
    body = status(api, request["id"])
    assert body["status"] == "EXECUTED", body
    executed = dt.datetime.fromisoformat(body["executionTime"]).timestamp()
    assert executed >= body_created(api, request["id"]) + 2  # not before the hold ended


def tasks_or_challenge(api: TestClient, request_id: str) -> str:
    row = api.app.state.broker.get(request_id)  # type: ignore[attr-defined]
    return str(row.challenge_b64)


def body_created(api: TestClient, request_id: str) -> float:
    return float(api.app.state.broker.get(request_id).hsm_time)  # type: ignore[attr-defined]


def test_rejection_ends_the_request(api: TestClient, treasury: str,
                                    people: dict[str, Approver]) -> None:
    request = sign(api, 1000)
    answer(api, people["t1"], tasks(api, people["t1"])[0], reject=True)
    answer(api, people["t2"], tasks(api, people["t2"])[0], reject=True)
    body = status(api, request["id"])
    assert body["status"] == "REJECTED" and len(body["rejectedBy"]) == 2
    late = answer(api, people["t3"], {"id": request["id"], "approvalToBeSigned":
                                      tasks_or_challenge(api, request["id"])})
    assert late.status_code == 409


def test_cancel(api: TestClient, treasury: str, people: dict[str, Approver]) -> None:
    request = sign(api, 1000)
    other_tenant = api.delete(f"/v1/request/{request['id']}",
                              headers=bearer("business", tenant="desk-2"))
    assert other_tenant.status_code == 404
    assert api.delete(f"/v1/request/{request['id']}",
                      headers=bearer("business")).json()["status"] == "CANCELLED"
    task = {"id": request["id"], "approvalToBeSigned": tasks_or_challenge(api, request["id"])}
    assert answer(api, people["t1"], task).status_code == 409


def test_initiator_cannot_approve_own_request(api: TestClient, treasury: str,
                                              people: dict[str, Approver]) -> None:
    t1 = people["t1"]
    own = issue_token(SECRET, t1.spki_b64, "desk-1", ["business"])
    request = sign(api, 1000, Authorization=f"Bearer {own}")
    r = answer(api, t1, {"id": request["id"],
                         "approvalToBeSigned": tasks_or_challenge(api, request["id"])})
    assert r.status_code == 403 and "initiator" in r.json()["detail"]


# -- hostile callers ------------------------------------------------------------------------


def _token(claims: dict[str, Any], key: str = SECRET, alg: str = "HS256") -> str:
    base = {"sub": "x", "tenant": "desk-1", "roles": ["business", "key_admin"],
            "aud": "ska-custody", "iss": "ska-custody", "exp": int(time.time()) + 60}
    return jwt.encode({**base, **claims}, key, algorithm=alg)


def _unsigned(claims: dict[str, Any]) -> str:
    def seg(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    base = {"sub": "x", "tenant": "desk-1", "roles": ["business"], "aud": "ska-custody",
            "iss": "ska-custody", "exp": int(time.time()) + 60}
    return f"{seg({'alg': 'none', 'typ': 'JWT'})}.{seg({**base, **claims})}."


@pytest.mark.parametrize("token", [
    _unsigned({}),
    _token({}, key="not-the-secret-but-long-enough-0123456789"),
    _token({"exp": int(time.time()) - 10}),
    _token({"aud": "someone-else"}),
    _token({"iss": "someone-else"}),
    _token({"roles": "business"}),
    _token({"tenant": ""}),
    "not.a.jwt",
    "",
])
def test_bad_tokens_are_refused(api: TestClient, token: str) -> None:
    r = api.get("/v1/request/whatever", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401, r.text
    assert r.headers["content-type"] == "application/problem+json"


def test_roles_are_enforced(api: TestClient, treasury: str) -> None:
    body = {"signRequest": {"payload": "AA==", "payloadType": "UNSPECIFIED",
                            "signKeyName": "treasury", "signatureAlgorithm": "SHA256_WITH_ECDSA"}}
    assert api.post("/v1/sign", json=body, headers=bearer("auditor")).status_code == 403
    assert api.post("/v1/key", json={"label": "k2", "algorithm": "ED"},
                    headers=bearer("business")).status_code == 403
    assert api.post("/v1/block", json={"label": "treasury"},
                    headers=bearer("business")).status_code == 403


@pytest.mark.parametrize("body", [
    {},
    {"signRequest": {}},
    {"signRequest": {"payload": "%%%", "signKeyName": "treasury"}},
    {"signRequest": {"payload": "AA==", "signKeyName": "treasury", "colour": "red"}},
    {"signRequest": {"payload": "AA==", "signKeyName": "x" * 500}},
    {"signRequest": {"payload": 12, "signKeyName": "treasury"}},
    {"signRequest": {"payload": "AA==", "signKeyName": "treasury", "payloadType": "NOPE"}},
    {"signRequest": {"payload": "AA==", "signKeyName": "nokey",
                     "signatureAlgorithm": "SHA256_WITH_ECDSA"}},
    {"signRequest": {"payload": "AA==", "signKeyName": "treasury",
                     "signatureAlgorithm": "MD5_WITH_RSA"}},
    {"signRequest": {"payload": "AA==", "signKeyName": "treasury", "payloadType": "TEST_TRANSFER"}},
])
def test_hostile_sign_bodies_get_4xx_and_change_nothing(api: TestClient, treasury: str,
                                                         body: dict[str, Any]) -> None:
    broker = api.app.state.broker  # type: ignore[attr-defined]
    with broker.sessions() as s:
        before = s.execute(text("SELECT count(*) FROM sign_requests")).scalar()
    r = api.post("/v1/sign", json=body, headers=bearer("business"))
    assert 400 <= r.status_code < 500, r.text
    assert r.headers["content-type"] == "application/problem+json"
    with broker.sessions() as s:
        after = s.execute(text("SELECT count(*) FROM sign_requests")).scalar()
    assert before == after


@pytest.mark.parametrize("mutate", [
    lambda b: b | {"signature": "!!"},
    lambda b: b | {"signature": base64.b64encode(b"\x00" * 64).decode()},
    lambda b: b | {"approverCertificate": "AAAA"},
    lambda b: b | {"id": "no-such-request"},
    lambda b: b | {"approvalToBeSigned": base64.b64encode(b"other").decode()},
    lambda b: b | {"extra": 1},
    lambda b: {k: v for k, v in b.items() if k != "signature"},
])
def test_hostile_approvals(api: TestClient, treasury: str, people: dict[str, Approver],
                           mutate: Any) -> None:
    request = sign(api, 1000)
    task = tasks(api, people["t1"])[0]
    challenge = base64.b64decode(task["approvalToBeSigned"])
    good = {"id": task["id"], "approvalToBeSigned": task["approvalToBeSigned"],
            "signature": base64.b64encode(people["t1"].sign(challenge)).decode(),
            "approverCertificate": people["t1"].spki_b64}
    r = api.post("/v1/approval", json=mutate(good))
    assert 400 <= r.status_code < 500, r.text
    assert status(api, request["id"])["approvedBy"] == []


def test_health(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").json() == {"status": "ready"}
    assert api.get("/openapi.json").status_code == 200


def test_idempotency_key_returns_the_first_result(api: TestClient, treasury: str) -> None:
    payload = base64.b64encode(transfer_payload("TST", 1000, "bob", 1, 7)).decode()
    body = {"signRequest": {"payload": payload, "payloadType": "TEST_TRANSFER",
                            "signKeyName": "treasury"}}
    headers = bearer("business") | {"Idempotency-Key": "transfer-42"}
    first = api.post("/v1/sign", json=body, headers=headers)
    again = api.post("/v1/sign", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    broker = api.app.state.broker  # type: ignore[attr-defined]
    with broker.sessions() as s:
        assert s.execute(text("SELECT count(*) FROM sign_requests")).scalar() == 1
    other = {"signRequest": {**body["signRequest"], "payload": base64.b64encode(
        transfer_payload("TST", 9999, "bob", 1, 7)).decode()}}
    clash = api.post("/v1/sign", json=other, headers=headers)
    assert clash.status_code == 409 and "different request body" in clash.json()["detail"]
    refused = api.post("/v1/sign", json={"signRequest": {**body["signRequest"],
                                                         "signKeyName": "nokey"}},
                       headers=bearer("business") | {"Idempotency-Key": "k-2"})
    assert refused.status_code == 404
    with broker.sessions() as s:  # a refused call leaves no reservation behind
        assert s.execute(text("SELECT count(*) FROM idempotency")).scalar() == 1


def test_failed_authentication_is_rate_limited(api: TestClient) -> None:
    codes = [api.get("/v1/request/x", headers={"Authorization": "Bearer nope"}).status_code
             for _ in range(25)]
    assert codes[:20] == [401] * 20 and codes[-1] == 429
    limited = api.get("/v1/request/x", headers=bearer("business"))
    assert limited.status_code == 429 and limited.headers["Retry-After"]


HOSTILE = [
    ("post", "/v1/key", {"label": "", "algorithm": "RSA"}),
    ("post", "/v1/key", {"label": "k", "algorithm": "RSA", "keySize": 10**9}),
    ("post", "/v1/key", {"label": "k", "algorithm": "EC", "curveOid": "1.2.3"}),
    ("post", "/v1/key", {"label": "k", "algorithm": "DSA"}),
    ("post", "/v1/key", {"label": "k", "algorithm": "ED", "policy": {"ruleUse": 7}}),
    ("post", "/v1/key", {"label": "k", "algorithm": "ED", "attributes": {"sign": "yes"}}),
    ("post", "/v1/key", {"label": "k" * 129, "algorithm": "ED"}),
    ("post", "/v1/key", ["not", "an", "object"]),
    ("post", "/v1/block", {"label": "treasury", "policy": {}}),
    ("post", "/v1/block", {"label": "no-such-key"}),
    ("post", "/v1/unblock", {"label": "treasury"}),
    ("post", "/v1/modify", {"label": "treasury"}),
    ("post", "/v1/modify", {"label": "treasury", "policy": {"ruleUse": {"tokens": []}}}),
    ("post", "/v1/filteredSignApprovalTask", {"timestamp": "yesterday",
                                              "timestampSignature": "AA==",
                                              "approverCertificate": "AAAA"}),
    ("post", "/v1/filteredSignApprovalTask", {"timestamp": "2020-01-01T00:00:00+00:00",
                                              "timestampSignature": "AA==",
                                              "approverCertificate": "AAAA",
                                              "paging": {"pageSize": 10**6}}),
    ("post", "/v1/rejection", {"id": "x", "approvalToBeSigned": "AA==", "signature": "AA==",
                               "approverCertificate": "AAAA"}),
    ("get", "/v1/key/no-such-key", None),
    ("get", "/v1/key/treasury/address?kind=p2pkh&network=mainnet", None),
    ("get", "/v1/key/treasury/address?kind=p2wpkh&network=moon", None),
    ("get", "/v1/key/treasury/address?kind=p2wpkh&network=mainnet&path=m/x", None),
    ("get", "/v1/audit?limit=-5", None),
    ("get", "/v1/audit?start=0", None),
    ("delete", "/v1/request/no-such-request", None),
    ("get", "/v1/approver/events?timestamp=x&signature=AA==&certificate=AAAA", None),
]


@pytest.mark.parametrize(("method", "path", "body"), HOSTILE)
def test_hostile_input_on_every_route(api: TestClient, treasury: str, method: str, path: str,
                                      body: Any) -> None:
    headers = bearer("business", "key_admin", "auditor")
    before = api.get("/v1/audit", headers=headers).json()["entries"]
    keys_before = api.get("/v1/key/treasury", headers=headers).json()["policyDigest"]
    kwargs: dict[str, Any] = {"headers": headers}
    if body is not None:
        kwargs["json"] = body
    r = api.request(method.upper(), path, **kwargs)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json")
    after = api.get("/v1/audit", headers=headers).json()["entries"]
    # nothing changed: only refusals may have been audited
    assert all(e["event"].get("result") == "refused" for e in after[len(before):]), after
    assert api.get("/v1/key/treasury", headers=headers).json()["policyDigest"] == keys_before
