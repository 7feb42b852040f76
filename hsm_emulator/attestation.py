"""Offline verification of key attestations, from the HSM's public identity key alone."""

from __future__ import annotations

import json
from typing import Any

from .errors import TamperDetected
from .identity import Domain, verify_identity
from .results import Attestation


def verify_attestation(attestation: Attestation, identity_public_der: bytes) -> dict[str, Any]:
    """Return the attested statement if the HSM signed it; raise :class:`TamperDetected`."""
    if not verify_identity(identity_public_der, Domain.ATTESTATION, attestation.statement,
                           attestation.signature):
        raise TamperDetected("attestation was not signed by this HSM or was altered")
    statement: dict[str, Any] = json.loads(attestation.statement)
    if statement.get("format") != "ska-attestation" or statement.get("version") != 1:
        raise TamperDetected("attestation format not recognised")
    return statement
