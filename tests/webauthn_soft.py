"""A software WebAuthn authenticator for tests: registrations and assertions built by
hand (W3C WebAuthn Level 3 sections 6.1 and 6.5.1) and signed with ``cryptography``."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hsm_emulator.credentials import encode_assertion, passkey_value
from hsm_emulator.flow import Approval

UP, UV, AT = 0x01, 0x04, 0x40


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class SoftPasskey:
    rp_id: str = "localhost"
    origin: str = "http://localhost:8000"
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    credential_id: bytes = field(default_factory=lambda: os.urandom(16))
    counter: int = 0

    @property
    def spki(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    @property
    def value(self) -> str:
        return passkey_value(self.spki, self.rp_id, (self.origin,))

    def entry(self, name: str) -> dict[str, str]:
        return {"type": "webauthn", "value": self.value, "name": name}

    def cose(self) -> bytes:
        n = self.key.public_key().public_numbers()
        return cbor2.dumps({1: 2, 3: -7, -1: 1, -2: n.x.to_bytes(32, "big"),
                            -3: n.y.to_bytes(32, "big")})

    def parts(self, message: bytes, *, kind: str = "webauthn.get", flags: int = UP | UV,
              rp_id: str | None = None, origin: str | None = None,
              challenge: bytes | None = None) -> tuple[bytes, bytes, bytes]:
        """(authenticatorData, clientDataJSON, DER signature) over ``message``."""
        self.counter += 1
        client = json.dumps({"type": kind, "challenge": b64url(
            challenge if challenge is not None else hashlib.sha256(message).digest()),
            "origin": origin or self.origin, "crossOrigin": False}).encode()
        auth = hashlib.sha256((rp_id or self.rp_id).encode()).digest() + bytes(
            [flags]) + struct.pack(">I", self.counter)
        sig = self.key.sign(auth + hashlib.sha256(client).digest(), ec.ECDSA(hashes.SHA256()))
        return auth, client, sig

    def sign(self, message: bytes, **kw: Any) -> bytes:
        return encode_assertion(*self.parts(message, **kw))

    def approve(self, challenge: bytes) -> Approval:
        return Approval("webauthn", self.value, self.sign(challenge))

    def registration(self, challenge: bytes) -> dict[str, Any]:
        """A ``none``-attestation registration response, as the browser sends it."""
        client = json.dumps({"type": "webauthn.create", "challenge": b64url(challenge),
                             "origin": self.origin, "crossOrigin": False}).encode()
        auth = (hashlib.sha256(self.rp_id.encode()).digest() + bytes([UP | UV | AT])
                + struct.pack(">I", 0) + bytes(16)
                + struct.pack(">H", len(self.credential_id)) + self.credential_id
                + self.cose())
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth})
        cid = b64url(self.credential_id)
        return {"id": cid, "rawId": cid, "type": "public-key",
                "response": {"clientDataJSON": b64url(client),
                             "attestationObject": b64url(attestation)},
                "clientExtensionResults": {}}
