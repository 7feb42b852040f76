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
    broadcast is freed for the next transfer; a signed Solana transaction the node proves
    can never land - its blockhash went first - sends the transfer back to requested, for
    a new sign request under the policy again, at most MAX_RESIGNS times)

One concept a module, composed in :class:`Treasury`: :mod:`.intake` (validate, build,
record, submit), :mod:`.signing` (finalize before the HSM signs, mirror the sign
request), :mod:`.worker` (broadcast, confirmations, the loop), over :mod:`.ledger`
(the rows and their compare-and-set transitions).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from custody.broker import Broker, Principal
from custody.db import SignRequest

from . import cancel, webhooks
from .intake import TransferIntake
from .ledger import TransferLedger, transfer_json
from .models import DepositAddress, TransferRecord, Wallet
from .networks import Networks
from .signing import TransferSigning
from .worker import POLL_SECONDS, TransferWorker

__all__ = ["Treasury", "transfer_json"]


class Treasury:
    def __init__(self, broker: Broker, networks: Networks, *,
                 clock: Callable[[], float] = time.time,
                 on_event: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.broker = broker
        self.networks = networks
        self.sessions: sessionmaker[Session] = broker.sessions
        self._wake = threading.Event()
        self.ledger = TransferLedger(self.sessions, clock=clock, on_event=on_event)
        self.signing = TransferSigning(self.ledger, networks, self.nudge)
        self.intake = TransferIntake(broker, networks, self.ledger, self.signing, self.nudge)
        self.worker = TransferWorker(broker, networks, self.ledger, self.intake, self.signing,
                                     self._wake)
        broker.release.finalize = self.signing.finalize_hook
        previous = broker.store.on_change

        def on_change(row: SignRequest) -> None:
            previous(row)
            self.signing.on_request_change(row)

        broker.store.on_change = on_change
        networks.issued = self.issued_addresses

    def create(self, who: Principal, wallet_id: str, symbol: str, destination: str,
               amount: str, memo: str = "", *, transfer_id: str | None = None,
               allow_zero_address: bool = False) -> TransferRecord:
        """:meth:`TransferIntake.create`."""
        return self.intake.create(who, wallet_id, symbol, destination, amount, memo,
                                  transfer_id=transfer_id,
                                  allow_zero_address=allow_zero_address)

    def cancel(self, who: Principal, transfer_id: str) -> TransferRecord:
        """:func:`.cancel.cancel`: withdraw a transfer the HSM has not signed."""
        return cancel.cancel(self.broker, self.ledger, self.networks, who, transfer_id)

    def get(self, who: Principal, transfer_id: str) -> TransferRecord:
        return self.ledger.get(who, transfer_id)

    def list(self, who: Principal, *, state: str | None = None, wallet: str | None = None,
             limit: int = 50, offset: int = 0) -> list[TransferRecord]:
        return self.ledger.list(who, state=state, wallet=wallet, limit=limit, offset=offset)

    def advance(self, transfer_id: str) -> TransferRecord:
        """:meth:`TransferWorker.advance`: one transfer as far as it can go now."""
        return self.worker.advance(transfer_id)

    def step(self) -> int:
        """:meth:`TransferWorker.step`: every transfer that can move."""
        return self.worker.step()

    def nudge(self) -> None:
        """Wake the worker now (a transfer was created or its sign request moved); a
        nudge while it is busy makes it go round again at once instead of sleeping."""
        self._wake.set()

    def run(self, stop: threading.Event, dispatcher: webhooks.Dispatcher | None = None,
            interval: float = POLL_SECONDS) -> None:
        self.worker.run(stop, dispatcher, interval)

    def issued_addresses(self, key_label: str) -> int:
        """Receive addresses handed out for a wallet key (its coin scan covers them)."""
        with self.sessions() as s:
            top = s.scalar(select(func.max(DepositAddress.idx)).join(
                Wallet, Wallet.id == DepositAddress.wallet_id).where(
                    Wallet.key_label == key_label))
        return 0 if top is None else int(top) + 1
