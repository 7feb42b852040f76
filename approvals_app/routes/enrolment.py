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

from fastapi import APIRouter, Query
from pydantic import Field

from approvals_app.auth import Role
from approvals_app.deps import BrokerDep, EnrolmentsDep, HsmDep, KeyAdmin, RequireRole, SettingsDep
from approvals_app.responses import EnrolmentList, EnrolmentPublic, PasskeyOptions, RequestCreated
from approvals_app.schemas import Strict
from approvals_app.services import enrolment as service
from custody import passkeys
from custody.broker import Principal
from custody.enrolment import Enrolment, EnrolmentStatus
from custody.errors import BadRequest

router = APIRouter(prefix="/v1", tags=["enrolment"])
Admin = Annotated[Principal, RequireRole(Role.KEY_ADMIN, Role.SECURITY_OFFICER)]


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


def enrolment_json(row: Enrolment) -> EnrolmentPublic:
    return EnrolmentPublic(
        id=row.id, name=row.name, status=row.status, credentialType=row.credential_type,
        fingerprint=row.fingerprint, hsmFingerprint=row.hsm_fingerprint,
        decidedBy=row.decided_by,
        credential=row.credential if row.status == EnrolmentStatus.CONFIRMED else None)


@router.post("/enrolment", status_code=201)
def enrol_key(body: KeyEnrolBody, store: EnrolmentsDep) -> EnrolmentPublic:
    """Enrol a device key (WebCrypto ECDSA P-256) with its proof of possession."""
    service.make_room(store)
    try:
        proof = base64.b64decode(body.proof, validate=True)
    except ValueError:
        raise BadRequest("proof: not base64") from None
    return enrolment_json(store.request_key(body.name, body.publicKey, body.hsmFingerprint,
                                            proof))


@router.post("/enrolment/passkey", status_code=201)
def passkey_options(body: PasskeyOptionsBody, store: EnrolmentsDep,
                    settings: SettingsDep) -> PasskeyOptions:
    """Start a passkey registration: the options for ``navigator.credentials.create``."""
    service.make_room(store)
    challenge = secrets.token_bytes(32)
    row = store.begin_passkey(body.name, body.hsmFingerprint, challenge)
    return PasskeyOptions(id=row.id, options=passkeys.registration_options(
        settings.webauthn_rp_id, body.name, row.id.encode(), challenge))


@router.post("/enrolment/{enrolment_id}/passkey")
def passkey_finish(enrolment_id: str, body: PasskeyFinishBody, store: EnrolmentsDep,
                   settings: SettingsDep) -> EnrolmentPublic:
    """Verify the registration (the ``webauthn`` package) and store the passkey."""
    value, credential_id = passkeys.verify_registration(
        body.credential, store.registration_challenge(enrolment_id), settings.webauthn_rp_id,
        settings.webauthn_origins)
    return enrolment_json(store.finish_passkey(enrolment_id, value, credential_id))


@router.get("/enrolment/{enrolment_id}")
def get_enrolment(enrolment_id: str, store: EnrolmentsDep) -> EnrolmentPublic:
    """Status for the waiting device; the id is a random UUID only it knows."""
    return enrolment_json(store.get(enrolment_id))


@router.get("/enrolments")
def list_enrolments(_who: Admin, store: EnrolmentsDep,
                    status: EnrolmentStatus | None = Query(None)) -> EnrolmentList:
    return EnrolmentList(enrolments=[enrolment_json(r) for r in store.find(status)])


@router.post("/enrolment/{enrolment_id}/confirm")
def confirm(enrolment_id: str, body: DecisionBody, who: Admin, store: EnrolmentsDep,
            hsm: HsmDep) -> EnrolmentPublic:
    return enrolment_json(service.confirm(store, hsm, enrolment_id, body.hsmFingerprint, who))


@router.post("/enrolment/{enrolment_id}/refuse")
def refuse(enrolment_id: str, who: Admin, store: EnrolmentsDep) -> EnrolmentPublic:
    return enrolment_json(store.decide(enrolment_id, service.decider(who), False))


@router.post("/enrolment/{enrolment_id}/join", status_code=201)
def join(enrolment_id: str, body: JoinBody, who: KeyAdmin, store: EnrolmentsDep,
         broker: BrokerDep) -> RequestCreated:
    """Submit a ``modify`` request adding the credential to a group: the key's
    ``ruleModify`` approvers decide, and the HSM checks, as for any policy change."""
    row = service.request_join(broker, store, who, enrolment_id, body.label, body.rule,
                               body.group)
    return RequestCreated(requestId=row.id, status=row.status)
