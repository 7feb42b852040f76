"""Passkey approvals: the HSM verifies WebAuthn assertions itself (credentials.py).

The assertions come from a software authenticator built by hand (tests/webauthn_soft.py);
py_webauthn, an independent verifier, accepts the same assertions, so a bug shared by
the authenticator and the HSM would show.
"""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from webauthn import verify_authentication_response

from hsm_emulator import Hsm
from hsm_emulator.credentials import (
    WEBAUTHN,
    encode_assertion,
    parse_credential,
    passkey_value,
    verify,
)
from hsm_emulator.decoders import transfer_payload
from hsm_emulator.errors import ApprovalRefused, CredentialInvalid, PolicyInvalid
from hsm_emulator.flow import Approval
from tests.helpers import Approver, token
from tests.webauthn_soft import UP, UV, SoftPasskey, b64url

MESSAGE = b"SKA challenge bytes"


@pytest.fixture
def passkey() -> SoftPasskey:
    return SoftPasskey()


def test_a_genuine_assertion_verifies(passkey: SoftPasskey) -> None:
    cred = parse_credential(WEBAUTHN, passkey.value)
    assert verify(cred, MESSAGE, passkey.sign(MESSAGE))
    assert verify(cred, MESSAGE, passkey.sign(MESSAGE, flags=UP))  # UV not required


def test_py_webauthn_accepts_the_same_assertions(passkey: SoftPasskey) -> None:
    auth, client, sig = passkey.parts(MESSAGE)
    verified = verify_authentication_response(
        credential={"id": b64url(passkey.credential_id), "rawId": b64url(passkey.credential_id),
                    "type": "public-key", "clientExtensionResults": {},
                    "response": {"authenticatorData": b64url(auth),
                                 "clientDataJSON": b64url(client), "signature": b64url(sig)}},
        expected_challenge=hashlib.sha256(MESSAGE).digest(), expected_rp_id=passkey.rp_id,
        expected_origin=passkey.origin, credential_public_key=passkey.cose(),
        credential_current_sign_count=0)
    assert verified.new_sign_count == passkey.counter
    assert verify(parse_credential(WEBAUTHN, passkey.value), MESSAGE,
                  encode_assertion(auth, client, sig))


@pytest.mark.parametrize("change", [
    {"challenge": hashlib.sha256(b"another challenge").digest()},
    {"kind": "webauthn.create"},
    {"flags": UV},  # user present flag missing
    {"flags": 0},
    {"rp_id": "evil.example"},  # rpIdHash of another RP
    {"origin": "https://evil.example"},
])
def test_a_wrong_assertion_is_refused(passkey: SoftPasskey, change: dict[str, object]) -> None:
    cred = parse_credential(WEBAUTHN, passkey.value)
    assert not verify(cred, MESSAGE, passkey.sign(MESSAGE, **change))


def test_tampering_after_signing_is_refused(passkey: SoftPasskey) -> None:
    cred = parse_credential(WEBAUTHN, passkey.value)
    auth, client, sig = passkey.parts(MESSAGE)
    other = client.replace(b'"crossOrigin": false', b'"crossOrigin": true')
    assert not verify(cred, MESSAGE, encode_assertion(auth, other, sig))
    assert not verify(cred, MESSAGE, encode_assertion(auth + b"\0", client, sig))
    assert not verify(cred, MESSAGE, encode_assertion(auth, client, sig[:-1] + b"\0"))
    assert not verify(cred, MESSAGE, b"not json")
    assert not verify(cred, MESSAGE, json.dumps({"signature": b64url(sig)}).encode())
    assert not verify(cred, MESSAGE, sig)  # a bare signature is not an assertion
    assert not verify(cred, MESSAGE, encode_assertion(auth, client, sig), "SHA-512")


def test_extensions_or_attested_data_are_refused(passkey: SoftPasskey) -> None:
    cred = parse_credential(WEBAUTHN, passkey.value)
    assert not verify(cred, MESSAGE, passkey.sign(MESSAGE, flags=UP | 0x40))
    assert not verify(cred, MESSAGE, passkey.sign(MESSAGE, flags=UP | 0x80))


def test_user_verification_when_the_policy_asks(passkey: SoftPasskey) -> None:
    cred = parse_credential(WEBAUTHN, passkey_value(passkey.spki, passkey.rp_id,
                                                    (passkey.origin,), True))
    assert verify(cred, MESSAGE, passkey.sign(MESSAGE, flags=UP | UV))
    assert not verify(cred, MESSAGE, passkey.sign(MESSAGE, flags=UP))


