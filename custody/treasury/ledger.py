"""Transfer rows and their transitions. The row carries a version; every transition is a
compare-and-set on it, with its history entry and webhook outbox rows in the same
transaction, so two workers (or a worker and an API process after a crash) never both
perform the same step. Intake, signing and the worker all move transfers through here."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from chains.errors import NodeUnavailable
from custody.broker import Principal
from custody.errors import BadRequest, Conflict, NotFound

from . import webhooks
from .models import (
    RESIGNS,
    TERMINAL,
    TRANSFERS,
    State,
    TransferRecord,
    Wallet,
    changed,
    resigns,
)

#: How soon a failed step (node or HSM unreachable) is tried again.
RETRY_SECONDS = 5.0
#: A new transfer is submitted by the call that created it; the worker takes it over only
#: if that call has not got it a sign request by then (its process died).
SUBMIT_LEASE_SECONDS = 15.0
#: States in which a transfer waits for its sign request.
WAITING = (State.REQUESTED, State.PENDING_APPROVAL, State.ON_HOLD)
#: How often a transfer whose signed transaction expired unlanded is signed again (under a
#: new sign request each time) before it fails: a chain that drops every attempt is not
#: going to take the next one either, and each attempt costs approvals or velocity.
MAX_RESIGNS = 5


@dataclass
class Move:
    """One transition for :meth:`TransferLedger.move_all`."""

    t: TransferRecord  #: the row as read (its version is the compare-and-set's)
    state: State
    values: dict[str, Any] = field(default_factory=dict)  #: more columns to set
    also: Callable[[Session], None] | None = None  #: more writes, only if it moves


class TransferLedger:
    def __init__(self, sessions: sessionmaker[Session], *,
                 clock: Callable[[], float] = time.time,
                 on_event: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.sessions = sessions
        #: every part reads time here (tests move it forward)
        self.clock = clock
        self.on_event = on_event or (lambda _e: None)
        self._wallets: dict[str, Wallet] = {}

    # -- reading ------------------------------------------------------------------------

    def load(self, transfer_id: str) -> TransferRecord:
        with self.sessions() as s:
            t = s.get(TransferRecord, transfer_id)
            if t is None:
                raise NotFound(f"no transfer {transfer_id!r}")
            return t

    def earlier_attempts(self, request_ids: Sequence[str],
                         ) -> dict[str, list[dict[str, object]]]:
        """For transfers' sign requests (a task list's, in one query): each signed-again
        transfer's earlier attempts, whose signed transactions expired unlanded
        (``txid``, ``reason``, ``at``), by request id - from the broker's own record of
        the transfer, never from a request's caller-set metadata. Requests of no
        transfer, and first attempts, are absent."""
        if not request_ids:
            return {}
        with self.sessions() as s:
            found = list(s.scalars(select(TransferRecord).where(
                TransferRecord.sign_request_id.in_(list(request_ids)))))
        return {t.sign_request_id: earlier for t in found
                if t.sign_request_id is not None and (earlier := resigns(t))}

    def wallet(self, t: TransferRecord) -> Wallet:
        """The transfer's wallet. Its row is written once, when the wallet is made, and
        never changed, so each process reads it once."""
        w = self._wallets.get(t.wallet_id)
        if w is None:
            with self.sessions() as s:
                w = s.get(Wallet, t.wallet_id)
                assert w is not None
            self._wallets[t.wallet_id] = w
        return w

    def get(self, who: Principal, transfer_id: str) -> TransferRecord:
        t = self.load(transfer_id) if isinstance(transfer_id, str) else None
        if t is None or t.tenant != who.tenant:
            raise NotFound(f"no transfer {transfer_id!r}")
        return t

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

    # -- transitions --------------------------------------------------------------------

    def lease_end(self) -> float:
        """Until when a submission just taken (by its creator or a worker) is its own."""
        return self.clock() + SUBMIT_LEASE_SECONDS

    def move(self, transfer_id: str, state: State, *, current: TransferRecord | None = None,
             also: Callable[[Session], None] | None = None, **values: Any) -> bool:
        """One transition, its history entry and its webhook rows, in one transaction;
        never out of a terminal state.

        ``current``: the row as the caller just read it (saves reading it again; a stale
        one loses the compare-and-set and the row is read afresh). On success it holds
        the moved row's values. ``also``: more writes that belong to this step (a nonce
        slot spent on chain), made in the same transaction only if the move wins."""
        for attempt in range(10):
            t = current if current is not None and attempt == 0 else self.load(transfer_id)
            if t.state in TERMINAL or t.state == state.value:
                return False
            if self.move_all([Move(t, state, dict(values), also)]):
                return True
        raise Conflict(f"transfer {transfer_id} is contended; retry")

    def move_all(self, moves: Sequence[Move],
                 notes: Sequence[tuple[str, dict[str, Any]]] = ()) -> int:
        """Transitions of several rows in one transaction (a worker's pass over what it
        broadcast or saw confirmed), each its own compare-and-set on its row's version
        with its history entry, webhook rows and ``also``: one that loses (its row moved
        meanwhile) is left as the database has it, for the next pass. Each moved ``t``
        then holds its row as written. ``notes``: plain updates of other rows (how deep,
        when to look again), in the same transaction. Returns how many moved."""
        bodies: list[dict[str, Any]] = []
        endpoints: dict[str, list[str]] = {}
        with self.sessions.begin() as s:
            conn = s.connection()
            for m in moves:
                t = m.t
                if t.state in TERMINAL or t.state == m.state.value:
                    continue
                now = datetime.now(UTC)
                moved = {"error": None,  # a step succeeded: no longer waiting
                         **m.values, "state": m.state, "updated_at": now,
                         "version": t.version + 1, "history": [
                             *t.history, {"state": m.state.value, "at": now.isoformat()}]}
                if changed(conn.execute(update(TRANSFERS).where(
                        TRANSFERS.c.id == t.id, TRANSFERS.c.version == t.version).values(
                            **moved))) != 1:
                    continue
                for name, value in moved.items():
                    setattr(t, name, value)
                body = event(t)
                webhooks.enqueue(s, t.tenant, t.id, body, self.clock(), endpoints)
                if m.also is not None:
                    m.also(s)
                bodies.append(body)
            for transfer_id, values in notes:
                conn.execute(update(TRANSFERS).where(TRANSFERS.c.id == transfer_id).values(
                    **values))
        for body in bodies:
            self.on_event(body)
        return len(bodies)

    def resign(self, t: TransferRecord, reason: str) -> bool:
        """``t``'s signed transaction provably can never land (the caller asked the node):
        back to ``requested`` with no sign request, so a new one is raised for it - the
        old txid and request kept in ``details`` and in the history, with why. One
        compare-and-set on version, state and txid, committed before anything is asked
        of the HSM: a crash after it leaves a transfer the worker submits again (under
        the next attempt's request id); a crash before it, the old transaction, still
        dead, for the next pass to prove again. Past :data:`MAX_RESIGNS` the transfer
        fails instead. False if another worker moved it first; else ``t`` holds the row
        as written."""
        earlier = resigns(t)
        now = datetime.now(UTC)
        entry: dict[str, object] = {"txid": t.txid, "signRequestId": t.sign_request_id,
                                    "reason": reason, "at": now.isoformat()}
        values: dict[str, Any] = {
            "state": State.REQUESTED, "sign_request_id": None, "raw_b64": None, "txid": None,
            "confirmations": 0, "block": None, "tier": None, "error": None,
            "next_check": None, "updated_at": now, "version": t.version + 1,
            "details": {**t.details, "final": False, RESIGNS: [*earlier, entry]},
            "history": [*t.history, {"state": State.REQUESTED.value, "at": now.isoformat(),
                                     "resigned": entry}]}
        if len(earlier) >= MAX_RESIGNS:
            values = {"state": State.FAILED, "next_check": None, "updated_at": now,
                      "version": t.version + 1, "error": (
                          f"signed {len(earlier) + 1} times; each transaction expired "
                          f"before it landed (the last: {reason}); nothing moved"),
                      "history": [*t.history, {"state": State.FAILED.value,
                                               "at": now.isoformat()}]}
        with self.sessions.begin() as s:
            won = s.execute(update(TransferRecord).where(
                TransferRecord.id == t.id, TransferRecord.version == t.version,
                TransferRecord.state == t.state, TransferRecord.txid == t.txid).values(
                    **values))
            if changed(won) == 1:
                for name, value in values.items():  # ``t`` is now the row as written
                    setattr(t, name, value)
                body = event(t)
                webhooks.enqueue(s, t.tenant, t.id, body, self.clock())
        if changed(won) != 1:
            return False
        self.on_event(body)
        return True

    def lease(self, t: TransferRecord) -> bool:
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

    def claim_all(self, rows: Sequence[TransferRecord]) -> Sequence[TransferRecord]:
        """:meth:`claim` for several rows in one transaction: the ones this worker won
        (their version advanced), committed before any of their steps is taken."""
        won: list[TransferRecord] = []
        with self.sessions.begin() as s:
            conn = s.connection()
            for t in rows:
                if changed(conn.execute(update(TRANSFERS).where(
                        TRANSFERS.c.id == t.id, TRANSFERS.c.version == t.version).values(
                            version=t.version + 1))) == 1:
                    won.append(t)
        for t in won:
            t.version += 1
        return won

    def claim(self, t: TransferRecord) -> TransferRecord | None:
        """Take the next step of ``t`` for this worker alone (compare-and-set)."""
        with self.sessions.begin() as s:
            won = s.connection().execute(update(TRANSFERS).where(
                TRANSFERS.c.id == t.id, TRANSFERS.c.version == t.version).values(
                    version=t.version + 1))
        if changed(won) != 1:
            return None
        t.version += 1
        return t

    def retry(self, transfer_id: str, exc: Exception | None = None) -> None:
        with self.sessions.begin() as s:
            s.execute(update(TransferRecord).where(TransferRecord.id == transfer_id).values(
                next_check=self.clock() + RETRY_SECONDS))
        if isinstance(exc, NodeUnavailable):
            self.note(transfer_id, exc)

    def note(self, transfer_id: str, exc: NodeUnavailable) -> None:
        """An outage is not a failure: the transfer keeps its state and says why it waits
        (``error``), until its next step succeeds and clears the note."""
        with self.sessions.begin() as s:
            s.execute(update(TransferRecord).where(
                TransferRecord.id == transfer_id,
                TransferRecord.state.not_in([st.value for st in TERMINAL])).values(
                    error=f"waiting for the node ({exc.code}): {exc.reason}"))


def event(t: TransferRecord) -> dict[str, Any]:
    """The webhook and SSE event of a transfer's state."""
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
