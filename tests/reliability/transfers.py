"""Transfer traffic through ``POST /v1/transfers`` on funded wallets of every chain (the
lanes of :mod:`.lanes`), for the kill loop.

Four scenarios per lane: ``small`` (confirmed with no approval), ``medium`` (two traders
approve; confirmed), ``reject`` (two traders refuse; rejected, nothing signed) and
``large`` (two traders and compliance approve, then the 24 h hold passes on the HSM's
clock; confirmed). Every transfer goes to a fresh destination of its own, so a
destination's balance says how often its transfer arrived. Creates carry an
Idempotency-Key and are retried like the sign-request traffic (:mod:`.traffic`); a
create the client never saw answered is found again the way a careful desk would, by
listing the wallet's transfers (by destination), and then driven to its end.

The invariants live beside it: :mod:`.transfer_checks` (every chain: the client's
intents, the HSM's audit log against the broker and the policy) and one module per
chain (:mod:`.chain_eth`, :mod:`.chain_btc`, :mod:`.chain_sol`).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from custody.localnets import LocalNets

from .hsmtime import HsmTime
from .lanes import HOLD_SECONDS, Funding, Lane, fund, wallet_request
from .traffic import Desk, GaveUp

EXPECTED = {"small": "confirmed", "medium": "confirmed", "reject": "rejected",
            "large": "confirmed"}
STEPS: dict[str, tuple[str, ...]] = {
    "small": (), "medium": ("approve:t1", "approve:t2"), "reject": ("reject:t1", "reject:t2"),
    "large": ("approve:t1", "approve:t2", "approve:c1")}
#: Scenario weights of the traffic.
KINDS = ["small"] * 3 + ["medium"] * 2 + ["reject", "large"]
FINAL = frozenset({"confirmed", "rejected", "expired", "cancelled", "failed"})
MINED = frozenset({"broadcast", "confirmed"})
SETTLE_SECONDS = 45.0


@dataclass
class Transfer:
    lane: Lane
    kind: str
    key: str  #: Idempotency-Key of the create
    destination: str
    units: int
    transfer_id: str | None = None
    request_id: str | None = None
    acked: bool = False  #: the create was answered 201 (not found again by listing)
    done: set[str] = field(default_factory=set)

    @property
    def amount(self) -> str:
        return self.lane.text(self.units)

    @property
    def complete(self) -> bool:
        return self.transfer_id is not None and self.done >= set(STEPS[self.kind])


class TransferDesk:
    """The desk's transfers on one wallet per chain, over the same retrying client."""

    def __init__(self, desk: Desk, nets: LocalNets, lanes: list[Lane], seed: int,
                 clock: HsmTime) -> None:
        self.desk = desk
        self.nets = nets
        self.lanes = lanes
        self.clock = clock
        self.transfers: list[Transfer] = []
        self.lock = threading.Lock()
        self.rng = random.Random(seed)
        self.wallets: dict[str, Funding] = {}  #: by chain

    def setup(self) -> None:
        for chain in dict.fromkeys(lane.chain for lane in self.lanes):
            token = self.nets.deploy_token() if any(
                lane.name == "erc20" for lane in self.lanes) and chain == "ethereum" else ""
            r = self.desk.call("POST", "/v1/wallets", wallet_request(
                chain, self.lanes, self.desk.people, token),
                self.desk.headers("key_admin") | {"Idempotency-Key": f"wallet-{chain}"})
            assert r.status_code == 201, r.text
            wallet = r.json()
            self.wallets[chain] = Funding(wallet, fund(self.nets, chain, wallet, token), token)

    def wallet(self, lane: Lane) -> dict[str, Any]:
        return self.wallets[lane.chain].wallet

    def new(self, lane: Lane, kind: str) -> Transfer:
        with self.lock:
            n = len(self.transfers)
            dest = lane.destination(self.rng)
            x = Transfer(lane, kind, f"t-{lane.name}-{dest[-10:].lower()}-{n}", dest,
                         lane.amount(kind, self.rng))
            self.transfers.append(x)
        return x

    def create(self, x: Transfer) -> None:
        hdr = self.desk.headers("business") | {"Idempotency-Key": x.key}
        r = self.desk.call("POST", "/v1/transfers", {
            "wallet": self.wallet(x.lane)["id"], "asset": x.lane.symbol,
            "destination": x.destination, "amount": x.amount}, hdr)
        if r.status_code != 201:
            raise AssertionError(f"create {x.lane.name} {x.kind}: {r.status_code} "
                                 f"{r.text[:200]}")
        body = r.json()
        x.transfer_id, x.request_id, x.acked = body["id"], body["signRequestId"], True

    def get(self, transfer_id: str) -> dict[str, Any]:
        r = self.desk.call("GET", f"/v1/transfers/{transfer_id}", None,
                           self.desk.headers("business"))
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out

    def wait_request(self, x: Transfer) -> str:
        """The sign request the broker raised for ``x`` (at once, or by the worker after an
        outage deferred it)."""
        end = time.time() + self.desk.deadline
        while True:
            t = self.get(str(x.transfer_id))
            if t["signRequestId"]:
                return str(t["signRequestId"])
            if t["state"] in FINAL:
                raise AssertionError(f"{x.kind} {x.transfer_id}: {t['state']} before its "
                                     f"sign request ({t['error']})")
            if time.time() > end:
                raise GaveUp(f"transfer {x.transfer_id}: no sign request")
            time.sleep(0.2)

    def drive(self, x: Transfer) -> None:
        if x.transfer_id is None:
            self.create(x)
        if STEPS[x.kind] and x.request_id is None:
            x.request_id = self.wait_request(x)
        for step in STEPS[x.kind]:
            if step in x.done:
                continue
            verb, who = step.split(":")
            self.desk.answer(str(x.request_id), self.desk.people[who], verb == "reject")
            x.done.add(step)

    def find_unanswered(self, items: list[Transfer]) -> None:
        """Creates whose answer was lost: the transfer may exist all the same (the server
        died after storing it). Found by destination, as a desk would, before any retry."""
        for funding in self.wallets.values():
            self._find_in(funding.wallet["id"], items)

    def _find_in(self, wallet_id: str, items: list[Transfer]) -> None:
        missing = {x.destination.lower(): x for x in items if x.transfer_id is None}
        offset = 0
        while missing:
            r = self.desk.call("GET", f"/v1/transfers?wallet={wallet_id}&limit=500"
                               f"&offset={offset}", None, self.desk.headers("business"))
            r.raise_for_status()
            page = r.json()
            for t in page:
                x = missing.pop(str(t["destination"]).lower(), None)
                if x is not None:
                    x.transfer_id, x.request_id = t["id"], t["signRequestId"]
            if len(page) < 500:
                break
            offset += 500

    def settle(self, items: list[Transfer]) -> None:
        """Resume what the crash interrupted, let the holds pass, then wait for every
        transfer to be final."""
        self.find_unanswered(items)
        for x in items:
            for _ in range(2):
                try:
                    if not x.complete:
                        self.drive(x)
                    break
                except (GaveUp, AssertionError) as exc:
                    self.desk.ledger.note(f"resume transfer: {str(exc)[:80]}")
        if any(x.kind == "large" and x.transfer_id is not None for x in items):
            self.clock.advance(HOLD_SECONDS + 1)  # the day passes: the sweep releases them
        deadline = time.time() + SETTLE_SECONDS
        waiting = [x for x in items if x.transfer_id is not None]
        while waiting and time.time() < deadline:
            now = [(x, self.get(str(x.transfer_id))) for x in waiting]
            waiting = [x for x, t in now if t["state"] not in FINAL]
            again = [x for x, t in now if self.approve_again(x, t)]
            if any(x.kind == "large" for x in again):
                self.clock.advance(HOLD_SECONDS + 1)  # its new request's hold passes too
            time.sleep(0.3 if waiting else 0)

    def approve_again(self, x: Transfer, t: dict[str, Any]) -> bool:
        """A transfer signed again (its Solana transaction expired unlanded) waits on a new
        sign request: its approvers answer that one too, as a desk would. True if so."""
        new = t["signRequestId"]
        if not STEPS[x.kind] or t["state"] != "pending_approval" or new in (None, x.request_id):
            return False
        x.request_id, x.done = str(new), set()
        try:
            self.drive(x)
        except (GaveUp, AssertionError) as exc:
            self.desk.ledger.note(f"approve again: {str(exc)[:80]}")
        return True


def run_transfer_traffic(tdesk: TransferDesk, lane: Lane, stop: threading.Event,
                         seed: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        x = tdesk.new(lane, rng.choice(KINDS))
        try:
            tdesk.drive(x)
        except GaveUp:
            tdesk.desk.ledger.note("transfer gave up (resumed later)")
        except AssertionError as exc:
            tdesk.desk.ledger.note(f"unexpected transfer: {str(exc)[:80]}")
