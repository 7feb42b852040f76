"""Authentication and authorisation, systematically.

* Tokens that must never authenticate: ``alg: none``, other algorithms (RS256, ES256,
  HS512, an HMAC made with the secret but labelled RS256), a wrong key, expired, not yet
  valid, wrong audience or issuer, missing claims, garbage.
* Every route against every role (and no token, and a valid token with no role). The
  route list comes from the app itself, so a new route without an entry here fails with
  its name: decide who may call it, then add it to :data:`MATRIX`.
* Tenants: another tenant's request id is a 404 exactly like an unknown id.
* Approvers: a task answered with another approver's credential is refused.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from httpx import Response

from approvals_app.auth import FailureLimiter, issue_token
from approvals_app.main import create_app
from approvals_app.settings import Settings
from custody.broker import REJECT_PREFIX
from custody.db import SignRequest
from hsm_emulator import Hsm
from hsm_emulator.decoders import transfer_payload
from tests.api.test_api_tutorial import SECRET
from tests.conftest import SO, TEST_PASSPHRASE
from tests.helpers import Approver, tiered_policy

ROLES = ("business", "key_admin", "security_officer", "auditor")
NO_ROLE, ANONYMOUS = "none", "anonymous"
PUBLIC = "public"  #: no token needed
APPROVER = "approver"  #: proven by a signature with the approval key, never by a JWT
ADMINS = frozenset({"key_admin", "security_officer"})
READERS = frozenset({"business", "key_admin", "auditor"})

#: Who may call what. A role set: those roles, and only those, pass the role check.
MATRIX: dict[str, str | frozenset[str]] = {
    "GET /openapi.json": PUBLIC, "GET /docs": PUBLIC, "GET /docs/oauth2-redirect": PUBLIC,
    "GET /redoc": PUBLIC, "GET /healthz": PUBLIC, "GET /readyz": PUBLIC,
    "GET /metrics": PUBLIC, "GET /v1/hsm": PUBLIC,
    "POST /v1/key": frozenset({"key_admin"}),
    "GET /v1/key/{label}": frozenset(ROLES),
    "GET /v1/key/{label}/address": frozenset(ROLES),
    "POST /v1/sign": frozenset({"business"}),
    "POST /v1/block": frozenset({"key_admin"}),
    "POST /v1/unblock": frozenset({"key_admin"}),
    "POST /v1/modify": frozenset({"key_admin"}),
    "POST /v1/filteredSignApprovalTask": APPROVER, "POST /v1/approval": APPROVER,
    "POST /v1/rejection": APPROVER, "GET /v1/approver/events": APPROVER,
    "GET /v1/request/{request_id}": READERS,
    "DELETE /v1/request/{request_id}": frozenset({"business", "key_admin"}),
    "GET /v1/audit": frozenset({"auditor", "security_officer"}),
    "POST /v1/wallets": frozenset({"key_admin"}),
    "GET /v1/wallets": READERS, "GET /v1/wallets/{wallet_id}": READERS,
    "GET /v1/wallets/{wallet_id}/balances": READERS,
    "GET /v1/wallets/{wallet_id}/addresses": READERS,
    "POST /v1/wallets/{wallet_id}/addresses": frozenset({"business", "key_admin"}),
    "POST /v1/transfers": frozenset({"business"}),
    "GET /v1/transfers": frozenset({"business", "auditor"}),
    "GET /v1/transfers/{transfer_id}": frozenset({"business", "auditor"}),
    "DELETE /v1/transfers/{transfer_id}": frozenset({"business"}),
    "POST /v1/webhooks": frozenset({"business"}),
    "GET /v1/webhooks": frozenset({"business", "auditor"}),
    "GET /v1/webhooks/{endpoint_id}/deliveries": frozenset({"business", "auditor"}),
    # a device enrols itself (an administrator confirms later); it polls by a random id
    "POST /v1/enrolment": PUBLIC, "POST /v1/enrolment/passkey": PUBLIC,
    "POST /v1/enrolment/{enrolment_id}/passkey": PUBLIC,
    "GET /v1/enrolment/{enrolment_id}": PUBLIC,
    "GET /v1/enrolments": ADMINS,
    "POST /v1/enrolment/{enrolment_id}/confirm": ADMINS,
    "POST /v1/enrolment/{enrolment_id}/refuse": ADMINS,
    "POST /v1/enrolment/{enrolment_id}/join": frozenset({"key_admin"}),
    "GET /approver": PUBLIC, "GET /approver/": PUBLIC, "GET /approver/{name}": PUBLIC,
    "POST /approver/api/tasks": APPROVER, "GET /approver/api/events": APPROVER,
    "POST /v1/address-lists": frozenset({"key_admin"}),
    "PUT /v1/address-lists/{upload_id}/chunks/{index}": frozenset({"key_admin"}),
    "POST /v1/address-lists/{upload_id}/finish": frozenset({"key_admin"}),
    "DELETE /v1/address-lists/{list_id}": frozenset({"key_admin"}),
    "GET /v1/address-lists/{list_id}": frozenset(ROLES),
}

GARBAGE_PROOF = {"timestamp": "2020-01-01T00:00:00+00:00", "timestampSignature": "AA==",
                 "approverCertificate": "AAAA"}


def bodies(request_id: str, policy: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A schema-valid body per creating route, so a refusal is about who asks."""
    payload = base64.b64encode(transfer_payload("TST", 50, "bob", 1, 99)).decode()
    return {
        "POST /v1/key": {"label": "k-new", "algorithm": "ED", "policy": policy},
        "POST /v1/sign": {"signRequest": {"payload": payload, "payloadType": "TEST_TRANSFER",
                                          "signKeyName": "treasury"}},
        "POST /v1/block": {"label": "treasury"}, "POST /v1/unblock": {"label": "treasury"},
        "POST /v1/modify": {"label": "treasury", "policy": policy},
        "POST /v1/filteredSignApprovalTask": GARBAGE_PROOF,
        "POST /approver/api/tasks": {"timestamp": GARBAGE_PROOF["timestamp"],
                                     "signature": "AA==", "certificate": "AAAA"},
        "POST /v1/approval": {"id": request_id, "approvalToBeSigned": "AA==",
                              "signature": "AA==", "approverCertificate": "AAAA"},
        "POST /v1/rejection": {"id": request_id, "approvalToBeSigned": "AA==",
                               "signature": "AA==", "approverCertificate": "AAAA"},
        "POST /v1/wallets": {"name": "w", "chain": "bitcoin", "network": "regtest",
                             "policy": {}},
        "POST /v1/wallets/{wallet_id}/addresses": {},
        "POST /v1/transfers": {"wallet": "w", "asset": "BTC", "destination": "x",
                               "amount": "1"},
        "POST /v1/webhooks": {"url": "https://example.com/hook"},
        "POST /v1/enrolment": {"name": "d", "publicKey": "AAAA", "hsmFingerprint": "x",
                               "proof": "AA=="},
        "POST /v1/enrolment/passkey": {"name": "d", "hsmFingerprint": "x"},
        "POST /v1/enrolment/{enrolment_id}/passkey": {"credential": {}},
        "POST /v1/enrolment/{enrolment_id}/confirm": {"hsmFingerprint": "x"},
        "POST /v1/enrolment/{enrolment_id}/join": {"label": "treasury", "group": "traders"},
    }


