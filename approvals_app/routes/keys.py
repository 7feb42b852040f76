"""``/v1/key``: create a key with attributes and SKA policy; read it back."""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from approvals_app.deps import AnyRole, BrokerDep, HsmDep, IdempotencyKey, KeyAdmin
from approvals_app.responses import KeyAddress, KeyPublic
from approvals_app.schemas import KeyCreate
from custody.errors import BadRequest
from custody.idempotency import run_once
from hsm_emulator.model import KeyAlgorithm
from hsm_emulator.results import KeyInfo

router = APIRouter(prefix="/v1", tags=["keys"])

#: TSB names keys by algorithm and curve OID; the HSM by one algorithm name.
CURVES = {
    ("EC", "1.3.132.0.10"): KeyAlgorithm.SECP256K1,
    ("EC", "1.2.840.10045.3.1.7"): KeyAlgorithm.P256,
    ("ED", "1.3.101.112"): KeyAlgorithm.ED25519,
    ("EDDSA", "1.3.101.112"): KeyAlgorithm.ED25519,
}


def algorithm_of(body: KeyCreate) -> KeyAlgorithm:
    name = body.algorithm.upper()
    if body.curveOid is not None:
        algo = CURVES.get((name, body.curveOid))
        if algo is None:
            raise BadRequest(f"unsupported algorithm/curve {body.algorithm}/{body.curveOid}")
        return algo
    try:
        return KeyAlgorithm(name)
    except ValueError:
        raise BadRequest(f"algorithm: one of RSA, EC (+curveOid), ED, "
                         f"{', '.join(a.value for a in KeyAlgorithm)}") from None


def key_json(info: KeyInfo, attestation: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "label": info.label, "algorithm": info.algorithm.value, "keySize": info.key_size,
        "publicKey": base64.b64encode(info.public_key_spki).decode(),
        "rawPublicKey": base64.b64encode(info.public_key).decode(),
        "attributes": info.attributes.to_json(), "policy": info.policy,
        "policyDigest": info.policy_digest,
        "keyStatus": {"blocked": info.blocked, "invalidated": info.invalidated},
        "parent": info.parent, "path": info.path, "attestation": attestation,
    }


@router.post("/key", status_code=201, response_model=KeyPublic)
def create_key(body: KeyCreate, broker: BrokerDep, who: KeyAdmin,
               idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """Sent as stored (a retry with the ``Idempotency-Key`` answers the first result).
    A key without a policy is refused (400): nothing could ever be done with it."""

    if not body.policy:
        raise BadRequest("policy: a key needs one - without it the key can never sign, be "
                         "blocked or have a policy set (see seed 003's policy shape)")

    def work(_ticket: str | None) -> tuple[int, dict[str, Any]]:  # the label names the key
        info = broker.intake.create_key(who.tenant, body.label, algorithm_of(body),
                                 key_size=body.keySize, attributes=body.attributes,
                                 policy=body.policy)
        return 201, key_json(info)

    status, response = run_once(broker.sessions,
                                f"{who.tenant}/{who.subject}", idempotency_key,
                                body.model_dump(), work)
    return JSONResponse(response, status_code=status)


@router.get("/key/{label}", response_model=KeyPublic)
def get_key(label: str, broker: BrokerDep, hsm: HsmDep, who: AnyRole) -> dict[str, Any]:
    broker.intake.check_key(label, who.tenant)
    info = hsm.get_key(label)
    return key_json(info, hsm.attest(label).to_json())


@router.get("/key/{label}/address")
def key_address(label: str, broker: BrokerDep, hsm: HsmDep, who: AnyRole, kind: str,
                network: str = "mainnet", path: str = "") -> KeyAddress:
    broker.intake.check_key(label, who.tenant)
    return KeyAddress(label=label, path=path, kind=kind, network=network,
                      address=hsm.address(label, kind, network, path))
