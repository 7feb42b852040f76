"""A transfer's sign request: its payload rebuilt once right before the HSM signs
(nonce, fees, blockhash), and the request's progress mirrored on the transfer - on
EXECUTED the signed transaction is assembled and the transfer is SIGNED."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import select, update

from chains.base import Chain, UnsignedTx
from chains.errors import ChainError, NodeUnavailable
from custody.db import ApprovalRecord, SignRequest, Status
from custody.errors import CustodyError
from hsm_emulator.errors import HsmError
from hsm_emulator.model import Action, Intent
from hsm_emulator.policy import parse_policy

from . import reasons
from .ledger import WAITING, Move, TransferLedger
from .models import RESIGNS, TERMINAL, State, TransferRecord, Wallet, attempt, changed
from .networks import Networks
from .wallets import assets_of

log = logging.getLogger("custody.treasury")
_BY_REQUEST = {Status.PENDING: State.PENDING_APPROVAL, Status.APPROVED: State.ON_HOLD,
               Status.REJECTED: State.REJECTED, Status.EXPIRED: State.EXPIRED,
               Status.CANCELLED: State.CANCELLED, Status.FAILED: State.FAILED}


class TransferSigning:
    def __init__(self, ledger: TransferLedger, networks: Networks,
                 nudge: Callable[[], None]) -> None:
        self.ledger = ledger
        self.networks = networks
        #: wakes the worker (a signed transfer is broadcast by it)
        self.nudge = nudge

    # -- finalizing (called by the broker right before the HSM executes) -------------

    def finalize_hook(self, row: SignRequest) -> bytes | None:
        meta = row.meta_data or {}
        transfer_id = meta.get("transferId") if isinstance(meta, dict) else None
        if not isinstance(transfer_id, str):
            return None
        with self.ledger.sessions() as s:
            if s.get(TransferRecord, transfer_id) is None:
                return None
        try:
            return self.finalize_transfer(transfer_id)
        except NodeUnavailable as exc:  # the broker keeps the approvals and retries
            self.ledger.note(transfer_id, exc)
            raise

    def finalize_transfer(self, transfer_id: str, *, tier: str | None = None) -> bytes:
        """The payload the HSM will sign, rebuilt once (nonce, fees, blockhash) and
        stored before it is signed; later calls return the stored one. ``tier``: the
        token the HSM's dry run released it under, stored with it."""
        t = self.ledger.load(transfer_id)
        if t.details.get("final"):
            if tier is not None and t.tier != tier:
                with self.ledger.sessions.begin() as s:
                    s.execute(update(TransferRecord).where(TransferRecord.id == t.id).values(
                        tier=tier))
            return base64.b64decode(t.payload_b64)
        wallet = self.ledger.wallet(t)
        planner = self.networks.planner(wallet.chain)
        unsigned = self._unsigned(t, wallet)
        final, columns = planner.finalize(self.ledger.sessions, t, wallet,
                                          self.networks.source(wallet), unsigned)
        values: dict[str, Any] = {
            "payload_b64": base64.b64encode(final.payload).decode(),
            "details": {**t.details, **final.details, "final": True,
                        "intent": final.intent.to_json()},
            "version": t.version + 1, **columns, **({} if tier is None else {"tier": tier})}
        with self.ledger.sessions.begin() as s:
            won = s.execute(update(TransferRecord).where(
                TransferRecord.id == t.id, TransferRecord.version == t.version).values(**values))
        if changed(won) != 1:  # another worker finalized first: use what it stored
            return self.finalize_transfer(transfer_id, tier=tier)
        return final.payload

    def _unsigned(self, t: TransferRecord, wallet: Wallet) -> UnsignedTx:
        intent = Intent.from_json(t.details["intent"])  # type: ignore[arg-type]
        return UnsignedTx(Chain(wallet.chain), wallet.network, t.payload_type,
                          base64.b64decode(t.payload_b64), intent, int(t.fee_cap),
                          {k: str(v) for k, v in t.details.items()
                           if k not in ("intent", RESIGNS)})  # the chain's own, as text

    # -- following the sign request -----------------------------------------------------

    def on_request_change(self, row: SignRequest) -> None:
        """Mirror a sign request's change on its transfer at once (the worker would, within
        a poll interval), then let the worker broadcast."""
        meta = row.meta_data if isinstance(row.meta_data, dict) else {}
        transfer_id = meta.get("transferId")
        if not isinstance(transfer_id, str):
            return
        try:
            t = self.ledger.load(transfer_id)
            if t.sign_request_id == row.id and t.state in WAITING:
                self.follow(t, row)
        except (CustodyError, HsmError, ChainError, OSError) as exc:
            log.warning("transfer %s: %s (the worker retries)", transfer_id, exc)
        self.nudge()

    def follow(self, t: TransferRecord, row: SignRequest, **values: Any) -> None:
        """Mirror the sign request on its transfer; on EXECUTED assemble the signed
        transaction. ``values``: more columns for the SIGNED move (the request's id, when
        it was signed at once).

        The transfer is read afresh (the release may have finalized its payload
        meanwhile), and only its current attempt's request is mirrored: a caller that read
        the transfer before it was signed again (its transaction expired unlanded) may
        hold the earlier attempt's executed request, whose signature belongs to a
        transaction already proven dead - mirrored, it would sign the transfer with it
        once more. Each move is one compare-and-set, not retried on a newer row: a row
        that moved meanwhile is followed again by the worker's next pass."""
        t = self.ledger.load(t.id)
        if _attempt_of(row) != attempt(t):
            log.info("transfer %s: request %s is of an earlier attempt; not mirrored",
                     t.id, row.id)
            return
        wallet = self.ledger.wallet(t)
        if row.status == Status.EXECUTED:
            planner = self.networks.planner(wallet.chain)
            signatures = [base64.b64decode(x) for x in row.result or []]
            raw = planner.assemble(self._unsigned(t, wallet), signatures)
            tier = t.tier or self._tier(row)
            self.ledger.move_all([Move(t, State.SIGNED, {
                "raw_b64": base64.b64encode(raw).decode(), "txid": planner.txid(raw),
                "tier": tier, "next_check": None, **values})])
            return
        state = _BY_REQUEST.get(Status(row.status))
        if state is None or state.value == t.state:
            return
        if state in TERMINAL:
            planner = self.networks.planner(wallet.chain)
            self.ledger.move_all([Move(t, state, {"error": self.reason(row, wallet, state)},
                                       also=lambda s: planner.after_failure(s, t))])
        else:
            self.ledger.move_all([Move(t, state)])

    def reason(self, row: SignRequest, wallet: Wallet, state: State) -> str:
        """Why the transfer ended, in the desk's words (:mod:`.reasons`)."""
        if state is State.REJECTED:
            with self.ledger.sessions() as s:
                who = list(s.scalars(select(ApprovalRecord.approver).where(
                    ApprovalRecord.request_id == row.id, ApprovalRecord.rejected.is_(True))))
            names = self._names(wallet.key_label)
            return reasons.rejected(names.get(f, f[:16]) for f in who)
        return reasons.closed(state.value, row.error, assets_of(wallet))

    def _names(self, label: str) -> dict[str, str]:
        """Approvers' names by fingerprint, as the key's policy gives them."""
        try:
            policy = self.networks.hsm.get_key(label).policy
            rule = parse_policy({k: v for k, v in policy.items() if k != "keyStatus"}).rule(
                Action.USE)
        except HsmError:
            return {}
        return {a.fingerprint: a.name for t in (rule.tokens if rule else ())
                for g in t.groups for a in g.approvers if a.name}

    def _tier(self, row: SignRequest) -> str | None:
        try:
            return self.networks.hsm.request_result(row.id).token
        except HsmError:
            return None


def _attempt_of(row: SignRequest) -> int:
    """The transfer attempt a sign request was raised for (1 unless signed again)."""
    meta = row.meta_data if isinstance(row.meta_data, dict) else {}
    n = meta.get("attempt", 1)
    return n if isinstance(n, int) else 1