def concrete(path: str, request_id: str) -> str:
    return (path.replace("{label}", "treasury").replace("{request_id}", request_id)
            .replace("{name}", "index.html").replace("{wallet_id}", "no-such-wallet")
            .replace("{transfer_id}", "no-such-transfer")
            .replace("{endpoint_id}", "no-such-endpoint")
            .replace("{enrolment_id}", "00000000-0000-0000-0000-000000000000"))


QUERY = {"GET /v1/key/{label}/address": {"kind": "p2wpkh", "network": "regtest"},
         "GET /v1/approver/events": {"timestamp": "x", "signature": "AA==",
                                     "certificate": "AAAA"},
         "GET /approver/api/events": {"timestamp": "x", "signature": "AA==",
                                      "certificate": "AAAA"}}


def app_routes(client: TestClient) -> list[str]:
    keys = []
    for route in iter_route_contexts(client.app.router.routes):  # type: ignore[attr-defined]
        for method in sorted((route.methods or set()) - {"HEAD"}):
            keys.append(f"{method} {route.path}")
    return keys


def headers(role: str, tenant: str = "desk-1") -> dict[str, str]:
    if role == ANONYMOUS:
        return {}
    roles = [] if role == NO_ROLE else [role]
    return {"Authorization": "Bearer " + issue_token(SECRET, f"{role}-user", tenant, roles)}


