"""Secrets never reach logs, error messages or API responses.

The service runs with canary secrets - the JWT secret, the tokens it accepts, the HSM
passphrase, the security officer's passphrase, the approvers' private keys and the HSM
socket secret (the HSM as its own process, opened from the settings as in production) -
through good and hostile flows, with the JSON logs captured at DEBUG. Every response
(headers and body), every log line and every error message is then searched for each
secret as text, hex and base64 (standard and URL-safe, at each of the three alignments a
secret can take inside a longer base64 text).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import io
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from fastapi.testclient import TestClient
from httpx import Response

from approvals_app import logs
from approvals_app.auth import FailureLimiter, issue_token
from approvals_app.main import create_app
from approvals_app.settings import Settings
from custody.broker import REJECT_PREFIX
from hsm_emulator import Hsm, Passphrase
from hsm_emulator.decoders import transfer_payload
from hsm_emulator.errors import HsmError
from hsm_emulator.remote import RemoteHsmClient, serve
from tests.helpers import Approver, tiered_policy

JWT_SECRET = "canary-jwt-secret-7f3a9c1e5b2d4f6a8c0e2b4d6f8a0c2e"
HSM_PASSPHRASE = "canary-hsm-passphrase-b81d2e"
SO_PASSPHRASE = "canary-so-passphrase-4c9e1a"
#: Secret files are read with surrounding white space trimmed (a trailing newline), so the
#: canary must not start or end with a white-space byte (os.urandom alone did, 1 run in 20).
SOCKET_SECRET = b"k" + os.urandom(30) + b"k"


def forms(secret: bytes) -> set[str]:
    """The ways a secret could show up in text."""
    out = {secret.hex(), secret.hex().upper()}
    with contextlib.suppress(UnicodeDecodeError):
        out.add(secret.decode())
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        for pad in range(3):  # the secret's first byte at each position of a 3-byte group
            text = encode(b"\0" * pad + secret).decode().rstrip("=")
            out.add(text[4 if pad else 0:-4])  # the chars that depend on the secret only
    return {f for f in out if len(f) >= 16}


def private_material(who: Approver) -> list[bytes]:
    key = who.private
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    else:
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        raw = key.private_numbers().private_value.to_bytes(32, "big")
    return [der, raw]


class Recorder:
    """Every response and every JSON log line, from one place."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.texts: list[str] = []

    def __call__(self, method: str, url: str, **kwargs: Any) -> Response:
        r: Response = self.client.request(method, url, **kwargs)
        self.texts.append(r.text)
        self.texts.append(repr(dict(r.headers)))
        return r


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    # httpx logs each URL it requests: here that is the test's own client, not the service
    handler.addFilter(lambda record: not record.name.startswith(("httpx", "httpcore")))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    root.setLevel(old_level)


@pytest.fixture
def service(tmp_path: Path, json_logs: io.StringIO) -> Iterator[Recorder]:
    """The HSM in its own thread behind the socket protocol; the API opens it from the
    settings (``hsm_url`` + ``hsm_secret_file``) as a deployment does."""
    hsm = Hsm.open(tmp_path / "hsm.sqlite", Passphrase(HSM_PASSPHRASE, scrypt_n=2**10),
                   so_passphrase=SO_PASSPHRASE)
    address, ready, stop = f"unix:{tmp_path / 'hsm.sock'}", threading.Event(), threading.Event()
    threading.Thread(target=serve, args=(hsm, address, SOCKET_SECRET),
                     kwargs={"ready": ready, "stop": stop}, daemon=True).start()
    assert ready.wait(10)
    secret_file = tmp_path / "hsm.secret"
    secret_file.write_bytes(SOCKET_SECRET)
    secret_file.chmod(0o600)
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'broker.sqlite'}",
                        jwt_secret=JWT_SECRET, hsm_url=address,
                        hsm_secret_file=str(secret_file), hsm_passphrase=HSM_PASSPHRASE,
                        hsm_so_passphrase=SO_PASSPHRASE)
    assert HSM_PASSPHRASE not in repr(settings) and JWT_SECRET not in repr(settings)
    app = create_app(settings, scheduler=False)
    app.state.limiter = FailureLimiter(limit=10**9)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Recorder(client)
    stop.set()
    hsm.close()


