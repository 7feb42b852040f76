"""Check a task the server lists against the HSM-signed challenge inside it.

The server (broker) is "uncritical for security": it may lie. What the approver is
shown must therefore come from the challenge, whose signature is checked with the
pinned HSM identity key (:func:`hsm_emulator.challenge.open_challenge`); and everything
the server says beside it - request id, key, action, payload type, decoded intent, the
payload itself - must agree with the challenge, or the task is refused as a whole.
Pure: no network, no clock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Any

from hsm_emulator.challenge import open_challenge
from hsm_emulator.display import format_amount
from hsm_emulator.errors import ApprovalRefused

from .approver_diff import policy_diff
from .approver_keys import ApproverError

#: Task fields the server states that the challenge body also carries.
_SAME = (("keyLabel", "keyLabel"), ("action", "action"), ("payloadType", "payloadType"),
         ("intent", "intent"))


@dataclass(frozen=True)
class VerifiedTask:
    """A task whose challenge verified: ``body`` is the HSM's word, ``envelope`` the
    exact bytes the approver signs."""

    request_id: str
    body: dict[str, Any]
    envelope: bytes
    challenge_b64: str
    #: the server's word, not the HSM's: a transfer signed again names its earlier
    #: transactions, which expired without landing (``{txid, reason}``, well-formed only)
    earlier: tuple[dict[str, str], ...] = ()

    def intent_lines(self) -> list[tuple[str, str]]:
        """(field, value) pairs to show a person, from the HSM-signed body only."""
        b = self.body
        rows = [("request", self.request_id), ("key", str(b.get("keyLabel"))),
                ("action", str(b.get("action"))), ("payload type", str(b.get("payloadType"))),
                ("payload sha256", str(b.get("payloadDigest"))),
                ("created (HSM time)", str(b.get("hsmTimestamp"))),
                ("initiator", _initiator(b))]
        intent = b.get("intent")
        units = self.units
        if isinstance(intent, dict):
            rows += _intent_rows(intent, units)
            if b.get("feeCap") is not None:
                rows.append(("fee cap", format_amount(b["feeCap"], str(intent.get("feeAsset")),
                                                      units.get(str(intent.get("feeAsset"))))))
        elif b.get("feeCap") is not None:
            rows.append(("fee cap", f"{b['feeCap']} base units"))
        if "units" not in b and isinstance(intent, dict):
            rows.append(("units", "none in this version 1 challenge: base units shown"))
        if b.get("newPolicyDigest") is not None:
            rows.append(("new policy sha256", str(b["newPolicyDigest"])))
        change = b.get("policyChange")
        if isinstance(change, dict):
            rows += [("policy change", line) for line in
                     policy_diff(change.get("from") or {}, change.get("to") or {})]
        return rows

    @property
    def units(self) -> dict[str, Any]:
        """Asset id -> {symbol, decimals} or None, as the HSM signed them (empty for a
        version 1 challenge)."""
        units = self.body.get("units")
        return units if isinstance(units, dict) else {}

    def amount(self, asset: Any, units: Any) -> str:
        """An amount of this task in the HSM-signed unit (base units if none)."""
        return format_amount(str(units), str(asset), self.units.get(asset))

    @property
    def ref(self) -> str:
        """The short reference ``tasks`` prints and ``show``/``approve`` accept: the
        first 8 characters of the request id (a longer prefix also works)."""
        return self.request_id[:8]


def _intent_rows(intent: dict[str, Any], units: dict[str, Any]) -> list[tuple[str, str]]:
    """Everything the intent says can leave: transfers, allowances granted (an approval
    is money that can leave later), rent, the fee, and what an opaque payload calls."""
    def amount(asset: Any, value: Any) -> str:
        return format_amount(str(value), str(asset), units.get(asset))

    rows = [("chain", f"{intent.get('chain')} {intent.get('network')}"),
            ("kind", str(intent.get("kind")))]
    transfers = intent.get("transfers") or []
    for i, t in enumerate(transfers):
        n = f" #{i + 1}" if len(transfers) > 1 else ""
        rows += [(f"amount{n}", amount(t.get("asset"), t.get("amount"))),
                 (f"asset{n}", str(t.get("asset"))),
                 (f"destination{n}", str(t.get("destination")))]
    grants = intent.get("grants") or []
    for i, g in enumerate(grants):
        n = f" #{i + 1}" if len(grants) > 1 else ""
        rows += [(f"allowance{n}", amount(g.get("asset"), g.get("amount"))),
                 (f"allowance asset{n}", str(g.get("asset"))),
                 (f"spender{n}", str(g.get("grantee")))]
    fee_asset = intent.get("feeAsset") or ""
    if intent.get("rent") not in (None, "0"):
        rows.append(("rent", amount(fee_asset, intent.get("rent"))))
    rows.append(("fee (most)", amount(fee_asset, intent.get("fee"))))
    details = intent.get("details")
    if isinstance(details, dict) and details.get("memo"):
        rows.append(("memo", str(details["memo"])))
    for c in intent.get("calls") or []:
        rows.append(("calls", str(c)))
    return rows


def _initiator(body: dict[str, Any]) -> str:
    """Who asked: proven by their own signature (the HSM verified an initiation by a key
    the policy names) or only the broker's word."""
    if body.get("initiatorProven") is True:
        name = body.get("initiatorName")
        who = f"{name} ({body.get('initiator')})" if name else str(body.get("initiator"))
        return f"{who}, proven by their signature"
    return str(body.get("initiator"))


