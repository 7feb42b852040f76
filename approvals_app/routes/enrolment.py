"""``/v1/enrolment``: a device becomes an approval credential, if an administrator agrees.

Devices are not logged in: they enrol with a proof that they hold the key (a signature
over the request, or a verified WebAuthn registration) and then wait. A ``key_admin`` or
``security_officer`` confirms, restating the HSM identity fingerprint the device pinned
(read from a trusted channel, e.g. ``custody`` on the HSM host), so a device that was
shown another HSM key is never confirmed. ``/join`` turns a confirmed enrolment into a
group member only through the key's ``ruleModify``: it submits a modify request that the
key's admins must approve.
"""

from __future__ import annotations

import base64
import secrets
from typing import Annotated, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import APIRouter, Depends, Query, Request
from pydantic import Field
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

from approvals_app.auth import CurrentPrincipal, require
from approvals_app.schemas import Strict
from custody.enrolment import (
    Enrolment,
    Enrolments,
    EnrolmentStatus,
    entry,
    hsm_fingerprint,
    policy_with_member,
)
from custody.errors import BadRequest, Forbidden, RateLimited
from hsm_emulator.credentials import passkey_value
from hsm_emulator.errors import CredentialInvalid
from hsm_emulator.model import Action

router = APIRouter(prefix="/v1", tags=["enrolment"])
#: Undecided enrolments allowed at once: strangers can ask, not fill the table.
MAX_OPEN = 200
ADMINS = ("key_admin", "security_officer")


class KeyEnrolBody(Strict):
    name: str = Field(min_length=1, max_length=64)
    publicKey: str = Field(max_length=512)  #: base64 DER SPKI, P-256
    hsmFingerprint: str = Field(max_length=64)
    proof: str = Field(max_length=256)  #: base64 signature over the enrolment message


class PasskeyOptionsBody(Strict):
    name: str = Field(min_length=1, max_length=64)
    hsmFingerprint: str = Field(max_length=64)


class PasskeyFinishBody(Strict):
    credential: dict[str, Any]  #: the PublicKeyCredential as JSON (registration)


class DecisionBody(Strict):
    hsmFingerprint: str = Field(max_length=64)  #: the HSM key the admin knows


class JoinBody(Strict):
    label: str = Field(min_length=1, max_length=128)
    group: str = Field(min_length=1, max_length=128)
    rule: str = Field(default="ruleUse", max_length=16)


def enrolments(request: Request) -> Enrolments:
    return Enrolments(request.app.state.broker.sessions)


Store = Annotated[Enrolments, Depends(enrolments)]


def enrolment_json(row: Enrolment) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "status": row.status,
            "credentialType": row.credential_type, "fingerprint": row.fingerprint,
            "hsmFingerprint": row.hsm_fingerprint, "decidedBy": row.decided_by,
            "credential": row.credential if row.status == EnrolmentStatus.CONFIRMED else None}


def _room(store: Enrolments) -> None:
    store.drop_stale_registrations()
    if len(store.find(EnrolmentStatus.PENDING)) + len(
            store.find(EnrolmentStatus.REGISTERING)) >= MAX_OPEN:
        raise RateLimited("too many enrolments wait for a decision; try again later")


@router.post("/enrolment", status_code=201)
def enrol_key(body: KeyEnrolBody, store: Store) -> dict[str, Any]:
    """Enrol a device key (WebCrypto ECDSA P-256) with its proof of possession."""
    _room(store)
    try:
        proof = base64.b64decode(body.proof, validate=True)
    except ValueError:
        raise BadRequest("proof: not base64") from None
    return enrolment_json(store.request_key(body.name, body.publicKey, body.hsmFingerprint,
                                            proof))


