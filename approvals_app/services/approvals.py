"""Answering a task: approve, or reject what the approver was shown."""

from __future__ import annotations

from custody.broker import Broker
from custody.db import SignRequest
from hsm_emulator.errors import ApprovalRefused


def reject_shown(broker: Broker, request_id: str, shown_challenge_b64: str,
                 credential: str, signature: bytes, digest: str) -> SignRequest:
    """Reject a request, if the challenge the approver quotes is this request's.

    A rejection's signature covers ``ska-reject-v1:`` + the challenge, and the HSM checks
    it; the quoted challenge is checked here first so an approver whose view is stale (or
    was swapped) is told so, rather than rejecting something it was not shown."""
    if shown_challenge_b64 != broker.get(request_id).challenge_b64:
        raise ApprovalRefused("approvalToBeSigned does not match this task's challenge")
    return broker.approvers.reject(request_id, credential, signature, digest)