def verify_task(task: Any, hsm_public_der: bytes) -> VerifiedTask:
    """Open the task's challenge with the pinned HSM key and cross-check the server's
    claims; raise :class:`ApproverError` naming the first disagreement."""
    if not isinstance(task, dict) or not isinstance(task.get("id"), str):
        raise ApproverError("the server sent a malformed task")
    request_id = task["id"]
    b64 = task.get("approvalToBeSigned")
    if not isinstance(b64, str):
        raise ApproverError(f"task {request_id}: no challenge (approvalToBeSigned)")
    try:
        body = open_challenge(b64, hsm_public_der)
    except ApprovalRefused as exc:
        raise ApproverError(f"task {request_id}: challenge refused: {exc.reason} "
                            "- do not approve; report this server") from None
    if body.get("requestId") != request_id:
        raise ApproverError(f"task {request_id}: the challenge is for request "
                            f"{body.get('requestId')!r}, not this one - do not approve")
    for ours, theirs in _SAME:
        if ours in task and task[ours] != body.get(theirs):
            raise ApproverError(f"task {request_id}: the server shows {ours} "
                                f"{task[ours]!r} but the HSM challenge says "
                                f"{body.get(theirs)!r} - do not approve")
    if "payload" in task and body.get("action") == "use":
        try:
            payload = base64.b64decode(task["payload"], validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise ApproverError(f"task {request_id}: the payload is not base64") from None
        if hashlib.sha256(payload).hexdigest() != body.get("payloadDigest"):
            raise ApproverError(f"task {request_id}: the payload the server shows is not the "
                                "one in the HSM challenge - do not approve")
    envelope = base64.b64decode(b64)
    return VerifiedTask(request_id, body, envelope, b64, _earlier(task.get("earlierAttempts")))


def _earlier(raw: Any) -> tuple[dict[str, str], ...]:
    """The server's earlier attempts of a transfer signed again, bounded; anything not
    shaped as ``[{txid, reason}]`` is left out (it is only ever shown, never trusted)."""
    if not isinstance(raw, list):
        return ()
    return tuple({"txid": a["txid"][:128], "reason": a["reason"][:300]} for a in raw[:8]
                 if isinstance(a, dict) and isinstance(a.get("txid"), str)
                 and isinstance(a.get("reason"), str))
