"""The approver web page (``/approver/``) and the two calls only it needs.

The page is static (``approvals_app/approver_page/``) and holds no secrets: its key lives
in the browser's IndexedDB, non-extractable. It lists tasks here - a signed timestamp,
as for ``/v1/filteredSignApprovalTask``, and additionally a *confirmed enrolment* of the
credential - and approves or rejects through ``/v1/approval`` / ``/v1/rejection``, where
the HSM verifies the signature itself.

Everything this router adds to a task (who approved, tiers, deadlines) is the broker's
word, shown as such; what is signed is the HSM-signed challenge, which the page verifies
with WebCrypto before it offers Approve or Reject.

Where the HSM identity key comes from: it is pinned *once*, at enrolment, and never
fetched again. The page reads ``GET /v1/hsm``, refuses it unless it matches the
fingerprint in the enrolment link (``/approver/#hsm=<sha256 hex>``, which the security
officer hands out with the link, out of band), shows the fingerprint, and stores the key
in IndexedDB beside the device key. The administrator who confirms the enrolment must
restate the HSM fingerprint, and a device that pinned another key is refused. So a broker
that later swaps the key or alters a challenge is caught by the page; one that lies at
enrolment is caught by the link's pin or by the administrator. The remaining trust is in
the page's own code, which this origin serves: for the full guarantee, serve
``approver_page/`` from a separate static origin the broker cannot write to.
Approvals are not gated by enrolment here: the HSM verifies every one itself.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse
from pydantic import Field

from approvals_app.deps import BrokerDep, EventsDep, TreasuryDep
from approvals_app.responses import (
    EarlierAttempt,
    GroupProgress,
    PageTask,
    PageTaskList,
    SignedHeadPublic,
    TokenProgress,
)
from approvals_app.routes.approvals import earlier_attempts
from approvals_app.schemas import CRED_MAX, Strict
from approvals_app.sse import documented, sse, stream_response
from custody.broker import Broker, Task
from custody.db import SignRequest
from custody.enrolment import Enrolments
from custody.errors import NotFound
from hsm_emulator.credentials import Credential
from hsm_emulator.errors import HsmError
from hsm_emulator.flow import Approval
from hsm_emulator.model import Action
from hsm_emulator.policy import parse_policy

router = APIRouter(tags=["approver page"])
PAGE = Path(__file__).resolve().parent.parent / "approver_page"
FILES = {"index.html": ("index.html", "text/html; charset=utf-8"),
         "app.js": ("app.js", "text/javascript; charset=utf-8"),
         "crypto.js": ("crypto.js", "text/javascript; charset=utf-8"),
         "view.js": ("view.js", "text/javascript; charset=utf-8"),
         "witness.js": ("witness.js", "text/javascript; charset=utf-8"),
         "style.css": ("style.css", "text/css; charset=utf-8")}
#: The page runs only its own script: no inline code, no third-party origins, no frames.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache", "Cross-Origin-Opener-Policy": "same-origin",
}


class SignedTimestamp(Strict):
    timestamp: str = Field(max_length=64)
    timestampSignature: str = Field(max_length=4096)
    approverCertificate: str = Field(max_length=CRED_MAX)


@router.get("/approver", include_in_schema=False)
def approver_root() -> RedirectResponse:
    return RedirectResponse("/approver/", status_code=308)


@router.get("/approver/", include_in_schema=False)
def approver_index() -> FileResponse:
    return approver_file("index.html")


@router.get("/approver/{name}", include_in_schema=False)
def approver_file(name: str) -> FileResponse:
    """Only the page's own files, by an allowlist (no path ever comes from the URL)."""
    if name not in FILES:
        raise NotFound("no such file")
    filename, media = FILES[name]
    return FileResponse(PAGE / filename, media_type=media, headers=SECURITY_HEADERS)


def _approver(broker: Broker, timestamp: str, signature: str, certificate: str,
              ) -> Credential:
    """The signed-timestamp proof (each timestamp once), then a confirmed enrolment."""
    cred = broker.approvers.authenticate_approver(certificate, timestamp, signature)
    Enrolments(broker.sessions).confirmed(cred)
    return cred


