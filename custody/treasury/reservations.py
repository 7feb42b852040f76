"""The broker's side of what chain planners keep: coin locks and nonce slots, in SQL.

A planner (``chains/<chain>/planner.py``) keeps no state; what must survive a restart
is here, in the broker's database and in the caller's transaction, behind the
:class:`chains.planning.Ledger` interface: the outpoints live transfers spend (UTXO
chains), and one row per account nonce (:class:`~.models.NonceSlot`): reserved by a
transfer, then broadcast; or freed, never broadcast, and taken by the next transfer.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from chains.errors import ChainError

from .models import TERMINAL, NonceSlot, TransferRecord, Wallet


class SqlLedger:
    def locked_inputs(self, s: Session, wallet_id: str) -> set[str]:
        locked: set[str] = set()
        for inputs in s.scalars(select(TransferRecord.inputs).where(
                TransferRecord.wallet_id == wallet_id,
                TransferRecord.state.not_in([st.value for st in TERMINAL]))):
            locked.update(inputs or ())
        return locked

    def allocate_nonce(self, sessions: sessionmaker[Session], transfer_id: str,
                       wallet_id: str, network_id: int, account: str,
                       pending: Callable[[], int]) -> int:
        """The lowest freed slot, else the next one - committed before anything is signed
        with it. One transaction per attempt, opened by writing the wallet's row (a row
        lock on PostgreSQL, the write lock on SQLite): two finalizers of one transfer
        (an API releasing it, a worker advancing it) never both find it without a slot,
        so it never holds two; the unique constraint settles anything else.

        The node is asked for its next nonce before the transaction, not inside it: the
        write lock it opens is the database's (all of SQLite's), and a node call under it
        made every writer of the service wait for the node. A count read a moment early
        is as good a floor: what a moment adds to it is this broker's own transactions,
        whose slots this ledger holds already (``highest + 1`` is above them)."""
        for _ in range(20):
            floor = pending()
            try:
                with sessions.begin() as s:
                    s.execute(update(Wallet).where(Wallet.id == wallet_id).values(
                        name=Wallet.name).execution_options(synchronize_session=False))
                    owned = s.scalar(select(NonceSlot.nonce).where(
                        NonceSlot.transfer_id == transfer_id, NonceSlot.state != "free"))
                    if owned is not None:
                        return int(owned)
                    free = s.scalar(select(NonceSlot).where(
                        NonceSlot.chain_id == network_id, NonceSlot.address == account,
                        NonceSlot.state == "free").order_by(NonceSlot.nonce).limit(1))
                    if free is not None:
                        free.state, free.transfer_id = "reserved", transfer_id
                        return int(free.nonce)
                    highest = self._highest(s, network_id, account)
                    nonce = max(highest + 1, floor)
                    s.add(NonceSlot(chain_id=network_id, address=account, nonce=nonce,
                                    state="reserved", transfer_id=transfer_id))
                    return nonce
            except IntegrityError:
                continue
        raise ChainError("could not allocate a nonce (contention); retry")

    @staticmethod
    def _highest(s: Session, network_id: int, account: str) -> int:
        value = s.scalar(select(func.max(NonceSlot.nonce)).where(
            NonceSlot.chain_id == network_id, NonceSlot.address == account))
        return -1 if value is None else int(value)

    def nonce_broadcast(self, s: Session, transfer_id: str) -> None:
        s.execute(update(NonceSlot).where(NonceSlot.transfer_id == transfer_id,
                                          NonceSlot.state == "reserved").values(
                                              state="broadcast"))

    def nonce_free(self, s: Session, transfer_id: str) -> None:
        s.execute(update(NonceSlot).where(NonceSlot.transfer_id == transfer_id,
                                          NonceSlot.state == "reserved").values(
                                              state="free", transfer_id=None))