def flows(call: Recorder, people: dict[str, Approver], tokens: dict[str, str],
          tmp_path: Path) -> list[str]:
    """Good and hostile calls; returns the error messages raised on the way."""
    def auth(role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens[role]}"}

    errors: list[str] = []
    policy = tiered_policy([people["t1"], people["t2"], people["t3"]], [people["c1"]])
    assert call("POST", "/v1/key", headers=auth("key_admin"), json={
        "label": "treasury", "algorithm": "EC", "curveOid": "1.3.132.0.10",
        "policy": policy}).status_code == 201
    call("POST", "/v1/key", headers=auth("key_admin"), json={"label": "treasury",
                                                             "algorithm": "EC"})
    ids = []
    for nonce, amount in enumerate((50, 1000, 1000, 10**6)):
        payload = base64.b64encode(transfer_payload("TST", amount, "bob", 1, nonce)).decode()
        r = call("POST", "/v1/sign", headers=auth("business"), json={"signRequest": {
            "payload": payload, "payloadType": "TEST_TRANSFER", "signKeyName": "treasury"}})
        ids.append(r.json()["signRequestId"])
    for who, request_id, reject in (("t1", ids[1], False), ("t2", ids[1], False),
                                    ("t1", ids[2], True), ("x", ids[3], False)):
        ts = dt.datetime.now(dt.UTC).isoformat()
        call("POST", "/v1/filteredSignApprovalTask", json={
            "timestamp": ts, "approverCertificate": people[who].spki_b64,
            "timestampSignature": base64.b64encode(people[who].sign(ts.encode())).decode(),
            "detailLevel": "level3"})
        challenge = call("GET", f"/v1/request/{request_id}", headers=auth("business"))
        row_challenge = call.client.app.state.broker.get(request_id).challenge_b64  # type: ignore[attr-defined]
        message = base64.b64decode(row_challenge)
        message = REJECT_PREFIX + message if reject else message
        call("POST", "/v1/rejection" if reject else "/v1/approval", json={
            "id": request_id, "approvalToBeSigned": row_challenge,
            "signature": base64.b64encode(people[who].sign(message)).decode(),
            "approverCertificate": people[who].spki_b64})
        assert challenge.status_code == 200
    call("DELETE", f"/v1/request/{ids[3]}", headers=auth("business"))
    for request_id in ids:
        call("GET", f"/v1/request/{request_id}", headers=auth("auditor"))
    call("GET", "/v1/audit", headers=auth("auditor"))
    call("GET", "/v1/key/treasury", headers=auth("key_admin"))
    # hostile: forged and expired tokens, a token in the wrong place, bad bodies
    forged = issue_token("not-the-secret-" * 3, "u", "desk-1", ["auditor"])
    expired = issue_token(JWT_SECRET, "u", "desk-1", ["auditor"], lifetime=-60)
    for bad in (forged, expired, tokens["business"] + "x", "garbage"):
        call("GET", "/v1/audit", headers={"Authorization": f"Bearer {bad}"})
    # a token pasted into a URL: the 404 names the id it was given (the caller's own
    # input, so not recorded as a response here), but the access log must not show it
    call.client.get(f"/v1/request/{tokens['business']}", headers=auth("business"))
    call("POST", "/v1/sign", headers=auth("business"), json={"signRequest": {
        "payload": tokens["business"], "signKeyName": JWT_SECRET}})
    call("POST", "/v1/key", headers=auth("key_admin"), json={"label": "k", "algorithm": "ED",
                                                             "policy": {"x": SO_PASSPHRASE}})
    call("GET", "/readyz")
    call("GET", "/metrics")
    # the operator side: a wrong socket secret, a wrong passphrase
    try:
        RemoteHsmClient(call.client.app.state.settings.hsm_url,  # type: ignore[attr-defined]
                        b"wrong-secret-" + SOCKET_SECRET[:8]).identity_public_key()
    except (HsmError, OSError) as exc:
        errors.append(f"{exc!r} {exc}")
    try:
        Hsm.open(tmp_path / "hsm.sqlite", Passphrase(HSM_PASSPHRASE + "-wrong", scrypt_n=2**10))
    except (HsmError, OSError) as exc:
        errors.append(f"{exc!r} {exc}")
    return errors


def test_no_secret_in_logs_errors_or_responses(service: Recorder, json_logs: io.StringIO,
                                               people: dict[str, Approver],
                                               tmp_path: Path) -> None:
    tokens = {role: issue_token(JWT_SECRET, f"{role}-user", "desk-1", [role])
              for role in ("business", "key_admin", "auditor")}
    errors = flows(service, people, tokens, tmp_path)
    assert len(errors) == 2, errors  # both operator mistakes were refused
    log_text = json_logs.getvalue()
    assert '"msg":"request"' in log_text  # the access log was captured
    secrets: dict[str, bytes] = {
        "JWT secret": JWT_SECRET.encode(), "HSM passphrase": HSM_PASSPHRASE.encode(),
        "SO passphrase": SO_PASSPHRASE.encode(), "HSM socket secret": SOCKET_SECRET}
    for role, token in tokens.items():
        secrets[f"{role} token"] = token.encode()
        secrets[f"{role} token signature"] = base64.urlsafe_b64decode(
            token.rsplit(".", 1)[1] + "==")
    for name, who in people.items():
        for i, material in enumerate(private_material(who)):
            secrets[f"approver {name} private key ({('PKCS8', 'raw')[i]})"] = material
    haystacks = {"responses": "\n".join(service.texts), "logs": log_text,
                 "errors": "\n".join(errors)}
    # positive controls: what is public does show up, so the haystacks are the real ones
    assert people["t1"].spki_b64 in haystacks["responses"]
    assert "client authentication failed" in log_text  # the HSM's own warning, captured
    # the hostile calls above put the JWT secret and a token into request bodies and a
    # URL on purpose; what matters is that nothing echoes them back
    leaks = [f"{secret} in {where} (as {form[:12]}...)"
             for secret, value in secrets.items() for form in forms(value)
             for where, text in haystacks.items() if form in text]
    assert not leaks, leaks


def test_forms_find_a_secret_inside_longer_encodings() -> None:
    """The scan above is only as good as this: embedded at any offset, in any encoding."""
    secret = os.urandom(24)
    for prefix in (b"", b"a", b"ab", b"abc"):
        blob = prefix + secret + b"tail"
        texts = [base64.b64encode(blob).decode(), base64.urlsafe_b64encode(blob).decode(),
                 blob.hex()]
        for text in texts:
            assert any(f in text for f in forms(secret)), (prefix, text)
