"""Transfer traffic on a funded Ethereum wallet (anvil), and the invariants that hold it
to the chain.

Three scenarios through ``POST /v1/transfers`` on one wallet with the treasury tiers
(ETH: small <= 0.1 auto-signed, medium <= 10 by 2 of 3 traders): ``small`` (confirmed with
no approval), ``medium`` (two traders approve; confirmed) and ``reject`` (two traders
refuse; rejected, no nonce). Every transfer goes to a fresh destination of its own, so a
destination's balance says how often its transfer arrived. Creates carry an
Idempotency-Key and are retried like the sign-request traffic (:mod:`.traffic`); a
create the client never saw answered is found again the way a careful desk would, by
listing the wallet's transfers (by destination), and then driven to its end.

:func:`chain_hook` checks, after every iteration, from the chain where possible (it is
the one record the broker cannot forge): the wallet's nonce equals the number of
transfers that reached broadcast, the wallet's mined transactions use every nonce from
0 to n-1 exactly once, each is one such transfer's txid (to its destination, for its
amount), no transaction waits in the mempool behind a gap, each destination received its
amount once or not at all; from the broker's tables: no two transfers share a nonce, the
nonce slots agree with the chain (none reserved by a final transfer, none free below the
chain's nonce), one transfer per client intent; from the HSM's audit log: each
transfer's sign requests were executed at most once in all (exactly once if confirmed);
and every transfer is final, in its scenario's state.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from chains.ethereum.client import EthClient
from chains.ethereum.encoding import checksum
from custody.db import SignRequest, make_engine
from custody.localnets import ETH_CHAIN_ID, LocalNets
from custody.treasury.models import NonceSlot, TransferRecord

from .invariants import Observation, signed
from .traffic import Desk, GaveUp

WEI = 10**18
TIERS = {"ETH": {"small": "0.1", "medium": "10", "max": "100"}}
EXPECTED = {"small": "confirmed", "medium": "confirmed", "reject": "rejected"}
STEPS: dict[str, tuple[str, ...]] = {"small": (), "medium": ("approve:t1", "approve:t2"),
                                     "reject": ("reject:t1", "reject:t2")}
KINDS = ["small"] * 3 + ["medium"] * 2 + ["reject"]
FINAL = frozenset({"confirmed", "rejected", "expired", "cancelled", "failed"})
MINED = frozenset({"broadcast", "confirmed"})
FUNDS = 5_000 * WEI
SETTLE_SECONDS = 45.0


@dataclass
class Transfer:
    kind: str
    key: str  #: Idempotency-Key of the create
    destination: str
    wei: int
    transfer_id: str | None = None
    request_id: str | None = None
    acked: bool = False  #: the create was answered 201 (not found again by listing)
    done: set[str] = field(default_factory=set)

    @property
    def amount(self) -> str:
        whole, frac = divmod(self.wei, WEI)
        return f"{whole}.{frac:018d}".rstrip("0").rstrip(".")

    @property
    def complete(self) -> bool:
        return self.transfer_id is not None and self.done >= set(STEPS[self.kind])


class TransferDesk:
    """The desk's transfers on one Ethereum wallet, over the same retrying client."""

    def __init__(self, desk: Desk, nets: LocalNets, seed: int) -> None:
        self.desk = desk
        self.nets = nets
        self.transfers: list[Transfer] = []
        self.lock = threading.Lock()
        self.rng = random.Random(seed)
        self.wallet: dict[str, Any] = {}

    def setup(self) -> None:
        people = self.desk.people
        policy = {"traders": [people[n].entry() for n in ("t1", "t2", "t3")],
                  "compliance": [people["c1"].entry()], "tiers": TIERS, "hold": 2,
                  "mediumTimeout": 3600, "largeTimeout": 3600}
        r = self.desk.call("POST", "/v1/wallets", {
            "name": "eth-killloop", "chain": "ethereum", "network": str(ETH_CHAIN_ID),
            "policy": policy}, self.desk.headers("key_admin") | {"Idempotency-Key": "wallet-1"})
        assert r.status_code == 201, r.text
        self.wallet = r.json()
        self.nets.fund_ether(self.wallet["address"], FUNDS)

    def new(self, kind: str) -> Transfer:
        with self.lock:
            n = len(self.transfers)
            dest = checksum(self.rng.getrandbits(160).to_bytes(20, "big"))
            wei = (self.rng.randint(10**15, 9 * 10**16) if kind == "small"
                   else self.rng.randint(2 * 10**17, 9 * 10**17)) // 10**9 * 10**9
            x = Transfer(kind, f"t-{dest[2:14].lower()}-{n}", dest, wei)
            self.transfers.append(x)
        return x

    def create(self, x: Transfer) -> None:
        hdr = self.desk.headers("business") | {"Idempotency-Key": x.key}
        r = self.desk.call("POST", "/v1/transfers", {
            "wallet": self.wallet["id"], "asset": "ETH", "destination": x.destination,
            "amount": x.amount}, hdr)
        if r.status_code != 201:
            raise AssertionError(f"create {x.kind}: {r.status_code} {r.text[:200]}")
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
        missing = {x.destination.lower(): x for x in items if x.transfer_id is None}
        offset = 0
        while missing:
            r = self.desk.call("GET", f"/v1/transfers?wallet={self.wallet['id']}&limit=500"
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
        """Resume what the crash interrupted, then wait for every transfer to be final."""
        self.find_unanswered(items)
        for x in items:
            for _ in range(2):
                try:
                    if not x.complete:
                        self.drive(x)
                    break
                except (GaveUp, AssertionError) as exc:
                    self.desk.ledger.note(f"resume transfer: {str(exc)[:80]}")
        deadline = time.time() + SETTLE_SECONDS
        waiting = [x for x in items if x.transfer_id is not None]
        while waiting and time.time() < deadline:
            waiting = [x for x in waiting if self.get(str(x.transfer_id))["state"] not in FINAL]
            time.sleep(0.3 if waiting else 0)


def run_transfer_traffic(tdesk: TransferDesk, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        x = tdesk.new(rng.choice(KINDS))
        try:
            tdesk.drive(x)
        except GaveUp:
            tdesk.desk.ledger.note("transfer gave up (resumed later)")
        except AssertionError as exc:
            tdesk.desk.ledger.note(f"unexpected transfer: {str(exc)[:80]}")


@dataclass
class ChainView:
    """The wallet's transactions as mined, read block by block once (anvil does not
    reorganise)."""

    eth: EthClient
    address: str
    scanned: int = -1
    mined: list[dict[str, Any]] = field(default_factory=list)  #: nonce, hash, to, value

    def refresh(self) -> None:
        top = self.eth.block_number()
        me = self.address.lower()
        for n in range(self.scanned + 1, top + 1):
            block = self.eth.w3.eth.get_block(n, full_transactions=True)
            for tx in block["transactions"]:
                if isinstance(tx, bytes) or str(tx["from"]).lower() != me:
                    continue
                self.mined.append({"nonce": int(tx["nonce"]), "hash": "0x" + bytes(
                    tx["hash"]).hex(), "to": str(tx["to"]).lower(), "value": int(tx["value"])})
            self.scanned = n

    def nonce(self, block: str) -> int:
        acct = self.eth.w3.to_checksum_address(self.address)
        return int(self.eth.w3.eth.get_transaction_count(acct, block))  # type: ignore[arg-type]


class ChainChecks:
    """The transfer invariants as a :data:`~.invariants.Hook`; ``stats`` holds the last
    check's counts (transfers, broadcasts, the account nonce)."""

    def __init__(self, tdesk: TransferDesk) -> None:
        assert tdesk.nets.eth is not None
        self.tdesk = tdesk
        self.view = ChainView(tdesk.nets.eth, str(tdesk.wallet["address"]))
        self.stats: dict[str, int] = {}

    def __call__(self, obs: Observation) -> list[str]:
        tdesk, view, eth = self.tdesk, self.view, self.view.eth
        v: list[str] = []
        view.refresh()
        engine = make_engine(obs.db_url)
        try:
            with engine.connect() as c:
                rows = [dict(r._mapping) for r in c.execute(select(
                    TransferRecord.id, TransferRecord.state, TransferRecord.error,
                    TransferRecord.destination, TransferRecord.amount, TransferRecord.nonce,
                    TransferRecord.txid, TransferRecord.sign_request_id).where(
                        TransferRecord.wallet_id == tdesk.wallet["id"]))]
                slots = [dict(r._mapping) for r in c.execute(select(
                    NonceSlot.nonce, NonceSlot.state, NonceSlot.transfer_id).where(
                        NonceSlot.address == view.address.lower()))]
                requests = [(r.id, r.meta_data) for r in c.execute(select(
                    SignRequest.id, SignRequest.meta_data).where(
                        SignRequest.key_label == tdesk.wallet["keyLabel"]))]
        finally:
            engine.dispose()
        by_id = {r["id"]: r for r in rows}
        mined_rows = [r for r in rows if r["state"] in MINED]
        latest, pending = view.nonce("latest"), view.nonce("pending")
        # the chain: nonces 0..n-1 once each, n = transfers broadcast, nothing stuck
        nonces = sorted(tx["nonce"] for tx in view.mined)
        if nonces != list(range(latest)):
            v.append(f"chain: wallet nonces mined {_ranges(nonces)}, account nonce {latest}")
        if pending != latest:
            v.append(f"chain: {pending - latest} transaction(s) wait in the mempool "
                     f"(pending nonce {pending}, mined {latest}): a nonce gap")
        if latest != len(mined_rows):
            v.append(f"chain: account nonce {latest}, but {len(mined_rows)} transfers "
                     "reached broadcast")
        hashes = Counter(tx["hash"] for tx in view.mined)
        by_hash = {tx["hash"]: tx for tx in view.mined}
        txids = Counter(str(r["txid"]).lower() for r in mined_rows)
        for r in mined_rows:
            txid = str(r["txid"]).lower()
            if hashes[txid] != 1 or txids[txid] != 1:
                v.append(f"transfer {r['id']}: txid {txid[:14]} mined {hashes[txid]} times, "
                         f"recorded by {txids[txid]} transfers")
                continue
            tx = by_hash[txid]
            if (tx["to"], tx["value"], tx["nonce"]) != (
                    str(r["destination"]).lower(), int(r["amount"]), r["nonce"]):
                v.append(f"transfer {r['id']}: mined as {tx}, recorded as nonce {r['nonce']} "
                         f"{r['amount']} to {r['destination']}")
        v += [f"chain: transaction {h[:14]} (nonce {by_hash[h]['nonce']}) from the wallet is no "
              "broadcast transfer's" for h in hashes if h not in txids]
        # the broker's nonce table
        shared = Counter(r["nonce"] for r in mined_rows)
        v += [f"nonce {n} used by {k} transfers" for n, k in shared.items() if k > 1]
        slot_of = {s["transfer_id"]: s for s in slots if s["state"] == "broadcast"}
        for r in mined_rows:
            s = slot_of.get(r["id"])
            if s is None or s["nonce"] != r["nonce"]:
                v.append(f"transfer {r['id']}: nonce {r['nonce']}, slot {s}")
        for s in slots:
            owner = by_id.get(s["transfer_id"]) if s["transfer_id"] else None
            if s["state"] == "reserved" and (owner is None or owner["state"] in FINAL):
                v.append(f"nonce slot {s['nonce']} reserved by a {owner and owner['state']} "
                         "transfer: the next transfer skips it")
            if s["state"] == "free" and s["nonce"] < latest:
                v.append(f"nonce slot {s['nonce']} free but the chain used it")
        v += [f"{sum(1 for s in slots if s['state'] == 'broadcast')} broadcast nonce slots, "
              f"account nonce {latest}"] if sum(
                  1 for s in slots if s["state"] == "broadcast") != latest else []
        # the HSM: each transfer's sign requests executed at most once in all
        executed, _ = signed(obs)
        per_transfer: Counter[str] = Counter()
        for rid, meta in requests:
            tid = meta.get("transferId") if isinstance(meta, dict) else None
            if isinstance(tid, str):
                per_transfer[tid] += executed[rid]
        for r in rows:
            n = per_transfer[r["id"]]
            if n > 1 or (r["state"] in MINED and n != 1):
                v.append(f"transfer {r['id']} ({r['state']}): the HSM signed for it {n} times")
        # the client's intents: one transfer each, final in its scenario's state, paid once
        per_dest = Counter(str(r["destination"]).lower() for r in rows)
        by_dest = {str(r["destination"]).lower(): r for r in rows}
        with tdesk.lock:
            items = list(tdesk.transfers)
        for x in items:
            dest = x.destination.lower()
            if per_dest[dest] > 1:
                v.append(f"{x.kind} to {dest[:12]}: {per_dest[dest]} transfers for one intent")
            row = by_id.get(x.transfer_id) if x.transfer_id else by_dest.get(dest)
            if x.acked and row is None:
                v.append(f"{x.kind} {x.transfer_id}: acknowledged but not in the database")
            if row is not None and row["state"] != EXPECTED[x.kind]:
                v.append(f"{x.kind} {x.transfer_id}: {row['state']} ({row['error']}), "
                         f"expected {EXPECTED[x.kind]}")
            paid = int(row["amount"]) if row is not None and row["state"] in MINED else 0
            got = eth.balance(x.destination)
            if got != paid:
                v.append(f"{x.kind} {x.transfer_id}: destination holds {got} wei, "
                         f"expected {paid}")
        v += [f"transfer {r['id']} stuck in {r['state']}" for r in rows
              if r["state"] not in FINAL]
        self.stats = {"transfers": len(rows), "broadcasts": len(mined_rows), "nonce": latest,
                      "unacknowledged": sum(1 for x in items if not x.acked)}
        return v


def _ranges(nums: list[int]) -> str:
    if len(nums) <= 8:
        return str(nums)
    return f"[{nums[0]}..{nums[-1]}] ({len(nums)}, {len(set(nums))} distinct)"
