"""Seed 003's TSB tutorial, run against the server as written.

The tutorial's bodies are used verbatim except for the approver's certificate, which
the tutorial's ``create_rsa.sh`` generates anew for each reader - so does this test,
with the same kind of key (RSA 2048, self-signed X.509, base64 DER without newlines).
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient

from approvals_app.auth import issue_token
from approvals_app.main import create_app
from approvals_app.settings import Settings
from hsm_emulator import Hsm
from tests.conftest import SO, TEST_PASSPHRASE

SECRET = "test-jwt-secret-with-enough-entropy-0123456789"
TUTORIAL_PAYLOAD = "QXBwcm92ZVNpZ25UYXNrUGF5bG9hZA=="  # "ApproveSignTaskPayload"


def rsa_approver(name: str) -> tuple[rsa.RSAPrivateKey, str]:
    """What ./create_rsa.sh approverx produces: a key and a base64 DER certificate."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "CH"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Securosys"),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=365))
            .sign(key, hashes.SHA256()))
    return key, base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


def tutorial_key_body(certificate: str) -> dict[str, Any]:
    return {
        "label": "TSB_TUTORIAL_1-RSA",
        "algorithm": "RSA",
        "keySize": 2048,
        "attributes": {"decrypt": False, "sign": True, "unwrap": False, "destroyable": True},
        "policy": {
            "ruleUse": {"tokens": [{"name": "Token1", "timelock": 0, "timeout": 3600, "groups": [
                {"name": "Group1", "quorum": 1,
                 "approvals": [{"type": "certificate", "value": certificate}]}]}]},
            "keyStatus": {"blocked": False},
        },
    }


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    hsm = Hsm.open(tmp_path / "hsm.sqlite", TEST_PASSPHRASE, so_passphrase=SO)
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'broker.sqlite'}",
                        jwt_secret=SECRET)
    with TestClient(create_app(settings, hsm)) as client:
        yield client
    hsm.close()


def bearer(*roles: str, tenant: str = "desk-1", sub: str = "treasury-app") -> dict[str, str]:
    return {"Authorization": "Bearer " + issue_token(SECRET, sub, tenant, list(roles))}


def signed_timestamp(key: rsa.RSAPrivateKey, certificate: str) -> dict[str, Any]:
    """What ./sign_timestamp_rsa.sh approverx produces."""
    ts = dt.datetime.now(dt.UTC).isoformat()  # each listing signs a fresh timestamp
    sig = key.sign(ts.encode(), padding.PKCS1v15(), hashes.SHA256())
    return {"timestamp": ts, "timestampSignature": base64.b64encode(sig).decode(),
            "approverCertificate": certificate, "timestampDigestAlgorithm": "SHA-256",
            "detailLevel": "level1",
            "paging": {"pageNumber": 0, "pageSize": 1, "sortOrder": "CREATION_DATE_ASC"}}


def test_tutorial_as_written(api: TestClient) -> None:
    key, cert = rsa_approver("approverx")
    r = api.post("/v1/key", json=tutorial_key_body(cert), headers=bearer("key_admin"))
    assert r.status_code == 201, r.text

    r = api.post("/v1/sign", json={"signRequest": {
        "payload": TUTORIAL_PAYLOAD, "payloadType": "UNSPECIFIED",
        "signKeyName": "TSB_TUTORIAL_1-RSA", "signatureAlgorithm": "SHA256_WITH_RSA"}},
        headers=bearer("business"))
    assert r.status_code == 201, r.text
    request_id = r.json()["signRequestId"]

    r = api.post("/v1/filteredSignApprovalTask", json=signed_timestamp(key, cert))
    assert r.status_code == 200, r.text
    task = r.json()["tasks"][0]
    assert task["id"] == request_id and task["detailLevel"] == "level1"

    challenge = base64.b64decode(task["approvalToBeSigned"])
    sig = key.sign(challenge, padding.PKCS1v15(), hashes.SHA256())  # ./sign_rsa.sh
    r = api.post("/v1/approval", json={
        "id": task["id"], "approvalToBeSigned": task["approvalToBeSigned"],
        "signature": base64.b64encode(sig).decode(), "approvalDigestAlgorithm": "SHA-256",
        "approverCertificate": cert})
    assert r.status_code == 200, r.text

    r = api.get(f"/v1/request/{request_id}", headers=bearer("business"))
    body = r.json()
    assert body["status"] == "EXECUTED" and body["notYetApprovedBy"] == []
    assert body["rejectedBy"] == [] and body["executionTime"]
    approver_spki = x509.load_der_x509_certificate(base64.b64decode(cert)).public_key()
    assert body["approvedBy"] == [base64.b64encode(approver_spki.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()]
    public = api.get("/v1/key/TSB_TUTORIAL_1-RSA", headers=bearer("business")).json()
    pub = serialization.load_der_public_key(base64.b64decode(public["publicKey"]))
    assert isinstance(pub, rsa.RSAPublicKey)
    pub.verify(base64.b64decode(body["result"]), base64.b64decode(TUTORIAL_PAYLOAD),
               padding.PKCS1v15(), hashes.SHA256())  # raises if the signature is wrong


def test_replayed_timestamp_and_foreign_approver_refused(api: TestClient) -> None:
    key, cert = rsa_approver("approverx")
    api.post("/v1/key", json=tutorial_key_body(cert), headers=bearer("key_admin"))
    body = signed_timestamp(key, cert)
    assert api.post("/v1/filteredSignApprovalTask", json=body).status_code == 200
    replay = api.post("/v1/filteredSignApprovalTask", json=body)
    assert replay.status_code == 403 and replay.json()["code"] == "hsm.approval_refused"
    r = api.post("/v1/sign", json={"signRequest": {
        "payload": TUTORIAL_PAYLOAD, "payloadType": "UNSPECIFIED",
        "signKeyName": "TSB_TUTORIAL_1-RSA", "signatureAlgorithm": "SHA256_WITH_RSA"}},
        headers=bearer("business"))
    request_id = r.json()["signRequestId"]
    other_key, other_cert = rsa_approver("mallory")
    challenge = api.post("/v1/filteredSignApprovalTask",
                         json=signed_timestamp(key, cert)).json()["tasks"][0]
    sig = other_key.sign(base64.b64decode(challenge["approvalToBeSigned"]), padding.PKCS1v15(),
                         hashes.SHA256())
    r = api.post("/v1/approval", json={
        "id": request_id, "approvalToBeSigned": challenge["approvalToBeSigned"],
        "signature": base64.b64encode(sig).decode(), "approverCertificate": other_cert})
    assert r.status_code == 403 and r.headers["content-type"] == "application/problem+json"
    status = api.get(f"/v1/request/{request_id}", headers=bearer("business")).json()
    assert status["status"] == "PENDING" and status["approvedBy"] == []