@pytest.fixture
def api(tmp_path: Path, people: dict[str, Approver]) -> Iterator[TestClient]:
    hsm = Hsm.open(tmp_path / "hsm.sqlite", TEST_PASSPHRASE, so_passphrase=SO)
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'broker.sqlite'}",
                        jwt_secret=SECRET)
    app = create_app(settings, hsm, scheduler=False)
    app.state.limiter = FailureLimiter(limit=10**9)  # refusals are the point here
    with TestClient(app) as client:
        r = client.post("/v1/key", json={
            "label": "treasury", "algorithm": "EC", "curveOid": "1.3.132.0.10",
            "policy": tiered_policy([people["t1"], people["t2"], people["t3"]],
                                    [people["c1"]])}, headers=headers("key_admin"))
        assert r.status_code == 201, r.text
        yield client
    hsm.close()


def pending(api: TestClient, tenant: str = "desk-1", nonce: int = 1) -> str:
    payload = base64.b64encode(transfer_payload("TST", 1000, "bob", 1, nonce)).decode()
    r = api.post("/v1/sign", json={"signRequest": {
        "payload": payload, "payloadType": "TEST_TRANSFER", "signKeyName": "treasury"}},
        headers=headers("business", tenant))
    assert r.status_code == 201, r.text
    return str(r.json()["signRequestId"])


def role_refused(r: Response) -> bool:
    """401, or the role check's own 403 (not a domain refusal that also maps to 403)."""
    if r.status_code == 401:
        return True
    return r.status_code == 403 and r.json().get("code") == "custody.forbidden" and (
        "needs one of the roles" in r.json().get("detail", ""))


# -- the matrix ---------------------------------------------------------------------------


def test_every_route_has_a_matrix_entry(api: TestClient) -> None:
    routes = app_routes(api)
    missing = [r for r in routes if r not in MATRIX]
    assert not missing, (
        f"routes without an authorisation decision: {missing}. Add each to MATRIX in "
        "tests/api/test_authz_matrix.py: PUBLIC, APPROVER or the set of roles that may call it.")
    stale = sorted(set(MATRIX) - set(routes))
    assert not stale, f"MATRIX names routes the app no longer has: {stale}"


