"""The invariants a crash or a fault must not break, checked from sources the broker
cannot forge where possible (the HSM's hash-chained audit log) and from its database.

* the audit log verifies (chain and signed heads, :func:`hsm_emulator.audit.verify_log`);
* nothing signed twice: at most one successful ``request.execute`` / ``sign.now`` per
  request id, and per payload (each scenario's payload is unique, so a payload signed
  under two request ids is one client intent performed twice);
* nothing acknowledged lost: every acknowledged create is a row, every acknowledged
  approval / rejection is in the approvals table;
* every request final, in the state its scenario leads to (never FAILED by an outage);
* idempotency: a create retried with its key answers the first request id.

Further invariants plug in as :data:`Hook` functions over the same
:class:`Observation` - e.g. for the transfers layer, "no transaction broadcast twice,
no nonce reused or skipped" from its broadcast and nonce tables.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from custody.db import ApprovalRecord, SignRequest, make_engine
from hsm_emulator.audit import AuditEntry, verify_log

from .cluster import Cluster
from .traffic import EXPECTED, Ledger

SIGNING_OPS = frozenset({"request.execute", "sign.now"})


@dataclass
class Observation:
    """Everything the checks read, gathered once after an iteration."""

    ledger: Ledger
    audit: list[AuditEntry]
    audit_problems: tuple[str, ...]
    rows: dict[str, dict[str, Any]]  #: sign_requests by id
    answers: set[tuple[str, str, bool]]  #: approvals table: (request id, spki, rejected)
    replays: dict[str, tuple[str, str]] = field(default_factory=dict)  #: key: (first, again)
    db_url: str = ""


Hook = Callable[[Observation], list[str]]


def observe(cluster: Cluster, ledger: Ledger) -> Observation:
    hsm = cluster.hsm_client()
    try:
        entries: list[AuditEntry] = []
        while True:
            page = hsm.audit_entries(len(entries) + 1, 1000)
            entries += page
            if len(page) < 1000:
                break
        heads = [hsm.audit_head(), *hsm.audit_checkpoints()]
        report = verify_log(entries, heads, hsm.identity_public_key())
    finally:
        hsm.close()
    engine = make_engine(cluster.db_url)
    try:
        with engine.connect() as c:
            rows = {r.id: dict(r._mapping) for r in c.execute(select(
                SignRequest.id, SignRequest.status, SignRequest.error, SignRequest.payload_b64))}
            answers = {(r.request_id, r.approver_key_b64, bool(r.rejected)) for r in c.execute(
                select(ApprovalRecord.request_id, ApprovalRecord.approver_key_b64,
                       ApprovalRecord.rejected))}
    finally:
        engine.dispose()
    return Observation(ledger, entries, report.problems, rows, answers, db_url=cluster.db_url)


def signed(obs: Observation) -> tuple[Counter[str], Counter[str]]:
    """Successful signing entries per request id and per payload digest."""
    by_id: Counter[str] = Counter()
    by_payload: Counter[str] = Counter()
    for e in obs.audit:
        ev = e.event
        if ev.get("op") in SIGNING_OPS and ev.get("result") == "ok":
            by_id[str(ev.get("requestId"))] += 1
            by_payload[str(ev.get("payloadDigest"))] += 1
    return by_id, by_payload


def check(obs: Observation, hooks: Sequence[Hook] = ()) -> list[str]:
    v = [f"audit: {p}" for p in obs.audit_problems]
    by_id, by_payload = signed(obs)
    v += [f"request {rid} signed {n} times" for rid, n in by_id.items() if n > 1]
    v += [f"payload {d[:12]} signed {n} times" for d, n in by_payload.items() if n > 1]
    for s in obs.ledger.scenarios:
        if s.request_id is None:
            continue  # never acknowledged: nothing was promised
        row = obs.rows.get(s.request_id)
        if row is None:
            v.append(f"{s.kind} {s.request_id}: acknowledged but not in the database")
            continue
        if row["status"] != EXPECTED[s.kind]:
            v.append(f"{s.kind} {s.request_id}: {row['status']} ({row['error']}), "
                     f"expected {EXPECTED[s.kind]}")
        if row["status"] == "EXECUTED" and by_id[s.request_id] != 1:
            v.append(f"{s.kind} {s.request_id}: EXECUTED but {by_id[s.request_id]} "
                     "signing entries in the audit log")
    v += [f"acknowledged answer lost: {rid} by {spki[-12:]} (rejected={rej})"
          for rid, spki, rej in obs.ledger.acked_answers if (rid, spki, rej) not in obs.answers]
    v += [f"idempotency key {k}: first {a}, retried {b}"
          for k, (a, b) in obs.replays.items() if a != b]
    for hook in hooks:
        v += hook(obs)
    return v


def orphans(obs: Observation) -> int:
    """Signatures the HSM made that no broker row records: the API died between the
    HSM's answer and its commit. Never acknowledged, so nothing promised was lost;
    counted and reported, not a violation (the payload is never signed again)."""
    by_id, _ = signed(obs)
    return sum(1 for rid in by_id if rid not in obs.rows)

