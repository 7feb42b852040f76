"""Transfer intake: a desk's request validated, built (funding and address checked by the
chain), recorded and submitted as a sign request. A refusal stores nothing; a retry under
the same id (an idempotency ticket) answers with what the first attempt made, and a
submission repeated after a crash adopts the sign request already made for it."""

from __future__ import annotations

import base64
import contextlib
import logging
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update

from chains.base import TransferRequest
from chains.errors import ChainError, InsufficientFunds, InvalidAddress, NodeUnavailable
from chains.planning import Planner
from custody.broker import Broker, Principal
from custody.db import SignRequest, Status
from custody.errors import BadRequest
from hsm_emulator.errors import HsmError, TransportError
from hsm_emulator.model import Action

from . import holdings, reasons, webhooks
from .ledger import TransferLedger, event
from .models import State, TransferRecord, Wallet, attempt
from .networks import Networks
from .policy import AssetInfo
from .signing import TransferSigning
from .units import to_base_units, to_text
from .wallets import assets_of, get_wallet

log = logging.getLogger("custody.treasury")


class TransferIntake:
    def __init__(self, broker: Broker, networks: Networks, ledger: TransferLedger,
                 signing: TransferSigning, nudge: Callable[[], None]) -> None:
        self.broker = broker
        self.networks = networks
        self.ledger = ledger
        self.signing = signing
        #: wakes the worker (it carries a created transfer on)
        self.nudge = nudge
        self._wallet_locks: dict[str, threading.Lock] = {}

    def create(self, who: Principal, wallet_id: str, symbol: str, destination: str,
               amount: str, memo: str = "", *, transfer_id: str | None = None,
               allow_zero_address: bool = False) -> TransferRecord:
        """Validate, build (funding and address checked by the chain), record, submit.
        A refusal stores nothing. ``transfer_id`` (an idempotency ticket): the id to give
        it; if a transfer has it already, an attempt that died made it - that one is the
        answer (the worker carries it on from wherever it stopped).

        ``allow_zero_address``: an Ethereum transfer to the zero address burns what it
        sends (a blank field in a desk's form parses as it); refused unless the request
        says so itself - per request, so no wallet setting leaves the door open."""
        sessions = self.ledger.sessions
        if transfer_id is not None:
            with sessions() as s:
                if s.get(TransferRecord, transfer_id) is not None:
                    return self.ledger.get(who, transfer_id)
        wallet = get_wallet(sessions, who, wallet_id)
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
        if _burns(wallet.chain, destination) and not allow_zero_address:
            raise BadRequest("destination is the zero address: what is sent there is burnt; "
                             "set allowZeroAddress to send there on purpose")
        try:
            record = self._draft(wallet, planner, who, info.symbol, info.asset, base, amount,
                                 destination, memo, transfer_id or uuid.uuid4().hex)
        except InsufficientFunds as exc:
            raise BadRequest(f"cannot be funded: {self._shortfall(wallet, info, base, exc)}",
                             ) from None
        self.submit(record.id)
        self.nudge()
        return self.ledger.get(who, record.id)

    def _shortfall(self, wallet: Wallet, info: AssetInfo, base: int,
                   exc: InsufficientFunds) -> str:
        """The figures a desk checks (asked, available, locked by which transfers); the
        chain's own words if the node cannot be asked again."""
        try:
            return holdings.shortfall(self.ledger.sessions, self.networks, wallet, info, base)
        except (ChainError, OSError):
            return str(exc)

    def _draft(self, wallet: Wallet, planner: Planner, who: Principal, symbol: str,
               asset: str, base: int, amount: str, destination: str,
               memo: str, transfer_id: str) -> TransferRecord:
        source = self.networks.source(wallet)
        request = TransferRequest(asset, base, destination, None, memo)
        serial = planner.serial_drafts
        lock: Any = self._wallet_locks.setdefault(wallet.id, threading.Lock()) if serial else (
            contextlib.nullcontext())
        with lock, self.ledger.sessions.begin() as s:
            if serial:
                # one builder per wallet at a time (row lock across replicas on
                # PostgreSQL), so two transfers never pick the same coins
                s.execute(select(Wallet.id).where(Wallet.id == wallet.id).with_for_update())
            try:
                unsigned, columns = planner.draft(s, wallet, source, request)
            except InsufficientFunds:
                raise  # worded by the caller, once this transaction is closed
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
                next_check=self.ledger.lease_end())
            record.details = dict(columns.get("details", {}))  # type: ignore[call-overload]
            record.details["intent"] = unsigned.intent.to_json()
            record.inputs = columns.get("inputs")  # type: ignore[assignment]
            s.add(record)
            webhooks.enqueue(s, who.tenant, record.id, event(record), self.ledger.clock())
        return record

    def submit(self, transfer_id: str) -> None:
        """Raise the sign request: the auto tier is signed at once (final payload first),
        anything else waits for approvals under the draft's intent and fee cap."""
        ledger = self.ledger
        t = ledger.load(transfer_id)
        wallet = ledger.wallet(t)
        payload = base64.b64decode(t.payload_b64)
        adopted = self._adopt(t, wallet)
        if adopted is not None:
            self.signing.follow(t, adopted)
            return
        who = Principal(t.initiator, t.tenant, frozenset({"business"}))
        n = attempt(t)
        meta: dict[str, object] = {"transferId": t.id, "memo": t.memo}
        if n > 1:  # signed again: its earlier transaction expired unlanded
            meta["attempt"] = n
        request_id = hsm_request_id(t.id, n)
        try:
            ev = self.networks.hsm.dry_run(wallet.key_label, payload, t.payload_type)
            if ev.released:
                final = self.signing.finalize_transfer(t.id, tier=ev.released_by)
                row = self.broker.submit(who, wallet.key_label, Action.USE, final,
                                         t.payload_type, None, meta, fee_cap=int(t.fee_cap),
                                         request_id=request_id, released=True)
            else:
                row = self.broker.submit(who, wallet.key_label, Action.USE, payload,
                                         t.payload_type, None, meta, fee_cap=int(t.fee_cap),
                                         auto=False, request_id=request_id)
        except TransportError as exc:  # the HSM is down, not refusing: keep it, retry
            log.warning("transfer %s: submit deferred, HSM unreachable: %s", t.id, exc)
            ledger.retry(t.id)
            return
        except HsmError as exc:
            with ledger.sessions.begin() as s:  # a nonce taken for it goes to the next one
                self.networks.planner(wallet.chain).after_failure(s, t)
            why = reasons.closed("failed", exc.reason, assets_of(wallet))
            ledger.move(t.id, State.FAILED, error=f"the HSM refused it: {why}")
            raise BadRequest(f"the HSM refused the request: {why}") from None
        except (ChainError, OSError) as exc:
            log.warning("transfer %s: submit deferred: %s", t.id, exc)
            ledger.retry(t.id, exc)
            return
        if row.status == Status.EXECUTED:  # signed at once: recorded with its SIGNED move
            self.signing.follow(t, row, sign_request_id=row.id)
            return
        with ledger.sessions.begin() as s:  # the worker follows it from now on
            s.execute(update(TransferRecord).where(TransferRecord.id == t.id).values(
                sign_request_id=row.id, next_check=None))
        self.signing.follow(ledger.load(t.id), row)

    def _adopt(self, t: TransferRecord, wallet: Wallet) -> SignRequest | None:
        """After a crash between the HSM and this row: the request already made for it -
        for its current attempt only (an earlier one, executed, signed a transaction
        that expired: adopting it would sign nothing new)."""
        if t.sign_request_id:
            return self.broker.get(t.sign_request_id)
        with self.ledger.sessions() as s:
            rows = list(s.scalars(select(SignRequest).where(
                SignRequest.key_label == wallet.key_label,
                SignRequest.payload_b64 == t.payload_b64)))
        for row in rows:
            meta = row.meta_data or {}
            if meta.get("transferId") == t.id and meta.get("attempt", 1) == attempt(t):
                with self.ledger.sessions.begin() as w:
                    w.execute(update(TransferRecord).where(
                        TransferRecord.id == t.id).values(sign_request_id=row.id))
                return row
        return None


def hsm_request_id(transfer_id: str, attempt: int = 1) -> str:
    """The HSM request of a transfer has an id of the transfer's own: a submission
    repeated after a crash (the HSM signed or opened it, this database never heard) finds
    that request in the HSM instead of having the payload signed a second time. A
    transfer signed again (its transaction expired unlanded) gets a new one per attempt,
    ``transfer-<id>-r<n>``: the HSM never re-opens an executed request."""
    return f"transfer-{transfer_id}" if attempt <= 1 else f"transfer-{transfer_id}-r{attempt}"


#: Destinations that burn what they receive, by chain: refused unless asked for.
_BURN = {"ethereum": frozenset({"0x" + "0" * 40})}


def _burns(chain: str, destination: str) -> bool:
    return destination.lower() in _BURN.get(chain, frozenset())


def _hard_limit(wallet: Wallet, symbol: str, decimals: int) -> int | None:
    tiers = wallet.policy_config.get("tiers", {})
    tier = tiers.get(symbol, {}) if isinstance(tiers, dict) else {}
    limit = tier.get("max") if isinstance(tier, dict) else None
    return None if limit is None else to_base_units(str(limit), decimals)