def test_the_binding_is_part_of_the_identity(passkey: SoftPasskey) -> None:
    cred = parse_credential(WEBAUTHN, passkey.value)
    moved = parse_credential(WEBAUTHN, passkey_value(passkey.spki, "evil.example",
                                                     ("https://evil.example",)))
    bare = parse_credential("public_key", base64.b64encode(passkey.spki).decode())
    assert len({cred.fingerprint, moved.fingerprint, bare.fingerprint}) == 3
    assert cred.public_key_b64 == bare.public_key_b64
    # the same key as a bare public key does not accept assertions, nor a passkey raw ones
    assert not verify(bare, MESSAGE, passkey.sign(MESSAGE))


@pytest.mark.parametrize("doc", [
    {"origins": ["http://evil.example"], "rpId": "localhost", "userVerification": False},
    {"origins": [], "rpId": "localhost", "userVerification": False},
    {"origins": ["http://localhost:8000"], "rpId": "Local Host", "userVerification": False},
    {"origins": ["http://localhost:8000"], "rpId": "localhost", "userVerification": 1},
    {"origins": ["http://localhost:8000"], "rpId": "localhost", "userVerification": False,
     "extra": 1},
])
def test_malformed_passkey_entries_are_refused(passkey: SoftPasskey,
                                               doc: dict[str, object]) -> None:
    doc = {**doc, "publicKey": base64.b64encode(passkey.spki).decode()}
    value = base64.b64encode(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
    with pytest.raises(CredentialInvalid):
        parse_credential(WEBAUTHN, value.decode())


def test_non_canonical_or_non_p256_entries_are_refused(passkey: SoftPasskey) -> None:
    doc = json.loads(base64.b64decode(passkey.value))
    spaced = base64.b64encode(json.dumps(doc, sort_keys=True).encode()).decode()
    with pytest.raises(CredentialInvalid, match="canonical"):
        parse_credential(WEBAUTHN, spaced)
    ed = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(CredentialInvalid, match="P-256"):
        passkey_value(ed, "localhost", ("http://localhost:8000",))
    with pytest.raises(CredentialInvalid):
        parse_credential(WEBAUTHN, "bm90IGpzb24=")


def test_the_hsm_releases_on_a_passkey_and_a_key(hsm: Hsm, passkey: SoftPasskey) -> None:
    plain = Approver.new("trader-1")
    traders = {"name": "traders", "quorum": 2,
               "approvals": [plain.entry(), passkey.entry("trader-passkey")]}
    hsm.create_key("treasury", "SECP256K1", policy={"ruleUse": {"tokens": [
        token("medium", [traders])]}})
    ch = hsm.begin("treasury", "use", transfer_payload("TST", 1000, "bob", 1), "TEST_TRANSFER")
    raw = Approver("raw", passkey.key)  # the passkey's key signing the bytes directly
    with pytest.raises(ApprovalRefused, match="does not verify"):
        hsm.check_approval(ch.request_id, Approval("webauthn", passkey.value,
                                                   raw.sign(ch.envelope)))
    with pytest.raises(ApprovalRefused, match="does not verify"):
        hsm.check_approval(ch.request_id, passkey.approve(b"another challenge"))
    moved = passkey_value(passkey.spki, "evil.example", ("https://evil.example",))
    with pytest.raises(ApprovalRefused, match="in no group"):
        hsm.check_approval(ch.request_id, Approval(
            "webauthn", moved, passkey.sign(ch.envelope, rp_id="evil.example",
                                            origin="https://evil.example")))
    assert hsm.check_approval(ch.request_id, passkey.approve(ch.envelope))
    result = hsm.execute(ch.request_id, [passkey.approve(ch.envelope),
                                         plain.approve(ch.envelope)])
    assert len(result.signatures) == 1 and len(result.approved_by) == 2


def test_a_policy_refuses_a_bad_passkey_entry(hsm: Hsm, passkey: SoftPasskey) -> None:
    bad = {"type": "webauthn", "value": base64.b64encode(passkey.spki).decode()}
    with pytest.raises(PolicyInvalid):
        hsm.create_key("k", "SECP256K1", policy={"ruleUse": {"tokens": [
            token("t", [{"name": "g", "quorum": 1, "approvals": [bad]}])]}})