@router.post("/approver/api/tasks")
def page_tasks(body: SignedTimestamp, broker: BrokerDep,
               treasury: TreasuryDep) -> PageTaskList:
    cred = _approver(broker, body.timestamp, body.timestampSignature,
                     body.approverCertificate)
    tasks = broker.approvers.tasks(cred, 0, 50, True)
    again = treasury.ledger.earlier_attempts([t.request.id for t in tasks])
    return PageTaskList(tasks=[task_view(broker, t, again.get(t.request.id, []))
                               for t in tasks],
                        auditHead=SignedHeadPublic(**broker.hsm.audit_head().to_json()))


@router.get("/approver/api/events", response_class=StreamingResponse, responses=documented(
    "Server-sent events: `hello`, then `task` ({id, status}) per change"))
async def page_events(request: Request, broker: BrokerDep, hub: EventsDep,
                      timestamp: str = Query(max_length=64),
                      signature: str = Query(max_length=4096),
                      certificate: str = Query(max_length=CRED_MAX)) -> StreamingResponse:
    """SSE: ``hello`` once, then ``task`` ({id, status}) whenever one of this approver's
    requests changes; the page fetches details through ``/approver/api/tasks``."""
    cred = await asyncio.to_thread(_approver, broker, timestamp, signature, certificate)
    return stream_response(request, hub, hub.subscribe(), broker, cred,
                           sse("hello", {"fingerprint": cred.fingerprint}),
                           lambda event: {"id": event["id"], "status": event["status"]})


def task_view(broker: Broker, task: Task, earlier: list[dict[str, object]]) -> PageTask:
    """A task as the page shows it: the challenge, plus the broker's progress notes -
    and, for a transfer signed again, its earlier transactions (``earlier``)."""
    r: SignRequest = task.request
    records = broker.approvals(r.id)
    names = _names(broker, r)
    approved = [names.get(a.approver, a.approver[:16]) for a in records if not a.rejected]
    rejected = [names.get(a.approver, a.approver[:16]) for a in records if a.rejected]
    return PageTask(id=r.id, approvalToBeSigned=r.challenge_b64, keyLabel=r.key_label,
                    action=r.action, status=r.status, initiator=r.initiator,
                    approvedBy=approved, rejectedBy=rejected,
                    tokens=_tokens(broker, r, records),
                    earlierAttempts=[EarlierAttempt(**a) for a in earlier_attempts(earlier)])


def _names(broker: Broker, r: SignRequest) -> dict[str, str]:
    info = broker.hsm.get_key(r.key_label)
    policy = parse_policy({k: v for k, v in info.policy.items() if k != "keyStatus"})
    rule = policy.rule(Action(r.action))
    return {a.fingerprint: a.name or a.fingerprint[:16] for t in (rule.tokens if rule else ())
            for g in t.groups for a in g.approvers}


def _tokens(broker: Broker, r: SignRequest, records: list[Any]) -> list[TokenProgress]:
    """Which tokens (tiers) can still release the request, and by when (HSM time).

    In the policy's order, so the first is the request's own tier - the cheapest one its
    amount fits - and its deadline is the one the page counts down; the later ones are
    the fallbacks (a larger tier), whose longer timeouts are not this request's."""
    approvals = [Approval(a.credential_type, a.credential, base64.b64decode(a.signature_b64),
                          a.digest) for a in records if not a.rejected]
    try:
        ev = broker.hsm.request_status(r.id, approvals,
                                       [a.approver for a in records if a.rejected])
    except HsmError:
        return []
    rule = broker.hsm.get_key(r.key_label).policy.get(
        {"use": "ruleUse", "block": "ruleBlock", "unblock": "ruleUnblock",
         "modify": "ruleModify"}.get(r.action, ""), {}) or {}
    timeouts = {t.get("name"): int(t.get("timeout", 0)) for t in rule.get("tokens", [])}
    out = []
    for t in ev.tokens:
        if t.attainable:
            timeout = timeouts.get(t.name, 0)
            out.append(TokenProgress(
                name=t.name, deadline=r.hsm_time + timeout if timeout else None,
                holdRemaining=t.hold_remaining, missing=sum(g.missing for g in t.groups),
                groups=[GroupProgress(name=g.name, quorum=g.quorum, approved=len(g.approved),
                                      missing=g.missing) for g in t.groups]))
    return out

