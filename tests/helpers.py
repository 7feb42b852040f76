"""Test helpers: approvers with real keys, policies in seed 003's shape."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from hsm_emulator.flow import Approval


@dataclass
class Approver:
    """An approval client: holds its key, signs challenges as seed 003's scripts do."""

    name: str
    private: Any

    @classmethod
    def new(cls, name: str, kind: str = "P256") -> Approver:
        if kind == "P256":
            key: Any = ec.generate_private_key(ec.SECP256R1())
        elif kind == "SECP256K1":
            key = ec.generate_private_key(ec.SECP256K1())
        elif kind == "ED25519":
            key = ed25519.Ed25519PrivateKey.generate()
        else:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(name, key)

    @property
    def spki_b64(self) -> str:
        der = self.private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(der).decode()

    def entry(self) -> dict[str, str]:
        return {"type": "public_key", "value": self.spki_b64, "name": self.name}

    def sign(self, message: bytes) -> bytes:
        k = self.private
        if isinstance(k, ed25519.Ed25519PrivateKey):
            return k.sign(message)
        if isinstance(k, rsa.RSAPrivateKey):
            return k.sign(message, padding.PKCS1v15(), hashes.SHA256())
        return k.sign(message, ec.ECDSA(hashes.SHA256()))

    def approve(self, challenge_bytes: bytes) -> Approval:
        return Approval("public_key", self.spki_b64, self.sign(challenge_bytes))


def group(name: str, quorum: int, members: list[Approver]) -> dict[str, Any]:
    return {"name": name, "quorum": quorum, "approvals": [m.entry() for m in members]}


def token(name: str, groups: list[dict[str, Any]], timelock: int = 0, timeout: int = 0,
          conditions: dict[str, Any] | None = None) -> dict[str, Any]:
    t: dict[str, Any] = {"name": name, "timelock": timelock, "timeout": timeout,
                         "groups": groups}
    if conditions is not None:
        t["conditions"] = conditions
    return t


def tiered_policy(traders: list[Approver], compliance: list[Approver], *,
                  asset: str = "TST", small: int = 100, medium: int = 5000,
                  hold: int = 86400, timeout: int = 3 * 86400,
                  admins: list[Approver] | None = None, max_fee: int = 1000,
                  fee_asset: str | None = None) -> dict[str, Any]:
    """The design card's treasury tiers as SKA tokens (every tier caps the fee, as the
    HSM requires of a token with conditions)."""
    admins = admins or traders
    fee = [{"asset": fee_asset or asset, "max": max_fee}]
    return {
        "ruleUse": {"tokens": [
            token("small", [], conditions={"amounts": [{"asset": asset, "max": small}],
                                           "maxFee": fee}),
            token("medium", [group("traders", 2, traders)], timeout=3600,
                  conditions={"amounts": [{"asset": asset, "max": medium}], "maxFee": fee}),
            token("large", [group("traders", 2, traders), group("compliance", 1, compliance)],
                  timelock=hold, timeout=timeout,
                  conditions={"amounts": [{"asset": asset, "min": 0}], "maxFee": fee}),
        ]},
        "ruleBlock": {"tokens": [token("block", [group("admins", 1, admins)])]},
        "ruleUnblock": {"tokens": [token("unblock", [group("admins", 2, admins)])]},
        "ruleModify": {"tokens": [token("modify", [group("admins", 2, admins)])]},
    }