@pytest.mark.slow
def test_every_role_against_every_route(api: TestClient, people: dict[str, Approver]) -> None:
    request_id = pending(api)
    body_of = bodies(request_id, tiered_policy([people["t1"], people["t2"]], [people["c1"]]))
    wrong: list[str] = []
    for key in app_routes(api):
        if key not in MATRIX:
            continue  # the test above names it
        method, path = key.split(" ", 1)
        rule = MATRIX[key]
        outcomes = {}
        for role in (*ROLES, NO_ROLE, ANONYMOUS):
            r = api.request(method, concrete(path, request_id), headers=headers(role),
                            json=body_of.get(key), params=QUERY.get(key))
            assert r.status_code < 500, (key, role, r.status_code, r.text)
            outcomes[role] = r
            if rule == PUBLIC:
                ok = not role_refused(r)
            elif rule == APPROVER:  # a JWT, any JWT, is no approver proof
                ok = r.status_code >= 400 and not role_refused(r)
            else:
                assert isinstance(rule, frozenset)
                ok = role_refused(r) != (role in rule)
            if not ok:
                wrong.append(f"{key} as {role}: {r.status_code} {r.text[:120]}")
        if rule == APPROVER:  # and the JWT changes nothing about the answer
            assert len({o.status_code for o in outcomes.values()}) == 1, key
    assert not wrong, "\n".join(wrong)


# -- tokens -------------------------------------------------------------------------------


def _claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"sub": "u", "tenant": "desk-1", "roles": ["business"],
                            "aud": "ska-custody", "iss": "ska-custody", "iat": now,
                            "exp": now + 300}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def _seg(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _hmac_labelled(alg: str) -> str:
    """Signed with the real secret by HMAC-SHA256, but the header names ``alg``."""
    good = jwt.encode(_claims(), SECRET, algorithm="HS256").split(".")
    header = _seg({"alg": alg, "typ": "JWT"})
    import hashlib
    import hmac
    sig = hmac.new(SECRET.encode(), f"{header}.{good[1]}".encode(), hashlib.sha256).digest()
    return f"{header}.{good[1]}." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()


def _unsigned(alg: str) -> str:
    return f"{_seg({'alg': alg, 'typ': 'JWT'})}.{_seg(_claims())}."


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
NOW = int(time.time())

BAD_TOKENS = {
    "alg none": _unsigned("none"),
    "alg None": _unsigned("None"),
    "alg NONE with a signature": _unsigned("NONE") + "c2ln",
    "RS256": jwt.encode(_claims(), RSA_KEY, algorithm="RS256"),
    "ES256": jwt.encode(_claims(), EC_KEY, algorithm="ES256"),
    "HS512 with the right secret": jwt.encode(_claims(), SECRET, algorithm="HS512"),
    "HMAC with the secret labelled RS256": _hmac_labelled("RS256"),
    "HMAC with the secret labelled ES256": _hmac_labelled("ES256"),
    "HS256 with a wrong key": jwt.encode(_claims(), "x" * 48, algorithm="HS256"),
    "expired": jwt.encode(_claims(exp=NOW - 5), SECRET, algorithm="HS256"),
    "not yet valid": jwt.encode(_claims(nbf=NOW + 3600), SECRET, algorithm="HS256"),
    "wrong audience": jwt.encode(_claims(aud="other-service"), SECRET, algorithm="HS256"),
    "audience list without ours": jwt.encode(_claims(aud=["a", "b"]), SECRET,
                                             algorithm="HS256"),
    "wrong issuer": jwt.encode(_claims(iss="someone"), SECRET, algorithm="HS256"),
    "no exp": jwt.encode(_claims(exp=None), SECRET, algorithm="HS256"),
    "no aud": jwt.encode(_claims(aud=None), SECRET, algorithm="HS256"),
    "no iss": jwt.encode(_claims(iss=None), SECRET, algorithm="HS256"),
    "no sub": jwt.encode(_claims(sub=None), SECRET, algorithm="HS256"),
    "no tenant": jwt.encode(_claims(tenant=None), SECRET, algorithm="HS256"),
    "tenant not a string": jwt.encode(_claims(tenant=["desk-1"]), SECRET, algorithm="HS256"),
    "roles a string": jwt.encode(_claims(roles="business"), SECRET, algorithm="HS256"),
    "roles with a number": jwt.encode(_claims(roles=["business", 1]), SECRET,
                                      algorithm="HS256"),
    "payload not an object": f"{_seg({'alg': 'HS256'})}.{base64.urlsafe_b64encode(b'[1]').decode()}.AA",
    "three dots": "a.b.c",
    "empty segments": "..",
    "not base64": "%%%.%%%.%%%",
    "huge": "A" * 20_000,
    "non-ascii": "jwt-\u00e9\u00e8",
}


@pytest.mark.parametrize("token", list(BAD_TOKENS.values()), ids=list(BAD_TOKENS))
def test_bad_tokens_never_authenticate(api: TestClient, token: str) -> None:
    r = api.get("/v1/audit", headers={"Authorization": f"Bearer {token}".encode()})
    assert r.status_code == 401, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert SECRET not in r.text


@pytest.mark.parametrize("value", ["Basic dTpw", "Bearer", "Bearer ", "Token abc",
                                   issue_token(SECRET, "u", "desk-1", ["auditor"])])
def test_authorization_header_needs_the_bearer_scheme(api: TestClient, value: str) -> None:
    r = api.get("/v1/audit", headers={"Authorization": value})
    assert r.status_code == 401, r.text


def test_the_good_token_is_accepted(api: TestClient) -> None:
    """The negative cases above mean something only if this passes."""
    assert api.get("/v1/audit", headers=headers("auditor")).status_code == 200


# -- tenants ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_another_tenants_request_is_a_404_like_an_unknown_id(api: TestClient,
                                                            method: str) -> None:
    mine = pending(api, "desk-1")
    foreign = api.request(method, f"/v1/request/{mine}", headers=headers("business", "desk-2"))
    unknown = api.request(method, "/v1/request/00000000-0000-0000-0000-000000000000",
                          headers=headers("business", "desk-2"))
    assert foreign.status_code == unknown.status_code == 404
    assert foreign.json() == {**unknown.json(), "detail": unknown.json()["detail"].replace(
        "00000000-0000-0000-0000-000000000000", mine)}
    still = api.get(f"/v1/request/{mine}", headers=headers("business", "desk-1")).json()
    assert still["status"] == "PENDING"  # the foreign DELETE cancelled nothing


