"""Security officers for tests: keys of the credential types the HSM verifies, each
signing an officer challenge as an officer's client would (the HSM's signature checked
first), and the ceremony's two steps in one call."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from hsm_emulator.challenge import Challenge, open_challenge
from hsm_emulator.client import HsmOfficer
from hsm_emulator.flow import Approval
from hsm_emulator.officers import OfficerOutcome


@dataclass(frozen=True)
class Officer:
    name: str
    private: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey

    @classmethod
    def ed25519(cls, name: str) -> Officer:
        return cls(name, ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def p256(cls, name: str) -> Officer:
        return cls(name, ec.generate_private_key(ec.SECP256R1()))

    @property
    def value(self) -> str:
        der = self.private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(der).decode()

    @property
    def credential(self) -> dict[str, str]:
        return {"type": "public_key", "value": self.value, "name": self.name}

    def sign(self, challenge: Challenge, hsm_key: bytes | None = None) -> Approval:
        """This officer's signature over the challenge bytes (after checking the HSM's
        own signature on it, if ``hsm_key`` is given)."""
        if hsm_key is not None:
            open_challenge(challenge.envelope, hsm_key)
        data = challenge.envelope
        if isinstance(self.private, ed25519.Ed25519PrivateKey):
            signature = self.private.sign(data)
        else:
            signature = self.private.sign(data, ec.ECDSA(hashes.SHA256()))
        return Approval("public_key", self.value, signature)


def officers(n: int) -> list[Officer]:
    """``n`` officers, alternately Ed25519 and P-256."""
    return [Officer.ed25519(f"officer-{i}") if i % 2 else Officer.p256(f"officer-{i}")
            for i in range(1, n + 1)]


def ceremony(hsm: HsmOfficer, signers: Sequence[Officer], action: str,
             arguments: dict[str, Any] | None = None) -> OfficerOutcome:
    """Begin an officer request, have ``signers`` sign it, execute it."""
    challenge = hsm.officer_begin(action, arguments or {})
    return hsm.officer_execute(challenge.request_id, [o.sign(challenge) for o in signers])
