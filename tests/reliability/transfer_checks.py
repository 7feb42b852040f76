"""The transfer invariants of every chain, as one :data:`~.invariants.Hook`.

From three records that must agree - the client's acknowledged intents, the broker's
tables and the HSM's hash-chained audit log - and the chain, through the per-chain
checks (:mod:`.chain_eth`, :mod:`.chain_btc`, :mod:`.chain_sol`):

* one stored transfer per intent; every acknowledged create stored; every transfer final,
  in its scenario's state; each destination holds its amount once, or nothing;
* each transfer signed at most once per attempt by the HSM (exactly once per attempt if it
  reached broadcast). A Solana transfer whose signed transaction expired unlanded is
  signed again under a new request: one more attempt, recorded on the transfer
  (:func:`resigns`, counted per lane as ``blockhash_expired``); a signature beyond the
  recorded attempts, or a signed attempt that neither landed nor was re-signed, is a
  violation (:mod:`.chain_sol` checks that no earlier attempt landed);
* nothing signed outside the policy: every signature the HSM made with a wallet's key is
  one transfer's, under the token its amount calls for (small: no approver; medium: two
  traders; large: two traders and compliance, and at least the hold after the request
  began, by the HSM's own clock); a rejected transfer was never signed.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import select

from custody.db import SignRequest, make_engine
from custody.treasury.models import RESIGNS, NonceSlot, TransferRecord

from .invariants import SIGNING_OPS, Observation
from .lanes import HOLD_SECONDS, Lane, balance_reader
from .transfers import EXPECTED, FINAL, MINED, Transfer, TransferDesk

_COLUMNS = (TransferRecord.id, TransferRecord.wallet_id, TransferRecord.symbol,
            TransferRecord.state, TransferRecord.error, TransferRecord.destination,
            TransferRecord.amount, TransferRecord.nonce, TransferRecord.inputs,
            TransferRecord.raw_b64, TransferRecord.txid, TransferRecord.sign_request_id,
            TransferRecord.details)


@dataclass
class Snapshot:
    """The broker's transfer tables and the HSM's signatures, read once per check."""

    rows: list[dict[str, Any]]  #: every transfer of the loop's wallets
    slots: list[dict[str, Any]]  #: Ethereum nonce slots
    requests: dict[str, dict[str, Any]]  #: sign requests of the wallets' keys, by id
    signings: list[dict[str, Any]] = field(default_factory=list)  #: ok audit entries
    executed: Counter[str] = field(default_factory=Counter)  #: signatures per transfer id

    def of(self, wallet_id: str) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["wallet_id"] == wallet_id]


class ChainCheck(Protocol):
    def __call__(self, snap: Snapshot, items: list[Transfer]) -> list[str]: ...


def load(obs: Observation, tdesk: TransferDesk) -> Snapshot:
    wallets = {f.wallet["id"]: f.wallet for f in tdesk.wallets.values()}
    labels = {w["keyLabel"] for w in wallets.values()}
    engine = make_engine(obs.db_url)
    try:
        with engine.connect() as c:
            rows = [dict(r._mapping) for r in c.execute(select(*_COLUMNS).where(
                TransferRecord.wallet_id.in_(list(wallets))))]
            slots = [dict(r._mapping) for r in c.execute(select(
                NonceSlot.address, NonceSlot.nonce, NonceSlot.state, NonceSlot.transfer_id))]
            requests = {r.id: dict(r._mapping) for r in c.execute(select(
                SignRequest.id, SignRequest.key_label, SignRequest.meta_data,
                SignRequest.hsm_time).where(SignRequest.key_label.in_(list(labels))))}
    finally:
        engine.dispose()
    snap = Snapshot(rows, slots, requests)
    for e in obs.audit:
        ev = e.event
        if ev.get("op") in SIGNING_OPS and ev.get("result") == "ok" and ev.get(
                "label") in labels:
            tid = _transfer_of(str(ev.get("requestId")), requests)
            snap.signings.append({"at": e.at, "transfer": tid, **ev})
            if tid is not None:
                snap.executed[tid] += 1
    return snap


def _transfer_of(request_id: str, requests: dict[str, dict[str, Any]]) -> str | None:
    """The transfer a sign request is for: its broker row says, or the HSM request id the
    broker chose (``transfer-<id>``) does when the row was never written."""
    meta = (requests.get(request_id) or {}).get("meta_data")
    tid = meta.get("transferId") if isinstance(meta, dict) else None
    if isinstance(tid, str):
        return tid
    if not request_id.startswith("transfer-"):
        return None
    return re.sub(r"-r\d+$", "", request_id.removeprefix("transfer-"))  # a later attempt


class TransferChecks:
    """Every transfer invariant; ``stats`` holds the last check's counts per lane."""

    def __init__(self, tdesk: TransferDesk, chains: dict[str, ChainCheck]) -> None:
        self.tdesk = tdesk
        self.chains = chains
        self.stats: dict[str, dict[str, int]] = {}
        people = tdesk.desk.people
        self.traders = {_fingerprint(people[n].spki_b64) for n in ("t1", "t2", "t3")}
        self.compliance = {_fingerprint(people["c1"].spki_b64)}
        token = {c: f.token for c, f in tdesk.wallets.items()}
        self.readers = {lane.name: balance_reader(tdesk.nets, lane, token.get(lane.chain, ""))
                        for lane in tdesk.lanes}

    def __call__(self, obs: Observation) -> list[str]:
        snap = load(obs, self.tdesk)
        with self.tdesk.lock:
            items = list(self.tdesk.transfers)
        v = self.intents(snap, items) + self.policy(snap, items)
        for chain, check in self.chains.items():
            v += check(snap, [x for x in items if x.lane.chain == chain])
        self.stats = {lane.name: _lane_stats(snap, self.tdesk, lane, items)
                      for lane in self.tdesk.lanes}
        return v

    def intents(self, snap: Snapshot, items: list[Transfer]) -> list[str]:
        """One transfer per intent, stored if acknowledged, final as its scenario says,
        paid once; signed at most once (exactly once if it reached broadcast)."""
        v: list[str] = []
        by_id = {r["id"]: r for r in snap.rows}
        by_dest = {str(r["destination"]).lower(): r for r in snap.rows}
        per_dest = Counter(str(r["destination"]).lower() for r in snap.rows)
        for x in items:
            dest, name = x.destination.lower(), f"{x.lane.name} {x.kind} {x.transfer_id}"
            if per_dest[dest] > 1:
                v.append(f"{name}: {per_dest[dest]} transfers for one intent")
            row = by_id.get(x.transfer_id) if x.transfer_id else by_dest.get(dest)
            if x.acked and row is None:
                v.append(f"{name}: acknowledged but not in the database")
            if row is not None and row["state"] != EXPECTED[x.kind]:
                v.append(f"{name}: {row['state']} ({row['error']}), expected "
                         f"{EXPECTED[x.kind]}")
            read = self.readers.get(x.lane.name)
            if read is not None:
                paid = int(row["amount"]) if row is not None and row["state"] in MINED else 0
                got = read(x.destination)
                if got != paid:
                    v.append(f"{name}: destination holds {got}, expected {paid}")
        for r in snap.rows:
            n, attempts = snap.executed[r["id"]], 1 + len(resigns(r))
            if n > attempts or (r["state"] in MINED and n != attempts):
                v.append(f"transfer {r['id']} ({r['state']}): the HSM signed for it {n} times "
                         f"in {attempts} attempts")
            elif r["state"] in FINAL and r["state"] not in MINED and n == attempts:
                v.append(f"transfer {r['id']} ({r['state']}, {r['error']}): its signed "
                         f"attempt {attempts} neither landed nor was signed again")
            if r["state"] not in FINAL:
                v.append(f"transfer {r['id']} stuck in {r['state']}")
        return v

    def policy(self, snap: Snapshot, items: list[Transfer]) -> list[str]:
        """Each signature by a wallet key: one transfer's, under its amount's token, with
        that token's approvers and hold."""
        v: list[str] = []
        by_id = {r["id"]: r for r in snap.rows}
        lanes = {(self.tdesk.wallets[x.lane.chain].wallet["id"], x.lane.symbol): x.lane
                 for x in items}
        for s in snap.signings:
            row = by_id.get(s["transfer"]) if s["transfer"] else None
            if row is None:
                v.append(f"policy: {s['op']} {s.get('requestId')} by {s['label']} signed "
                         "no transfer of the loop")
                continue
            lane = lanes.get((row["wallet_id"], row["symbol"]))
            if lane is None:
                continue  # an asset no lane sends: not this loop's transfer
            v += self._one(s, row, lane, snap)
        return v

    def _one(self, s: dict[str, Any], row: dict[str, Any], lane: Lane,
             snap: Snapshot) -> list[str]:
        name = f"policy: transfer {row['id']} ({lane.name}, {row['state']})"
        want = lane.tier_of(int(row["amount"]))
        if s.get("token") != want:
            return [f"{name}: signed under {s.get('token')}, its amount needs {want}"]
        if row["state"] in ("rejected", "expired", "cancelled"):
            return [f"{name}: signed, yet ended {row['state']}"]
        approvers = set(s.get("approvers") or [])
        traders, compliance = len(approvers & self.traders), len(approvers & self.compliance)
        v = []
        if want.startswith("medium") and traders < 2:
            v.append(f"{name}: medium signed with {traders} traders")
        if want.startswith("large"):
            if traders < 2 or compliance < 1:
                v.append(f"{name}: large signed with {traders} traders, {compliance} "
                         "compliance")
            began = (snap.requests.get(str(s.get("requestId"))) or {}).get("hsm_time")
            if began is None or s["at"] - float(began) < HOLD_SECONDS:
                v.append(f"{name}: large signed {s['at'] - float(began or 0):.0f} s after "
                         f"it began, before the {HOLD_SECONDS} s hold")
        return v


def resigns(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The transfer's earlier attempts whose signed transaction expired unlanded (Solana:
    its blockhash went before it landed), each re-signed under a new request."""
    details = row.get("details")
    earlier = details.get(RESIGNS) if isinstance(details, dict) else None
    return [a for a in earlier if isinstance(a, dict)] if isinstance(earlier, list) else []


def _fingerprint(spki_b64: str) -> str:
    return hashlib.sha256(base64.b64decode(spki_b64)).hexdigest()


def _lane_stats(snap: Snapshot, tdesk: TransferDesk, lane: Lane,
                items: list[Transfer]) -> dict[str, int]:
    wallet_id = tdesk.wallets[lane.chain].wallet["id"]
    rows = [r for r in snap.of(wallet_id) if r["symbol"] == lane.symbol]
    mine = [x for x in items if x.lane is lane]
    return {"transfers": len(rows), "broadcasts": sum(1 for r in rows if r["state"] in MINED),
            "large": sum(1 for x in mine if x.kind == "large" and x.transfer_id),
            "unacknowledged": sum(1 for x in mine if not x.acked),
            "signatures": sum(snap.executed[r["id"]] for r in rows),
            "blockhash_expired": sum(len(resigns(r)) for r in rows)}  # each re-signed