def test_a_tenant_cannot_sign_with_another_tenants_key(api: TestClient) -> None:
    """Keys belong to the tenant whose key administrator created them: elsewhere the key
    is a 404 like a label nobody has, and nothing reaches the HSM (the auto tier would
    have signed at once)."""
    before = len(api.app.state.hsm.audit_entries(1, 100_000))  # type: ignore[attr-defined]
    payload = base64.b64encode(transfer_payload("TST", 50, "bob", 1, 5)).decode()
    foreign = sign_as(api, "desk-2", payload)
    unknown = sign_as(api, "desk-2", payload, label="no-such-key")
    assert foreign.status_code == unknown.status_code == 404, foreign.text
    assert foreign.json()["code"] == unknown.json()["code"] == "custody.not_found"
    assert len(api.app.state.hsm.audit_entries(1, 100_000)) == before  # type: ignore[attr-defined]
    with api.app.state.broker.sessions() as s:  # type: ignore[attr-defined]
        assert s.query(SignRequest).count() == 0
    mine = sign_as(api, "desk-1", payload)
    assert mine.status_code == 201 and mine.json()["signRequestId"]  # the owner still can


def sign_as(api: TestClient, tenant: str, payload: str, label: str = "treasury") -> Response:
    return api.post("/v1/sign", json={"signRequest": {
        "payload": payload, "payloadType": "TEST_TRANSFER", "signKeyName": label}},
        headers=headers("business", tenant))


@pytest.mark.parametrize("route", ["/v1/key/treasury", "/v1/key/treasury/address"])
def test_another_tenants_key_cannot_be_read(api: TestClient, route: str) -> None:
    params = {"kind": "ethereum"} if route.endswith("address") else {}
    assert api.get(route, params=params, headers=headers("auditor")).status_code == 200
    r = api.get(route, params=params, headers=headers("auditor", "desk-2"))
    assert r.status_code == 404, r.text
    assert "publicKey" not in r.text and "policy" not in r.text


