"""The transfer worker: carries every transfer on from wherever it stopped - submits the
ones whose creator died (after its lease), follows sign requests, broadcasts signed
transactions and watches them to their confirmation depth. Broadcasting re-sends
identical bytes at worst, which every chain treats as the same transaction.

A signed transaction that can expire unlanded (Solana: its blockhash went while a
crash, an outage or load held its broadcast back) is watched until the node proves it
can never land (:meth:`~chains.planning.Planner.expired`); only then is the transfer
sent back to ``requested`` (:meth:`.TransferLedger.resign`, committed) and a new sign
request raised for it, under the key's policy again - so there is never a second live
transaction for one transfer."""

from __future__ import annotations

import base64
import logging
import threading

from sqlalchemy import select, update

from chains.errors import BroadcastExpired, BroadcastRejected, ChainError
from chains.planning import Planner
from custody.broker import Broker
from custody.errors import CustodyError
from hsm_emulator.errors import HsmError

from . import webhooks
from .intake import TransferIntake
from .ledger import WAITING, TransferLedger
from .models import TERMINAL, State, TransferRecord
from .networks import Networks
from .signing import TransferSigning

log = logging.getLogger("custody.treasury")
#: How often a broadcast transfer's confirmations are looked at.
POLL_SECONDS = 1.0


class TransferWorker:
    def __init__(self, broker: Broker, networks: Networks, ledger: TransferLedger,
                 intake: TransferIntake, signing: TransferSigning,
                 wake: threading.Event) -> None:
        self.broker = broker
        self.networks = networks
        self.ledger = ledger
        self.intake = intake
        self.signing = signing
        #: the worker sleeps on it between passes; set when a transfer can move
        self.wake = wake

    def step(self) -> int:
        """Move every transfer that can move; returns how many were looked at."""
        now = self.ledger.clock()
        # the due rows in one query; every step is a compare-and-set on the row's version,
        # so a row that changed meanwhile loses its step (a move reads it again)
        with self.ledger.sessions() as s:
            due = list(s.scalars(select(TransferRecord).where(
                TransferRecord.state.not_in([st.value for st in TERMINAL]),
                (TransferRecord.next_check.is_(None)) | (TransferRecord.next_check <= now))))
        for t in due:
            try:
                self._advance(t)
            except (CustodyError, HsmError, ChainError, OSError) as exc:
                log.warning("transfer %s: %s", t.id, exc)
                self.ledger.retry(t.id, exc)
        return len(due)

    def advance(self, transfer_id: str) -> TransferRecord:
        """One transfer as far as it can go now; the row as it then is."""
        self._advance(self.ledger.load(transfer_id))
        return self.ledger.load(transfer_id)

    def _advance(self, t: TransferRecord) -> None:
        ledger = self.ledger
        if t.state in WAITING:
            self._request(t)
            t = ledger.load(t.id)
        # each step below leaves ``t`` as the row it wrote (or as read, if it lost)
        signed = t.state in (State.SIGNED, State.BROADCAST)
        if t.state == State.SIGNED:
            self._broadcast(t)
        if t.state == State.BROADCAST:
            self._confirm(t)
        if signed and t.state == State.REQUESTED:  # its transaction expired unlanded:
            self._request(t)  # signed again, under a new request

    def _request(self, t: TransferRecord) -> None:
        """A waiting transfer: submitted (once its creator's lease is over), or its sign
        request followed."""
        if not t.sign_request_id:
            if self.ledger.lease(t):  # else the creating call (or another worker) submits
                self.intake.submit(t.id)
        else:
            self.signing.follow(t, self.broker.advance(t.sign_request_id))

    def _broadcast(self, t: TransferRecord) -> None:
        wallet = self.ledger.wallet(t)
        planner = self.networks.planner(wallet.chain)
        claimed = self.ledger.claim(t)
        if claimed is None:
            return
        raw = base64.b64decode(t.raw_b64 or "")
        try:
            txid = planner.broadcast(raw)
        except BroadcastExpired as exc:  # maybe only the node's view: proven, or kept
            self._expired(t, planner, f"the node refused it: {exc}")
            return
        except BroadcastRejected as exc:
            self.ledger.move(t.id, State.FAILED, current=t,
                             also=lambda s: planner.after_failure(s, t),
                             error=f"the node rejected the transaction: {exc}")
            return
        if txid.lower().removeprefix("0x") != (t.txid or "").lower().removeprefix("0x"):
            log.warning("transfer %s: node reports %s for %s", t.id, txid, t.txid)
        self.ledger.move(t.id, State.BROADCAST, current=t,
                         also=lambda s: planner.after_broadcast(s, t),
                         next_check=self.ledger.clock() + POLL_SECONDS)

    def _confirm(self, t: TransferRecord) -> None:
        wallet = self.ledger.wallet(t)
        planner = self.networks.planner(wallet.chain)
        try:
            c = planner.confirmation(t.txid or "")
        except BroadcastRejected as exc:  # landed but failed (Solana): fee spent, no transfer
            self.ledger.move(t.id, State.FAILED, current=t, error=str(exc))
            return
        if c.confirmations == 0 and not c.included and planner.expired(t):
            self._resign(t, "it expired unlanded while broadcast")
            return
        depth = self.networks.depth(wallet.chain)
        if c.confirmations >= depth:
            self.ledger.move(t.id, State.CONFIRMED, current=t, confirmations=c.confirmations,
                             block=c.block_hash, next_check=None)
        else:
            lost = c.confirmations == 0 and not planner.known(t.txid or "")
            note = self._resend(t, planner) if lost else None
            with self.ledger.sessions.begin() as s:
                s.execute(update(TransferRecord).where(TransferRecord.id == t.id).values(
                    confirmations=c.confirmations, error=note,
                    next_check=self.ledger.clock() + POLL_SECONDS))

    def _expired(self, t: TransferRecord, planner: Planner, why: str) -> None:
        """The node refused ``t``'s transaction as expired: signed again if the node
        proves it can never land, else kept as it is and tried again (a node behind the
        one that gave the blockhash refuses it too, for a while)."""
        if planner.expired(t):
            self._resign(t, why)
            return
        with self.ledger.sessions.begin() as s:
            s.execute(update(TransferRecord).where(TransferRecord.id == t.id).values(
                error=f"{why}; not yet provably expired, trying again",
                next_check=self.ledger.clock() + POLL_SECONDS))

    def _resign(self, t: TransferRecord, why: str) -> None:
        log.warning("transfer %s: %s can never land (%s); signing it again", t.id, t.txid,
                    why)
        self.ledger.resign(t, why)

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

    def run(self, stop: threading.Event, dispatcher: webhooks.Dispatcher | None = None,
            interval: float = POLL_SECONDS) -> None:
        while not stop.is_set():
            self.wake.clear()  # before the pass: a nudge during it is kept, not lost
            try:
                self.step()
                if dispatcher is not None:
                    dispatcher.deliver_due()
            except Exception:  # the loop must outlive any one failure; it is logged
                log.exception("treasury worker step failed")
            self.wake.wait(timeout=interval)
