"""The proven initiator: what a desk signs to ask for a key action, for keys that need it.

A key's policy may name its ``initiators`` (``[{"type", "value", "name"}]``, the same
credentials as a group's approvals). Every request for such a key - ``begin`` and
``sign_now``, any action - must then carry an *initiation*: one initiator's signature over
:func:`initiation_message`, made by the desk's own key, not by the broker. The HSM takes
the initiator from that signature instead of from the broker's word, names it in the
challenge approvers sign (``"initiator"``, ``"initiatorProven": true``), and refuses that
person's approval of the request: segregation of duties holds against a compromised
broker too.

The message, version 1::

    b"ska-initiate-v1:" + canonical_json({"hsmId", "keyLabel", "action", "payloadType",
                                          "payloadDigest", "requestId"})

``payloadDigest`` is the SHA-256 hex of the payload (:func:`payload_digest`; for a
``modify`` request the canonical JSON of the new policy, for ``block`` / ``unblock`` the
empty payload), ``requestId`` the caller-chosen request id (8-64 of ``A-Z a-z 0-9 _ -``)
the request gets in the HSM: an id is used once, so an initiation cannot be replayed for
another request. ``hsmId`` is :func:`hsm_id` of the HSM's identity key (``GET /v1/hsm``
gives both). Pure: no clock, no I/O - desk clients import this module to sign.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .canonical import canonical_json

PREFIX = b"ska-initiate-v1:"


def hsm_id(identity_public_der: bytes) -> str:
    """The HSM's id as its challenges and initiations name it: the first 16 hex digits
    of the SHA-256 of its identity key (DER SubjectPublicKeyInfo)."""
    return hashlib.sha256(identity_public_der).hexdigest()[:16]


def payload_digest(payload: bytes = b"", new_policy: dict[str, Any] | None = None) -> str:
    """SHA-256 hex of what a request carries: the payload, or for ``modify`` the new
    policy as canonical JSON (exactly what the HSM hashes into the challenge)."""
    data = payload if new_policy is None else canonical_json(new_policy)
    return hashlib.sha256(data).hexdigest()


def initiation_message(*, hsm_id: str, key_label: str, action: str, payload_type: str,
                       payload_digest: str, request_id: str) -> bytes:
    """The bytes an initiator signs (with its policy credential, as an approval is
    signed: ECDSA DER or P1363, RSA PKCS#1 v1.5 or PSS, Ed25519, or a WebAuthn assertion
    for a passkey)."""
    return PREFIX + canonical_json({
        "hsmId": hsm_id, "keyLabel": key_label, "action": action,
        "payloadType": payload_type, "payloadDigest": payload_digest,
        "requestId": request_id})