@pytest.mark.parametrize("action", ["block", "unblock", "modify"])
def test_another_tenants_key_cannot_be_blocked_or_modified(api: TestClient,
                                                           action: str) -> None:
    body: dict[str, Any] = {"label": "treasury"}
    if action == "modify":
        body["policy"] = {"ruleUse": {"tokens": []}}
    r = api.post(f"/v1/{action}", json=body, headers=headers("key_admin", "desk-2"))
    assert r.status_code == 404, r.text
    with api.app.state.broker.sessions() as s:  # type: ignore[attr-defined]
        assert s.query(SignRequest).count() == 0


def test_a_label_is_one_tenants(api: TestClient, people: dict[str, Approver]) -> None:
    """Another tenant cannot create (and so take over) a label in use; a key the HSM
    refused to create leaves its label free."""
    policy = {"ruleUse": {"tokens": [{"groups": [{"quorum": 1, "approvals": [
        {"type": "public_key", "value": people["t1"].spki_b64}]}]}]}}
    body = {"label": "treasury", "algorithm": "EC", "curveOid": "1.3.132.0.10",
            "policy": policy}
    r = api.post("/v1/key", json=body, headers=headers("key_admin", "desk-2"))
    assert r.status_code == 409, r.text
    again = api.post("/v1/key", json=body, headers=headers("key_admin"))  # the owner: HSM says
    assert again.status_code == 409, again.text
    assert api.get("/v1/key/treasury", headers=headers("auditor")).status_code == 200
    bad = {"label": "fresh", "algorithm": "EC", "curveOid": "1.3.132.0.10",
           "policy": {"ruleUse": {"tokens": [{"groups": [{"quorum": 5, "approvals": []}]}]}}}
    refused = api.post("/v1/key", json=bad, headers=headers("key_admin", "desk-2"))
    assert 400 <= refused.status_code < 500, refused.text
    ok = api.post("/v1/key", json={"label": "fresh", "algorithm": "EC",
                                   "curveOid": "1.3.132.0.10", "policy": policy},
                  headers=headers("key_admin"))
    assert ok.status_code == 201, ok.text


# -- approvers ----------------------------------------------------------------------------


def _challenge(api: TestClient, request_id: str) -> str:
    return str(api.app.state.broker.get(request_id).challenge_b64)  # type: ignore[attr-defined]


@pytest.mark.parametrize("route", ["/v1/approval", "/v1/rejection"])
def test_a_task_answered_with_another_approvers_credential_is_refused(
        api: TestClient, people: dict[str, Approver], route: str) -> None:
    request_id = pending(api)
    challenge = _challenge(api, request_id)
    message = base64.b64decode(challenge)
    if route == "/v1/rejection":
        message = REJECT_PREFIX + message
    attempts = [
        (people["t1"], people["t2"]),  # t1 signs, claims to be t2
        (people["x"], people["t1"]),  # an outsider signs, claims to be t1
        (people["x"], people["x"]),  # an outsider as itself
    ]
    for signer, claimed in attempts:
        r = api.post(route, json={
            "id": request_id, "approvalToBeSigned": challenge,
            "signature": base64.b64encode(signer.sign(message)).decode(),
            "approverCertificate": claimed.spki_b64})
        assert 400 <= r.status_code < 500 and r.status_code != 404, (signer.name, r.text)
    body = api.get(f"/v1/request/{request_id}", headers=headers("business")).json()
    assert body["approvedBy"] == [] and body["rejectedBy"] == [] and (
        body["status"] == "PENDING")
    good = api.post(route, json={
        "id": request_id, "approvalToBeSigned": challenge,
        "signature": base64.b64encode(people["t1"].sign(message)).decode(),
        "approverCertificate": people["t1"].spki_b64})
    assert good.status_code == 200, good.text  # the refusals above were about the signer
