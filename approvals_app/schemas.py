"""Request and response bodies of the TSB-compatible /v1 API (seed 003's shapes).

Unknown fields are refused and every string has a bound, so hostile bodies get a clear
422 before anything is touched. Policies are validated by the HSM's own parser.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hsm_emulator.flow import Approval

B64_MAX = 1_500_000  #: a 1 MiB payload, base64-encoded, with room
CRED_MAX = 16_384
#: Exactly what ``base64.b64decode(..., validate=True)`` accepts, declared in the OpenAPI
#: spec so clients (and fuzzers) know a base64 field before the validator says so.
B64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
B64_SCHEMA: dict[str, Any] = {"pattern": B64_PATTERN}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64") from None


class KeyCreate(Strict):
    label: str = Field(min_length=1, max_length=128)
    algorithm: str = Field(max_length=32)
    keySize: int | None = Field(default=None, ge=256, le=8192)
    curveOid: str | None = Field(default=None, max_length=64)
    attributes: dict[str, bool] | None = None
    policy: dict[str, Any] | None = None


class SignRequestBody(Strict):
    payload: str = Field(max_length=B64_MAX, json_schema_extra=B64_SCHEMA)
    payloadType: str = Field(default="UNSPECIFIED", max_length=128)
    signKeyName: str = Field(min_length=1, max_length=128)
    signatureAlgorithm: str | None = Field(default=None, max_length=64)
    metaData: dict[str, Any] | str | None = None
    metaDataSignature: str | None = Field(default=None, max_length=4096)

    @field_validator("payload")
    @classmethod
    def _payload_b64(cls, v: str) -> str:
        _b64(v, "payload")
        return v

    def payload_bytes(self) -> bytes:
        return base64.b64decode(self.payload)


class InitiationBody(Strict):
    """A desk's proof that it asked for this request (keys whose policy names
    ``initiators``): its signature over ``hsm_emulator.initiation.initiation_message``
    for this HSM, key, action, payload and ``requestId`` - which becomes the request's
    id, once only (it is also the request's idempotency ticket)."""

    requestId: str = Field(pattern=r"^[A-Za-z0-9_-]{8,64}$")
    credentialType: Literal["certificate", "public_key", "webauthn"]
    credential: str = Field(max_length=CRED_MAX)
    signature: str = Field(max_length=4096, json_schema_extra=B64_SCHEMA)
    digest: str = Field(default="SHA-256", max_length=16)

    @field_validator("signature")
    @classmethod
    def _sig_b64(cls, v: str) -> str:
        _b64(v, "signature")
        return v

    def approval(self) -> Approval:
        return Approval(self.credentialType, self.credential, base64.b64decode(self.signature),
                        self.digest)


class SignBody(Strict):
    signRequest: SignRequestBody
    initiation: InitiationBody | None = None


class Paging(Strict):
    pageNumber: int = Field(default=0, ge=0, le=10_000)
    pageSize: int = Field(default=20, ge=1, le=100)
    sortOrder: Literal["CREATION_DATE_ASC", "CREATION_DATE_DESC"] = "CREATION_DATE_ASC"


class TaskFilter(Strict):
    timestamp: str = Field(max_length=64)
    timestampSignature: str = Field(max_length=4096)
    approverCertificate: str = Field(max_length=CRED_MAX)
    timestampDigestAlgorithm: str = Field(default="SHA-256", max_length=16)
    detailLevel: Literal["level1", "level2", "level3"] = "level1"
    paging: Paging = Paging()


class ApprovalBody(Strict):
    id: str = Field(max_length=64)
    approvalToBeSigned: str = Field(max_length=400_000)
    signature: str = Field(max_length=4096, json_schema_extra=B64_SCHEMA)
    approvalDigestAlgorithm: str = Field(default="SHA-256", max_length=16)
    approverCertificate: str = Field(max_length=CRED_MAX)

    @field_validator("signature")
    @classmethod
    def _sig_b64(cls, v: str) -> str:
        _b64(v, "signature")
        return v

    def signature_bytes(self) -> bytes:
        return base64.b64decode(self.signature)


class KeyActionBody(Strict):
    label: str = Field(min_length=1, max_length=128)
    policy: dict[str, Any] | None = None  #: the new policy, for modify only
    initiation: InitiationBody | None = None  #: for keys whose policy names initiators


class AddressChunk(Strict):
    """One chunk of an address list upload (the HSM validates each address)."""

    addresses: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        min_length=1, max_length=5_000)
