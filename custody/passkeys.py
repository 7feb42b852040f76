"""Passkey (WebAuthn) registration for approver enrolment, with the ``webauthn`` package.

The browser's ``navigator.credentials.create`` gets :func:`registration_options`; its
answer is checked by :func:`verify_registration` (challenge, relying party, origin,
ES256 only) and becomes the policy's ``webauthn`` credential value - bound to this
relying party and its origins, as the HSM verifies assertions later.
"""

from __future__ import annotations

import base64
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from webauthn import generate_registration_options, options_to_json, verify_registration_response
from webauthn.helpers.cose import COSEAlgorithmIdentifier
from webauthn.helpers.decode_credential_public_key import (
    DecodedEC2PublicKey,
    decode_credential_public_key,
)
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from custody.errors import BadRequest
from hsm_emulator.credentials import passkey_value
from hsm_emulator.errors import CredentialInvalid

#: The HSM verifies P-256 ECDSA assertions only.
ALGORITHMS = [COSEAlgorithmIdentifier.ECDSA_SHA_256]


def registration_options(rp_id: str, name: str, user_id: bytes, challenge: bytes) -> str:
    """``PublicKeyCredentialCreationOptions`` as JSON, for the page to pass to the browser."""
    options = generate_registration_options(
        rp_id=rp_id, rp_name="SKA custody approvals", user_name=name, user_id=user_id,
        challenge=challenge, supported_pub_key_algs=ALGORITHMS,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.PREFERRED,
            user_verification=UserVerificationRequirement.PREFERRED))
    return options_to_json(options)


def verify_registration(credential: dict[str, Any], challenge: bytes, rp_id: str,
                        origins: tuple[str, ...]) -> tuple[str, str]:
    """The credential value (for the policy) and the credential id (base64url) of a
    verified registration; :class:`BadRequest` if it does not verify or is not ES256."""
    try:
        verified = verify_registration_response(
            credential=credential, expected_challenge=challenge, expected_rp_id=rp_id,
            expected_origin=list(origins), supported_pub_key_algs=ALGORITHMS)
        key = decode_credential_public_key(verified.credential_public_key)
    except (WebAuthnException, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BadRequest(f"passkey registration does not verify: {exc}") from None
    if not isinstance(key, DecodedEC2PublicKey) or key.crv != 1:
        raise BadRequest("passkey must be an ES256 (P-256) key")
    public = ec.EllipticCurvePublicNumbers(int.from_bytes(key.x, "big"),
                                           int.from_bytes(key.y, "big"),
                                           ec.SECP256R1()).public_key()
    spki = public.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        value = passkey_value(spki, rp_id, tuple(origins))
    except CredentialInvalid as exc:
        raise BadRequest(f"server WebAuthn settings: {exc.reason}") from None
    return value, base64.urlsafe_b64encode(verified.credential_id).rstrip(b"=").decode()
