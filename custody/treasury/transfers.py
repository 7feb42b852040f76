"""Transfers: from a desk's request through the tiered approvals to a confirmed
transaction - each step committed before the next external effect.

::

    requested --submit--> pending_approval --(hold)--> on_hold
        |  auto tier             |  last approval / hold over
        v                        v
      signed <----- the HSM signs (finalize first: nonce, fees, blockhash)
        |  assemble, txid recorded
        v
    broadcast --depth reached--> confirmed
    (rejected | expired | cancelled | failed end it; an Ethereum nonce taken and never
    broadcast is freed for the next transfer)

The transfer row carries a version; every transition is a compare-and-set on it, with
its history entry and webhook outbox rows in the same transaction, so two workers (or a
worker and an API process after a crash) never both perform the same step. Broadcasting
re-sends identical bytes at worst, which every chain treats as the same transaction.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from chains.base import TransferRequest, UnsignedTx
from chains.errors import (
    BroadcastRejected,
    ChainError,
    InsufficientFunds,
    InvalidAddress,
    NodeUnavailable,
)
from custody.broker import Broker, Principal
from custody.db import SignRequest, Status
from custody.errors import BadRequest, Conflict, CustodyError, NotFound
from hsm_emulator.errors import HsmError, TransportError
from hsm_emulator.model import Action, Intent

from . import webhooks
from .models import TERMINAL, DepositAddress, State, TransferRecord, Wallet, changed
from .networks import Networks
from .planners import Planner
from .units import to_base_units, to_text
from .wallets import assets_of, get_wallet

log = logging.getLogger("custody.treasury")
#: How often a broadcast transfer's confirmations are looked at, and a failed step retried.
POLL_SECONDS = 1.0
RETRY_SECONDS = 5.0
#: A new transfer is submitted by the call that created it; the worker takes it over only
#: if that call has not got it a sign request by then (its process died).
SUBMIT_LEASE_SECONDS = 15.0
_BY_REQUEST = {Status.PENDING: State.PENDING_APPROVAL, Status.APPROVED: State.ON_HOLD,
               Status.REJECTED: State.REJECTED, Status.EXPIRED: State.EXPIRED,
               Status.CANCELLED: State.CANCELLED, Status.FAILED: State.FAILED}
_WAITING = (State.REQUESTED, State.PENDING_APPROVAL, State.ON_HOLD)


class Treasury:
    def __init__(self, broker: Broker, networks: Networks, *,
                 clock: Callable[[], float] = time.time,
                 on_event: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.broker = broker
        self.networks = networks
        self.sessions: sessionmaker[Session] = broker.sessions
        self.clock = clock
        self.on_event = on_event or (lambda _e: None)
        self._wake = threading.Condition()
        self._wallet_locks: dict[str, threading.Lock] = {}
        broker.release.finalize = self.finalize_hook
        previous = broker.store.on_change

        def on_change(row: SignRequest) -> None:
            previous(row)
            self.on_request_change(row)

        broker.store.on_change = on_change
        networks.issued = self.issued_addresses

    # -- requests -----------------------------------------------------------------------

    def create(self, who: Principal, wallet_id: str, symbol: str, destination: str,
               amount: str, memo: str = "", *, transfer_id: str | None = None,
               ) -> TransferRecord:
        """Validate, build (funding and address checked by the chain), record, submit.
        A refusal stores nothing. ``transfer_id`` (an idempotency ticket): the id to give
        it; if a transfer has it already, an attempt that died made it - that one is the
        answer (the worker carries it on from wherever it stopped)."""
        if transfer_id is not None:
            with self.sessions() as s:
                if s.get(TransferRecord, transfer_id) is not None:
                    return self.get(who, transfer_id)
        wallet = get_wallet(self.sessions, who, wallet_id)
        info = next((a for a in assets_of(wallet) if a.symbol == symbol), None)
        if info is None:
            raise BadRequest(f"wallet {wallet.name} holds no asset {symbol!r}: "
                             f"{[a.symbol for a in assets_of(wallet)]}")
        base = to_base_units(amount, info.decimals)
        if base <= 0:
            raise BadRequest("amount must be positive")
        limit = _hard_limit(wallet, symbol, info.decimals)
        if limit is not None and base > limit:
            raise BadRequest(f"{amount} {symbol} exceeds this wallet's hard limit of "
                             f"{to_text(limit, info.decimals)} {symbol}")
        if not isinstance(memo, str) or len(memo) > 256 or not memo.isprintable():
            raise BadRequest("memo: at most 256 printable characters")
        planner = self.networks.planner(wallet.chain)
        adapter: Any = self.networks.adapter(wallet.chain)
        try:
            destination = adapter.validate_address(destination)
        except (InvalidAddress, ChainError) as exc:
            raise BadRequest(f"destination: {exc}") from None
        if destination == wallet.address:
            raise BadRequest("destination is the wallet itself")
        record = self._draft(wallet, planner, who, info.symbol, info.asset, base, amount,
                             destination, memo, transfer_id or uuid.uuid4().hex)
        self._submit(record.id)
        self.nudge()
        return self.get(who, record.id)

    def _draft(self, wallet: Wallet, planner: Planner, who: Principal, symbol: str,
               asset: str, base: int, amount: str, destination: str,
               memo: str, transfer_id: str) -> TransferRecord:
        source = self.networks.source(wallet)
        request = TransferRequest(asset, base, destination, None, memo)
        lock = self._wallet_locks.setdefault(wallet.id, threading.Lock())
        with lock, self.sessions.begin() as s:
            # one builder per wallet at a time (row lock across replicas on PostgreSQL), so
            # two transfers never pick the same coins
            s.execute(select(Wallet.id).where(Wallet.id == wallet.id).with_for_update())
            try:
                unsigned, columns = planner.draft(s, wallet, source, request)
            except InsufficientFunds as exc:
                raise BadRequest(f"cannot be funded: {exc}") from None
            except InvalidAddress as exc:
                raise BadRequest(f"destination: {exc}") from None
            except NodeUnavailable:
                raise  # an outage, not a bad request: 503 + Retry-After, nothing stored
            except ChainError as exc:
                raise BadRequest(f"cannot build this transfer: {exc}") from None
            now = datetime.now(UTC)
            record = TransferRecord(
                id=transfer_id, tenant=who.tenant, initiator=who.subject,
                wallet_id=wallet.id, symbol=symbol, asset=asset, amount=str(base),
                amount_text=amount, destination=destination, memo=memo,
                state=State.REQUESTED, payload_type=unsigned.payload_type,
                payload_b64=base64.b64encode(unsigned.payload).decode(),
                fee_cap=str(unsigned.fee_cap),
                history=[{"state": State.REQUESTED.value, "at": now.isoformat()}],
                created_at=now, updated_at=now, version=0,
                next_check=self.clock() + SUBMIT_LEASE_SECONDS)
            record.details = dict(columns.get("details", {}))  # type: ignore[call-overload]
            record.details["intent"] = unsigned.intent.to_json()
            record.inputs = columns.get("inputs")  # type: ignore[assignment]
            s.add(record)
            webhooks.enqueue(s, who.tenant, record.id, _event(record), self.clock())
        return record

    def _submit(self, transfer_id: str) -> None:
        """Raise the sign request: the auto tier is signed at once (final payload first),
        anything else waits for approvals under the draft's intent and fee cap."""
        t = self._load(transfer_id)
        wallet = self._wallet(t)
        payload = base64.b64decode(t.payload_b64)
        adopted = self._adopt(t, wallet)
        if adopted is not None:
            self._follow(t, adopted)
            return
        who = Principal(t.initiator, t.tenant, frozenset({"business"}))
        meta = {"transferId": t.id, "memo": t.memo}
        try:
            ev = self.networks.hsm.dry_run(wallet.key_label, payload, t.payload_type)
            if ev.released:
                with self.sessions.begin() as s:
                    s.execute(update(TransferRecord).where(TransferRecord.id == t.id).values(
                        tier=ev.released_by))
                final = self.finalize_transfer(t.id)
                row = self.broker.submit(who, wallet.key_label, Action.USE, final,
                                         t.payload_type, None, meta, fee_cap=int(t.fee_cap),
                                         request_id=hsm_request_id(t.id))
            else:
                row = self.broker.submit(who, wallet.key_label, Action.USE, payload,
                                         t.payload_type, None, meta, fee_cap=int(t.fee_cap),
                                         auto=False, request_id=hsm_request_id(t.id))
        except TransportError as exc:  # the HSM is down, not refusing: keep it, retry
            log.warning("transfer %s: submit deferred, HSM unreachable: %s", t.id, exc)
            self._retry(t.id)
            return
        except HsmError as exc:
            with self.sessions.begin() as s:  # a nonce taken for it goes to the next one
                self.networks.planner(wallet.chain).after_failure(s, t)
            self._move(t.id, State.FAILED, error=f"{exc.code}: {exc.reason}")
            raise BadRequest(f"the HSM refused the request: {exc.reason}") from None
        except (ChainError, OSError) as exc:
            log.warning("transfer %s: submit deferred: %s", t.id, exc)
            self._retry(t.id, exc)
            return
        with self.sessions.begin() as s:  # the worker follows it from now on
            s.execute(update(TransferRecord).where(TransferRecord.id == t.id).values(
                sign_request_id=row.id, next_check=None))
        self._follow(self._load(t.id), row)

    def _adopt(self, t: TransferRecord, wallet: Wallet) -> SignRequest | None:
        """After a crash between the HSM and this row: the request already made for it."""
        if t.sign_request_id:
            return self.broker.get(t.sign_request_id)
        with self.sessions() as s:
            rows = list(s.scalars(select(SignRequest).where(
                SignRequest.key_label == wallet.key_label,
                SignRequest.payload_b64 == t.payload_b64)))
        for row in rows:
            if (row.meta_data or {}).get("transferId") == t.id:
                with self.sessions.begin() as w:
                    w.execute(update(TransferRecord).where(
                        TransferRecord.id == t.id).values(sign_request_id=row.id))
                return row
        return None

    def on_request_change(self, row: SignRequest) -> None:
        """Mirror a sign request's change on its transfer at once (the worker would, within
        a poll interval), then let the worker broadcast."""
        meta = row.meta_data if isinstance(row.meta_data, dict) else {}
        transfer_id = meta.get("transferId")
        if not isinstance(transfer_id, str):
            return
        try:
            t = self._load(transfer_id)
            if t.sign_request_id == row.id and t.state in _WAITING:
                self._follow(t, row)
        except (CustodyError, HsmError, ChainError, OSError) as exc:
            log.warning("transfer %s: %s (the worker retries)", transfer_id, exc)
        self.nudge()

    # -- finalizing (called by the broker right before the HSM executes) -------------

    def finalize_hook(self, row: SignRequest) -> bytes | None:
        meta = row.meta_data or {}
        transfer_id = meta.get("transferId") if isinstance(meta, dict) else None
        if not isinstance(transfer_id, str):
            return None
        with self.sessions() as s:
            if s.get(TransferRecord, transfer_id) is None:
                return None
        try:
            return self.finalize_transfer(transfer_id)
        except NodeUnavailable as exc:  # the broker keeps the approvals and retries
            self._note(transfer_id, exc)
            raise

    def finalize_transfer(self, transfer_id: str) -> bytes:
        """The payload the HSM will sign, rebuilt once (nonce, fees, blockhash) and
        stored before it is signed; later calls return the stored one."""
        t = self._load(transfer_id)
        if t.details.get("final"):
            return base64.b64decode(t.payload_b64)
        wallet = self._wallet(t)
        planner = self.networks.planner(wallet.chain)
        unsigned = self._unsigned(t, wallet)
        final, columns = planner.finalize(self.sessions, t, wallet, self.networks.source(wallet),
                                          unsigned)
        values: dict[str, Any] = {
            "payload_b64": base64.b64encode(final.payload).decode(),
            "details": {**t.details, **final.details, "final": True,
                        "intent": final.intent.to_json()},
            "version": t.version + 1, **columns}
        with self.sessions.begin() as s:
            won = s.execute(update(TransferRecord).where(
                TransferRecord.id == t.id, TransferRecord.version == t.version).values(**values))
        if changed(won) != 1:  # another worker finalized first: use what it stored
            return self.finalize_transfer(transfer_id)
        return final.payload

    def _unsigned(self, t: TransferRecord, wallet: Wallet) -> UnsignedTx:
        from chains.base import Chain

        intent = Intent.from_json(t.details["intent"])  # type: ignore[arg-type]
        return UnsignedTx(Chain(wallet.chain), wallet.network, t.payload_type,
                          base64.b64decode(t.payload_b64), intent, int(t.fee_cap),
                          {k: str(v) for k, v in t.details.items() if k != "intent"})

    # -- progress (the worker) ----------------------------------------------------------

    def step(self) -> int:
        """Move every transfer that can move; returns how many were looked at."""
        now = self.clock()
        with self.sessions() as s:
            ids = list(s.scalars(select(TransferRecord.id).where(
                TransferRecord.state.not_in([st.value for st in TERMINAL]),
                (TransferRecord.next_check.is_(None)) | (TransferRecord.next_check <= now))))
        for transfer_id in ids:
            try:
                self.advance(transfer_id)
            except (CustodyError, HsmError, ChainError, OSError) as exc:
                log.warning("transfer %s: %s", transfer_id, exc)
                self._retry(transfer_id, exc)
        return len(ids)

    def advance(self, transfer_id: str) -> TransferRecord:
        t = self._load(transfer_id)
        if t.state in _WAITING:
            if not t.sign_request_id:
                if self._lease(t):  # else the creating call (or another worker) submits
                    self._submit(t.id)
            else:
                self._follow(t, self.broker.advance(t.sign_request_id))
        t = self._load(transfer_id)
        if t.state == State.SIGNED:
            self._broadcast(t)
        t = self._load(transfer_id)
        if t.state == State.BROADCAST:
            self._confirm(t)
        return self._load(transfer_id)

    def _follow(self, t: TransferRecord, row: SignRequest) -> None:
        """Mirror the sign request; on EXECUTED assemble the signed transaction."""
        if row.status == Status.EXECUTED:
            wallet = self._wallet(t)
            planner = self.networks.planner(wallet.chain)
            t = self._load(t.id)
            signatures = [base64.b64decode(x) for x in row.result or []]
            raw = planner.assemble(self._unsigned(t, wallet), signatures)
            txid = planner.txid(raw)
            tier = t.tier or self._tier(row)
            self._move(t.id, State.SIGNED, raw_b64=base64.b64encode(raw).decode(), txid=txid,
                       tier=tier, next_check=None)
            return
        state = _BY_REQUEST.get(Status(row.status))
        if state is None or state.value == t.state:
            return
        if state in TERMINAL:
            wallet = self._wallet(t)
            with self.sessions.begin() as s:
                self.networks.planner(wallet.chain).after_failure(s, t)
            self._move(t.id, state, error=row.error)
        else:
            self._move(t.id, state)

    def _tier(self, row: SignRequest) -> str | None:
        try:
            return self.networks.hsm.request_result(row.id).token
        except HsmError:
            return None

    def _broadcast(self, t: TransferRecord) -> None:
        wallet = self._wallet(t)
        planner = self.networks.planner(wallet.chain)
        claimed = self._claim(t)
        if claimed is None:
            return
        raw = base64.b64decode(t.raw_b64 or "")
        try:
            txid = planner.broadcast(raw)
        except BroadcastRejected as exc:
            with self.sessions.begin() as s:
                planner.after_failure(s, t)
            self._move(t.id, State.FAILED, error=f"the node rejected the transaction: {exc}")
            return
        if txid.lower().removeprefix("0x") != (t.txid or "").lower().removeprefix("0x"):
            log.warning("transfer %s: node reports %s for %s", t.id, txid, t.txid)
        with self.sessions.begin() as s:
            planner.after_broadcast(s, t)
        self._move(t.id, State.BROADCAST, next_check=self.clock() + POLL_SECONDS)

    def _confirm(self, t: TransferRecord) -> None:
        wallet = self._wallet(t)
        planner = self.networks.planner(wallet.chain)
        try:
            c = planner.confirmation(t.txid or "")
        except BroadcastRejected as exc:  # landed but failed (Solana): fee spent, no transfer
            self._move(t.id, State.FAILED, error=str(exc))
            return
        depth = self.networks.depth(wallet.chain)
        if c.confirmations >= depth:
            self._move(t.id, State.CONFIRMED, confirmations=c.confirmations,
                       block=c.block_hash, next_check=None)
        else:
            lost = c.confirmations == 0 and not planner.known(t.txid or "")
            note = self._resend(t, planner) if lost else None
            with self.sessions.begin() as s:
                s.execute(update(TransferRecord).where(TransferRecord.id == t.id).values(
                    confirmations=c.confirmations, error=note,
                    next_check=self.clock() + POLL_SECONDS))

    def _resend(self, t: TransferRecord, planner: Planner) -> str | None:
        """The node lost a transaction it had accepted (restarted without its mempool):
        send the same signed bytes again - the same transaction, never a second one. A
        refusal is noted, not final (the node may yet learn it from a peer or a block)."""
        log.warning("transfer %s: the node no longer knows %s; sending it again", t.id, t.txid)
        try:
            planner.broadcast(base64.b64decode(t.raw_b64 or ""))
        except BroadcastRejected as exc:
            return f"the node lost the transaction and refused it again: {exc}"
        return None

    def _lease(self, t: TransferRecord) -> bool:
        """Take the submission of ``t`` for this worker alone, for a while: only once its
        creator's lease has run out (compare-and-set on version and lease), so a worker
        never raises a second sign request beside the call still raising the first."""
        now = self.clock()
        with self.sessions.begin() as s:
            won = s.execute(update(TransferRecord).where(
                TransferRecord.id == t.id, TransferRecord.version == t.version,
                TransferRecord.sign_request_id.is_(None),
                TransferRecord.next_check.is_(None) | (TransferRecord.next_check <= now)).values(
                    version=t.version + 1, next_check=now + SUBMIT_LEASE_SECONDS))
        return changed(won) == 1

    def _claim(self, t: TransferRecord) -> TransferRecord | None:
        """Take the next step of ``t`` for this worker alone (compare-and-set)."""
        with self.sessions.begin() as s:
            won = s.execute(update(TransferRecord).where(
                TransferRecord.id == t.id, TransferRecord.version == t.version).values(
                    version=t.version + 1))
        if changed(won) != 1:
            return None
        t.version += 1
        return t

    def _move(self, transfer_id: str, state: State, **values: Any) -> bool:
        """One transition, its history entry and its webhook rows, in one transaction;
        never out of a terminal state."""
        for _ in range(10):
            t = self._load(transfer_id)
            if t.state in TERMINAL or t.state == state.value:
                return False
            now = datetime.now(UTC)
            history = [*t.history, {"state": state.value, "at": now.isoformat()}]
            values.setdefault("error", None)  # a step succeeded: no longer waiting
            with self.sessions.begin() as s:
                won = s.execute(update(TransferRecord).where(
                    TransferRecord.id == t.id, TransferRecord.version == t.version).values(
                        state=state, history=history, updated_at=now,
                        version=t.version + 1, **values))
                if changed(won) == 1:
                    t = s.get(TransferRecord, transfer_id)  # type: ignore[assignment]
                    webhooks.enqueue(s, t.tenant, t.id, _event(t), self.clock())
            if changed(won) == 1:
                self.on_event(_event(self._load(transfer_id)))
                return True
        raise Conflict(f"transfer {transfer_id} is contended; retry")

    def _retry(self, transfer_id: str, exc: Exception | None = None) -> None:
        with self.sessions.begin() as s:
            s.execute(update(TransferRecord).where(TransferRecord.id == transfer_id).values(
                next_check=self.clock() + RETRY_SECONDS))
        if isinstance(exc, NodeUnavailable):
            self._note(transfer_id, exc)

    def _note(self, transfer_id: str, exc: NodeUnavailable) -> None:
        """An outage is not a failure: the transfer keeps its state and says why it waits
        (``error``), until its next step succeeds and clears the note."""
        with self.sessions.begin() as s:
            s.execute(update(TransferRecord).where(
                TransferRecord.id == transfer_id,
                TransferRecord.state.not_in([st.value for st in TERMINAL])).values(
                    error=f"waiting for the node ({exc.code}): {exc.reason}"))

    # -- reading ------------------------------------------------------------------------

    def issued_addresses(self, key_label: str) -> int:
        """Receive addresses handed out for a wallet key (its coin scan covers them)."""
        with self.sessions() as s:
            top = s.scalar(select(func.max(DepositAddress.idx)).join(
                Wallet, Wallet.id == DepositAddress.wallet_id).where(
                    Wallet.key_label == key_label))
        return 0 if top is None else int(top) + 1

    def get(self, who: Principal, transfer_id: str) -> TransferRecord:
        t = self._load(transfer_id) if isinstance(transfer_id, str) else None
        if t is None or t.tenant != who.tenant:
            raise NotFound(f"no transfer {transfer_id!r}")
        return t

    def _load(self, transfer_id: str) -> TransferRecord:
        with self.sessions() as s:
            t = s.get(TransferRecord, transfer_id)
            if t is None:
                raise NotFound(f"no transfer {transfer_id!r}")
            return t

    def _wallet(self, t: TransferRecord) -> Wallet:
        with self.sessions() as s:
            w = s.get(Wallet, t.wallet_id)
            assert w is not None
            return w

    def list(self, who: Principal, *, state: str | None = None, wallet: str | None = None,
             limit: int = 50, offset: int = 0) -> list[TransferRecord]:
        if state is not None and state not in {st.value for st in State}:
            raise BadRequest(f"state must be one of {sorted(st.value for st in State)}")
        query = select(TransferRecord).where(TransferRecord.tenant == who.tenant)
        if state is not None:
            query = query.where(TransferRecord.state == state)
        if wallet is not None:
            query = query.where(TransferRecord.wallet_id == wallet)
        with self.sessions() as s:
            return list(s.scalars(query.order_by(TransferRecord.created_at.desc()).offset(
                max(0, offset)).limit(max(1, min(limit, 500)))))

    # -- the worker loop ------------------------------------------------------------------

    def nudge(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def run(self, stop: threading.Event, dispatcher: webhooks.Dispatcher | None = None,
            interval: float = POLL_SECONDS) -> None:
        while not stop.is_set():
            try:
                self.step()
                if dispatcher is not None:
                    dispatcher.deliver_due()
            except Exception:  # the loop must outlive any one failure; it is logged
                log.exception("treasury worker step failed")
            with self._wake:
                self._wake.wait(timeout=interval)


def hsm_request_id(transfer_id: str) -> str:
    """The HSM request of a transfer has an id of the transfer's own: a submission
    repeated after a crash (the HSM signed or opened it, this database never heard) finds
    that request in the HSM instead of having the payload signed a second time."""
    return f"transfer-{transfer_id}"


def _hard_limit(wallet: Wallet, symbol: str, decimals: int) -> int | None:
    tiers = wallet.policy_config.get("tiers", {})
    tier = tiers.get(symbol, {}) if isinstance(tiers, dict) else {}
    limit = tier.get("max") if isinstance(tier, dict) else None
    return None if limit is None else to_base_units(str(limit), decimals)


def _event(t: TransferRecord) -> dict[str, Any]:
    return {"type": "transfer.state", "transfer": transfer_json(t)}


def transfer_json(t: TransferRecord) -> dict[str, Any]:
    return {"id": t.id, "wallet": t.wallet_id, "asset": t.symbol, "assetId": t.asset,
            "amount": t.amount_text, "baseUnits": t.amount, "destination": t.destination,
            "memo": t.memo, "state": t.state, "tier": t.tier,
            "signRequestId": t.sign_request_id, "txid": t.txid,
            "confirmations": t.confirmations, "error": t.error,
            "feeCap": t.fee_cap, "nonce": t.nonce, "history": t.history,
            "createdAt": t.created_at.isoformat() if t.created_at else None,
            "updatedAt": t.updated_at.isoformat() if t.updated_at else None}

