"""What a wallet holds, and how much of it a new transfer may spend.

``total`` is the node's figure, now (never a number kept here: an unreachable node is a
503, not a stale figure). ``locked`` is what the wallet's live transfers hold until they
end: on a UTXO chain the coins their drafts picked (every coin a transfer spends is locked
whole, change included - a 0.1 BTC transfer funded by a 1 BTC coin locks the coin), on an
account chain the amounts of the transfers not yet broadcast (once broadcast, the node's
figure counts them). ``available`` = total - locked: what the next transfer can use, so a
refusal for want of funds says that figure, and the balance shows which transfers hold
the rest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from chains.specs import spec_of

from .models import TERMINAL, State, TransferRecord, Wallet
from .networks import Networks
from .policy import AssetInfo
from .units import to_text
from .wallets import assets_of

#: Account chains: a transfer's amount leaves the node's balance once broadcast.
_NOT_SENT = (State.REQUESTED, State.PENDING_APPROVAL, State.ON_HOLD, State.SIGNED)


@dataclass(frozen=True)
class Holding:
    """One asset of a wallet: total, locked by live transfers, available to the next."""

    info: AssetInfo
    total: int
    locks: dict[str, int]  #: transfer id -> base units it holds
    states: dict[str, str]  #: transfer id -> its state
    coins: list[dict[str, Any]] | None  #: UTXO chains: each coin, and who locks it

    @property
    def locked(self) -> int:
        return min(self.total, sum(self.locks.values()))

    @property
    def available(self) -> int:
        return self.total - self.locked

    def text(self, units: int) -> str:
        return f"{to_text(units, self.info.decimals)} {self.info.symbol}"

    def to_json(self) -> dict[str, Any]:
        d = self.info.decimals
        out: dict[str, Any] = {
            "symbol": self.info.symbol, "asset": self.info.asset,
            "amount": to_text(self.total, d), "baseUnits": str(self.total),
            "total": to_text(self.total, d), "locked": to_text(self.locked, d),
            "available": to_text(self.available, d),
            "pendingTransfers": [
                {"id": tid, "state": self.states[tid], "locks": to_text(units, d)}
                for tid, units in sorted(self.locks.items())]}
        if self.coins is not None:
            out.update(utxos=len(self.coins), coins=self.coins)
        return out


def holding(sessions: sessionmaker[Session], networks: Networks, wallet: Wallet,
            info: AssetInfo) -> Holding:
    held = networks.planner(wallet.chain).balance(wallet, info.asset)
    with sessions() as s:
        live = list(s.scalars(select(TransferRecord).where(
            TransferRecord.wallet_id == wallet.id,
            TransferRecord.state.not_in([st.value for st in TERMINAL]))))
    states = {t.id: t.state for t in live}
    if held.coins is None:
        sending = {t.id: int(t.amount) for t in live
                   if t.asset == info.asset and t.state in _NOT_SENT}
        return Holding(info, held.amount, sending, states, None)
    owner = {o: t.id for t in live for o in t.inputs or ()}
    locks: dict[str, int] = {}
    native = spec_of(wallet.chain).native.decimals
    coins = []
    for c in held.coins:
        by = owner.get(c.outpoint)
        if by is not None:
            locks[by] = locks.get(by, 0) + c.amount
        coins.append({"outpoint": c.outpoint, "amount": to_text(c.amount, native),
                      "path": c.path, "lockedBy": by})
    return Holding(info, held.amount, locks, states, coins)


def balances(sessions: sessionmaker[Session], networks: Networks,
             wallet: Wallet) -> list[dict[str, Any]]:
    return [holding(sessions, networks, wallet, a).to_json() for a in assets_of(wallet)]


def shortfall(sessions: sessionmaker[Session], networks: Networks, wallet: Wallet,
              info: AssetInfo, asked: int) -> str:
    """Why ``asked`` cannot be funded, with the figures a desk checks."""
    h = holding(sessions, networks, wallet, info)
    note = f"{h.text(asked)} asked, {h.text(h.available)} available"
    if h.locked:
        n = len(h.locks)
        note += (f" ({h.text(h.total)} held, {h.text(h.locked)} locked by {n} pending "
                 f"transfer{'s' if n != 1 else ''})")
    return note + "; fees are paid from the available amount too"
