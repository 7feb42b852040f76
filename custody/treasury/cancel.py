"""A desk withdraws a transfer (``DELETE /v1/transfers/{id}``): possible until the HSM has
signed it. Its sign request is cancelled in the HSM first (so no approval can release it
any more), then here; the transfer mirrors that like any other end of its request (its
webhook fires, its coins or nonce go back to the wallet). Once signed, the transaction may
be on its way to the network: a 409 then, never a transfer that says cancelled while its
transaction confirms."""

from __future__ import annotations

import contextlib

from custody.broker import Broker, Principal
from custody.errors import Conflict, NotFound

from .intake import hsm_request_id
from .ledger import WAITING, TransferLedger
from .models import State, TransferRecord, attempt
from .networks import Networks


def cancel(broker: Broker, ledger: TransferLedger, networks: Networks, who: Principal,
           transfer_id: str) -> TransferRecord:
    t = ledger.get(who, transfer_id)  # another tenant's: 404
    if t.state not in WAITING:
        raise Conflict(_too_late(t))
    request_id = t.sign_request_id or _made_for(broker, t)
    if request_id is not None:
        # (if it ended meanwhile - executed, rejected - the transfer mirrors that)
        with contextlib.suppress(Conflict):
            broker.release.cancel(who, request_id, f"cancelled by {who.subject}")
    else:  # no sign request yet (its submission waits for the HSM): end it here
        wallet = ledger.wallet(t)
        with ledger.sessions.begin() as s:
            networks.planner(wallet.chain).after_failure(s, t)
        ledger.move(t.id, State.CANCELLED, error=f"cancelled by {who.subject}")
    t = ledger.load(t.id)
    if t.state != State.CANCELLED:
        raise Conflict(_too_late(t))
    return t


def _made_for(broker: Broker, t: TransferRecord) -> str | None:
    """A sign request raised for the transfer whose id was not recorded on it yet."""
    try:
        return broker.get(hsm_request_id(t.id, attempt(t)), t.tenant).id
    except NotFound:
        return None


def _too_late(t: TransferRecord) -> str:
    if t.state in (State.SIGNED, State.BROADCAST, State.CONFIRMED):
        return (f"transfer {t.id} is {t.state}: the HSM has signed it, it can no longer be "
                "cancelled")
    return f"transfer {t.id} is already {t.state}"
