"""The approval challenge (``approvalToBeSigned``): what an approver sees and signs.

Encoding, version 3 - canonical JSON (:mod:`.canonical`: sorted keys, no spaces, UTF-8;
RFC 8785 on everything but an integral ``hsmTime``, see there), base64 on the wire::

    {"format": "ska-challenge", "version": 3,
     "body": {"requestId", "keyLabel", "action", "payloadType", "payloadDigest",
              "intent" | null, "feeCap" | null, "hsmTime", "hsmTimestamp",
              "policyDigest", "newPolicyDigest" | null, "initiator", "hsmId",
              "units": {asset id: {"symbol", "decimals"} | null},
              "epoch", "seq",
              for a modify also "policyChange": {"from", "to"},
              and for a key whose policy names initiators also
              "initiatorProven": true, "initiatorName"},
     "signature": base64(P1363 ECDSA P-256 over "SKA-CHALLENGE-v1:" + canonical(body))}

Version 2 added ``units`` - the key policy's symbol and decimals (``policy.assets``) of
every asset the intent moves, grants or pays its fee in, ``null`` for an asset the policy
gives none, so an approver sees amounts in units the HSM vouches for, never the
broker's (:func:`hsm_emulator.display.format_amount`) - and, for a ``modify``,
``policyChange``: the current and the new policy as :func:`~hsm_emulator.display.
policy_summary` gives them, for a readable diff. A version 2 body must carry ``units``.

Version 3 added ``epoch`` and ``seq``: the HSM's counter value (:mod:`.nvram`) when it
issued the challenge, whole numbers both. They are for approvers' witnesses
(``custody.witness``, the web page's ``witness.js``): a client remembers the highest
epoch it has seen from this HSM and refuses a challenge from an earlier one - issued
before a restore from backup, so void. ``seq`` is informative only: an older open task
legitimately has a lower one; what must never go back is the signed audit head, which
the broker serves with each task list. A version 3 body must carry both.

Version 1 and 2 challenges (requests opened before an upgrade) are still **accepted**:
the HSM verifies an approval over the stored challenge bytes, whatever their version;
clients show version 1 amounts in base units with the asset id, and count a version 1 or
2 challenge as epoch 0 - it was issued before any restore could exist, so once a client
has seen a restore it refuses them. A broker that relabels an envelope's version gains
nothing: the signature covers the body, ``units``, ``epoch`` and ``seq`` stay in it,
and clients use them wherever they are present.

``initiator`` is the broker's word, unless ``initiatorProven`` is true: then the HSM
verified the initiator's own signature (:mod:`hsm_emulator.initiation`) and names it by
key (``key:`` + SHA-256 hex of its SPKI) and by its name in the policy. Clients must
accept body fields they do not know; the two added here changed neither the envelope
nor how it is verified, so the version is still 1.

The HSM's signature lets an approver client check, with the HSM's public identity key
alone, that the broker did not alter what it shows (what you see is what you sign). The
approver then signs the decoded envelope bytes exactly as received.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from .canonical import canonical_json
from .errors import ApprovalRefused
from .identity import Domain, IdentityKey, verify_identity

FORMAT = "ska-challenge"
VERSION = 3
#: Versions an approver client accepts (see the module docstring for versions 1 and 2).
SUPPORTED_VERSIONS = (1, 2, 3)
MAX_CHALLENGE = 256 * 1024


@dataclass(frozen=True)
class Challenge:
    request_id: str
    envelope: bytes  #: the exact bytes approvers sign

    @property
    def approval_to_be_signed(self) -> str:
        return base64.b64encode(self.envelope).decode()

    @property
    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.envelope)["body"]
        return body

    def to_json(self) -> dict[str, Any]:
        return {"requestId": self.request_id, "approvalToBeSigned": self.approval_to_be_signed}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Challenge:
        return cls(d["requestId"], base64.b64decode(d["approvalToBeSigned"]))


def seal_challenge(identity: IdentityKey, body: dict[str, Any]) -> bytes:
    signature = identity.sign(Domain.CHALLENGE, canonical_json(body))
    return canonical_json({
        "format": FORMAT,
        "version": VERSION,
        "body": body,
        "signature": base64.b64encode(signature).decode(),
    })


def open_challenge(envelope: bytes | str, hsm_public_der: bytes) -> dict[str, Any]:
    """Check a challenge's HSM signature and return its body; for approver clients.

    Accepts the raw envelope bytes or the base64 ``approvalToBeSigned`` string.
    Raises :class:`ApprovalRefused` for anything altered, malformed or of another version.
    """
    if isinstance(envelope, str):
        try:
            envelope = base64.b64decode(envelope, validate=True)
        except (binascii.Error, ValueError):
            raise ApprovalRefused("challenge is not valid base64") from None
    if len(envelope) > MAX_CHALLENGE:
        raise ApprovalRefused("challenge too large")
    try:
        doc = json.loads(envelope)
        body = doc["body"]
        signature = base64.b64decode(doc["signature"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise ApprovalRefused("challenge is not a well-formed SKA challenge") from None
    version = doc.get("version")
    if doc.get("format") != FORMAT or isinstance(version, bool) or (
            version not in SUPPORTED_VERSIONS):
        raise ApprovalRefused("challenge format or version not supported")
    if not isinstance(body, dict):
        raise ApprovalRefused("challenge body must be an object")
    if version >= 2 and not isinstance(body.get("units"), dict):
        raise ApprovalRefused("a version 2 challenge must name its units")
    if version >= 3 and not (_count(body.get("epoch")) and _count(body.get("seq"))):
        raise ApprovalRefused("a version 3 challenge must carry the HSM's epoch and seq")
    if canonical_json(doc) != envelope:
        raise ApprovalRefused("challenge is not in canonical form")
    if not verify_identity(hsm_public_der, Domain.CHALLENGE, canonical_json(body), signature):
        raise ApprovalRefused("challenge was not issued by this HSM or was altered")
    return body


def _count(value: Any) -> bool:
    """A counter value: a whole number, not negative (a bool is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def challenge_epoch(body: dict[str, Any]) -> int:
    """The epoch a challenge was issued in: its ``epoch``, or 0 for a version 1 or 2
    challenge (issued before witnesses, when no restore could exist yet)."""
    epoch = body.get("epoch")
    return epoch if isinstance(epoch, int) and _count(epoch) else 0