@router.post("/enrolment/passkey", status_code=201)
def passkey_options(body: PasskeyOptionsBody, store: Store, request: Request) -> dict[str, Any]:
    """Start a passkey registration: the options for ``navigator.credentials.create``."""
    _room(store)
    settings = request.app.state.settings
    challenge = secrets.token_bytes(32)
    row = store.begin_passkey(body.name, body.hsmFingerprint, challenge)
    options = generate_registration_options(
        rp_id=settings.webauthn_rp_id, rp_name="SKA custody approvals",
        user_name=body.name, user_id=row.id.encode(), challenge=challenge,
        supported_pub_key_algs=[COSEAlgorithmIdentifier.ECDSA_SHA_256],
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.PREFERRED,
            user_verification=UserVerificationRequirement.PREFERRED))
    return {"id": row.id, "options": options_to_json(options)}


@router.post("/enrolment/{enrolment_id}/passkey")
def passkey_finish(enrolment_id: str, body: PasskeyFinishBody, store: Store,
                   request: Request) -> dict[str, Any]:
    """Verify the registration (the ``webauthn`` package) and store the passkey."""
    settings = request.app.state.settings
    challenge = store.registration_challenge(enrolment_id)
    try:
        verified = verify_registration_response(
            credential=body.credential, expected_challenge=challenge,
            expected_rp_id=settings.webauthn_rp_id,
            expected_origin=list(settings.webauthn_origins),
            supported_pub_key_algs=[COSEAlgorithmIdentifier.ECDSA_SHA_256])
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
        value = passkey_value(spki, settings.webauthn_rp_id, tuple(settings.webauthn_origins))
    except CredentialInvalid as exc:
        raise BadRequest(f"server WebAuthn settings: {exc.reason}") from None
    credential_id = base64.urlsafe_b64encode(verified.credential_id).rstrip(b"=").decode()
    return enrolment_json(store.finish_passkey(enrolment_id, value, credential_id))


@router.get("/enrolment/{enrolment_id}")
def get_enrolment(enrolment_id: str, store: Store) -> dict[str, Any]:
    """Status for the waiting device; the id is a random UUID only it knows."""
    return enrolment_json(store.get(enrolment_id))


@router.get("/enrolments")
def list_enrolments(who: CurrentPrincipal, store: Store,
                    status: EnrolmentStatus | None = Query(None)) -> dict[str, Any]:
    require(who, *ADMINS)
    return {"enrolments": [enrolment_json(r) for r in store.find(status)]}


@router.post("/enrolment/{enrolment_id}/confirm")
def confirm(enrolment_id: str, body: DecisionBody, who: CurrentPrincipal, store: Store,
            request: Request) -> dict[str, Any]:
    require(who, *ADMINS)
    row = store.get(enrolment_id)
    actual = hsm_fingerprint(request.app.state.hsm.identity_public_key())
    if body.hsmFingerprint != actual:
        raise BadRequest("hsmFingerprint is not this HSM's identity key")
    if row.hsm_fingerprint != actual:
        raise Forbidden("the device pinned another HSM identity key: it may have been "
                        "shown a forged one; refuse this enrolment and enrol again")
    return enrolment_json(store.decide(enrolment_id, f"{who.tenant}/{who.subject}", True))


@router.post("/enrolment/{enrolment_id}/refuse")
def refuse(enrolment_id: str, who: CurrentPrincipal, store: Store) -> dict[str, Any]:
    require(who, *ADMINS)
    return enrolment_json(store.decide(enrolment_id, f"{who.tenant}/{who.subject}", False))


@router.post("/enrolment/{enrolment_id}/join", status_code=201)
def join(enrolment_id: str, body: JoinBody, who: CurrentPrincipal, store: Store,
         request: Request) -> dict[str, Any]:
    """Submit a ``modify`` request adding the credential to a group: the key's
    ``ruleModify`` approvers decide, and the HSM checks, as for any policy change."""
    require(who, "key_admin")
    member = entry(store.get(enrolment_id))
    broker = request.app.state.broker
    policy = broker.hsm.get_key(body.label).policy
    new_policy = policy_with_member(policy, body.rule, body.group, member)
    row = broker.submit(who, body.label, Action.MODIFY, b"", "UNSPECIFIED", None, None,
                        new_policy=new_policy)
    return {"requestId": row.id, "status": row.status}
