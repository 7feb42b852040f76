"""The HSM's identity key: it authenticates challenges, attestations and audit heads.

ECDSA P-256 with SHA-256 and raw r||s (IEEE P1363) signatures, so a browser can check a
challenge with WebCrypto alone. Each use has its own domain prefix so a signature made
for one purpose can never be presented as another.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from enum import StrEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from .errors import InvalidInput


class Domain(StrEnum):
    CHALLENGE = "SKA-CHALLENGE-v1"
    ATTESTATION = "SKA-ATTEST-v1"
    AUDIT_HEAD = "SKA-AUDIT-HEAD-v1"


def _message(domain: Domain, body: bytes) -> bytes:
    return domain.value.encode() + b":" + body


@dataclass(frozen=True, repr=False)
class IdentityKey:
    private: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls) -> IdentityKey:
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_der(cls, der: bytes) -> IdentityKey:
        key = serialization.load_der_private_key(der, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InvalidInput("identity key must be EC P-256")
        return cls(key)

    def to_der(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def public_der(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, domain: Domain, body: bytes) -> bytes:
        der = self.private.sign(_message(domain, body), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def __repr__(self) -> str:
        return "IdentityKey(P-256)"


def verify_identity(public_der: bytes, domain: Domain, body: bytes, signature: bytes) -> bool:
    """Check an HSM identity signature offline, from the HSM's public key alone."""
    if len(signature) != 64:
        return False
    try:
        pub = serialization.load_der_public_key(public_der)
    except ValueError:
        return False
    if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.curve.name != "secp256r1":
        return False
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"),
                               int.from_bytes(signature[32:], "big"))
    try:
        pub.verify(der, _message(domain, body), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
