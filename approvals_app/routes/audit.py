"""``/v1/audit``: the HSM's hash-chained log and its signed head, for auditors.

The broker only relays: verification needs nothing but the HSM's public identity key
(``GET /v1/hsm``), so an auditor checks offline that nothing was edited, removed,
reordered or cut - the broker cannot fake a head the HSM did not sign.
"""

from __future__ import annotations

import base64
from typing import Annotated

from fastapi import APIRouter, Query

from approvals_app.auth import Role
from approvals_app.deps import HsmDep, RequireRole
from approvals_app.responses import AuditPage, HsmIdentity
from custody.broker import Principal
from hsm_emulator.initiation import hsm_id

router = APIRouter(prefix="/v1", tags=["audit"])
#: Audit sequence numbers are SQLite/PostgreSQL 64-bit integers; a larger ``start`` is
#: refused here (422) rather than overflowing in the HSM's store (a 500).
MAX_SEQ = 2**63 - 1
Auditor = Annotated[Principal, RequireRole(Role.AUDITOR, Role.SECURITY_OFFICER)]


@router.get("/audit")
def audit(hsm: HsmDep, _who: Auditor, start: int = Query(1, ge=1, le=MAX_SEQ),
          limit: int = Query(1000, ge=1, le=10_000)) -> AuditPage:
    entries = hsm.audit_entries(start, limit)
    return AuditPage(entries=[e.to_json() for e in entries], head=hsm.audit_head().to_json(),
                     checkpoints=[h.to_json() for h in hsm.audit_checkpoints()])


@router.get("/hsm")
def hsm_identity(hsm: HsmDep) -> HsmIdentity:
    """The HSM's public identity key: the root for challenges, attestations, audit; and
    its ``hsmId`` (derived from the key), which a desk's initiation signs."""
    der = hsm.identity_public_key()
    return HsmIdentity(identityPublicKey=base64.b64encode(der).decode(), hsmId=hsm_id(der))
