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
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import select, update

from chains.errors import BroadcastExpired, BroadcastRejected, ChainError
from chains.planning import Planner
from custody.broker import Broker
from custody.errors import CustodyError
from hsm_emulator.errors import HsmError

from . import webhooks
from .intake import TransferIntake
from .ledger import WAITING, Move, TransferLedger
from .models import TERMINAL, State, TransferRecord
from .networks import Networks
from .signing import TransferSigning

log = logging.getLogger("custody.treasury")
R = TypeVar("R")
#: Rows a pass carries through its phases at most: their broadcasts are recorded (and
#: their claims taken) in one transaction each, so a pass bounds what a crash re-sends.
PASS_ROWS = 100
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
        for i in range(0, len(due), PASS_ROWS):
            self._pass(due[i:i + PASS_ROWS])
        return len(due)

    def advance(self, transfer_id: str) -> TransferRecord:
        """One transfer as far as it can go now; the row as it then is. A step that fails
        raises (the pass of :meth:`step` notes it and tries the row again later)."""
        self._pass([self.ledger.load(transfer_id)], raising=True)
        return self.ledger.load(transfer_id)

    def _pass(self, rows: list[TransferRecord], *, raising: bool = False) -> None:
        """Each row as far as it goes now, phase by phase: the waiting ones one by one
        (their sign requests), then every signed one claimed in one transaction, broadcast,
        and recorded broadcast in one more; then every broadcast one asked about and its
        confirmation recorded in one; a transfer whose transaction expired unlanded is
        signed again at the end. A failure of one row's step is that row's retry (or,
        ``raising``, the caller's)."""
        guarded = self._raising if raising else self._guarded
        ready: list[TransferRecord] = []
        for row in rows:
            if row.state in WAITING:
                if not guarded(row, self._request, row):
                    continue
                ready.append(self.ledger.load(row.id))
            else:
                ready.append(row)
        signed = [t for t in ready if t.state in (State.SIGNED, State.BROADCAST)]
        claimed = self.ledger.claim_all([t for t in ready if t.state == State.SIGNED])
        self.ledger.move_all([m for t in claimed
                              if (m := guarded(t, self._broadcast, t)) is not None])
        moves: list[Move] = []
        notes: list[tuple[str, dict[str, Any]]] = []
        for t in ready:
            if t.state == State.BROADCAST:
                guarded(t, self._confirm, t, moves, notes)
        self.ledger.move_all(moves, notes)
        for t in signed:
            if t.state == State.REQUESTED:  # its transaction expired unlanded: signed
                guarded(t, self._request, t)

    def _guarded(self, t: TransferRecord, step: Callable[..., R], *args: Any) -> R | None:
        """``step(*args)`` for row ``t``; a failure (node, HSM, a refusal) is logged and
        ``t`` is tried again after a while."""
        try:
            return step(*args)
        except (CustodyError, HsmError, ChainError, OSError) as exc:
            log.warning("transfer %s: %s", t.id, exc)
            self.ledger.retry(t.id, exc)
            return None

    @staticmethod
    def _raising(_t: TransferRecord, step: Callable[..., R], *args: Any) -> R | None:
        return step(*args)

    def _request(self, t: TransferRecord) -> bool:
        """A waiting transfer: submitted (once its creator's lease is over), or its sign
        request followed."""
        if not t.sign_request_id:
            if self.ledger.lease(t):  # else the creating call (or another worker) submits
                self.intake.submit(t.id)
        else:
            self.signing.follow(t, self.broker.advance(t.sign_request_id))
        return True

    def _broadcast(self, t: TransferRecord) -> Move | None:
        """Send ``t`` (claimed by this worker); its move, for the pass to record."""
        wallet = self.ledger.wallet(t)
        planner = self.networks.planner(wallet.chain)
        raw = base64.b64decode(t.raw_b64 or "")
        try:
            txid = planner.broadcast(raw)
        except BroadcastExpired as exc:  # maybe only the node's view: proven, or kept
            self._expired(t, planner, f"the node refused it: {exc}")
            return None
        except BroadcastRejected as exc:
            return Move(t, State.FAILED, {"error": f"the node rejected the transaction: {exc}"},
                        also=lambda s: planner.after_failure(s, t))
        if txid.lower().removeprefix("0x") != (t.txid or "").lower().removeprefix("0x"):
            log.warning("transfer %s: node reports %s for %s", t.id, txid, t.txid)
        return Move(t, State.BROADCAST, {"next_check": self.ledger.clock() + POLL_SECONDS},
                    also=lambda s: planner.after_broadcast(s, t))

    def _confirm(self, t: TransferRecord, moves: list[Move],
                 notes: list[tuple[str, dict[str, Any]]]) -> None:
        """Ask how deep ``t`` is; its move or note goes to the pass's lists."""
        wallet = self.ledger.wallet(t)
        planner = self.networks.planner(wallet.chain)
        try:
            c = planner.confirmation(t.txid or "")
        except BroadcastRejected as exc:  # landed but failed (Solana): fee spent, no transfer
            moves.append(Move(t, State.FAILED, {"error": str(exc)}))
            return
        if c.confirmations == 0 and not c.included and planner.expired(t):
            self._resign(t, "it expired unlanded while broadcast")
            return
        depth = self.networks.depth(wallet.chain)
        if c.confirmations >= depth:
            moves.append(Move(t, State.CONFIRMED, {
                "confirmations": c.confirmations, "block": c.block_hash, "next_check": None}))
        else:
            lost = c.confirmations == 0 and not planner.known(t.txid or "")
            note = self._resend(t, planner) if lost else None
            notes.append((t.id, {"confirmations": c.confirmations, "error": note,
                                 "next_check": self.ledger.clock() + POLL_SECONDS}))

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
