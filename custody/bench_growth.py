"""``custody bench growth``: signing rate as the HSM's state grows, against empty state.

Four kinds of state, each at every size given (the allowlist up to ``max_allowlist``),
each measured on a fresh store next to its own empty-state baseline in the same run:

* ``velocity``: the key's velocity ledger holds N spends, all inside the window its
  policy counts (the worst case: every row is in the window);
* ``allowlist``: the policy's ``destinations`` holds N addresses (parse cost at
  ``create_key``, evaluation cost per signature), up to the 1,024 an inline list holds:
  larger sizes are listed in the headline as not measured inline (``address_list``
  measures them);
* ``address_list``: the policy's ``destinations`` names an address list of N addresses
  uploaded to the HSM in chunks (:mod:`hsm_emulator.address_lists`; sizes up to its
  1,000,000): the upload, the list's load on the first signature after a restart, and
  evaluation cost per signature (one set lookup);
* ``approvers``: a token ahead of the auto tier has groups (of 50: a group holds at most
  64) with ``approvers`` approvers in all, evaluated and not met on every signature;
* ``audit``: the audit log holds N entries; also the store's open (start-up) time and
  the time to read and verify the whole chain (``verify_log``) per N entries.

The ledger and audit rows are written straight into the closed store, as the HSM would
have written them (running totals, hash chain), because signing 10^6 times first would
take minutes; the HSM is then reopened and signs through its ordinary path. Records:
one JSON line per (kind, size), then the headline: the worst ratio to empty state
(target 0.8).
"""

from __future__ import annotations

import base64
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hsm_emulator import Hsm, Passphrase
from hsm_emulator.address_lists import MAX_ADDRESSES, MAX_CHUNK
from hsm_emulator.audit import AuditEntry, entry_hash, event_text, verify_log
from hsm_emulator.decoders import test_registry, transfer_payload
from hsm_emulator.policy import MAX_LIST
from hsm_emulator.store import Store

_PASS = Passphrase("bench-passphrase", scrypt_n=2**10)
_SO = "bench-so-passphrase"
_DEST = "dest"
_FEE = {"asset": "TST", "max": 10}
KINDS = ("velocity", "allowlist", "address_list", "approvers", "audit")


def _auto(conditions: dict[str, Any]) -> dict[str, Any]:
    return {"name": "auto", "timelock": 0, "timeout": 0, "groups": [],
            "conditions": {"amounts": [{"asset": "TST", "max": 10**18}], "maxFee": [_FEE],
                           **conditions}}


def _approver_entries(n: int) -> list[dict[str, str]]:
    """``n`` P-256 approver entries (public keys only: nobody approves)."""
    out = []
    for i in range(n):
        der = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        out.append({"type": "public_key", "value": base64.b64encode(der).decode(),
                    "name": f"approver-{i}"})
    return out


def list_addresses(n: int) -> list[str]:
    """``n`` distinct list entries, the bench's destination among them (Ethereum-length)."""
    return [f"0x{i:040x}" for i in range(max(n - 1, 0))] + [_DEST]


def upload_list(hsm: Hsm, addresses: list[str]) -> str:
    """Upload ``addresses`` in chunks of the most a chunk holds; the list's digest."""
    upload = hsm.address_list_begin().upload_id
    for i in range(0, len(addresses), MAX_CHUNK):
        hsm.address_list_add(upload, i // MAX_CHUNK, addresses[i:i + MAX_CHUNK])
    digest = hsm.address_list_finish(upload).digest
    assert digest is not None
    return digest


def policy_for(kind: str, n: int, digest: str | None = None) -> dict[str, Any]:
    """The bench key's policy for ``kind`` at size ``n`` (0: the empty-state baseline;
    ``address_list``: the uploaded list's ``digest``)."""
    if kind == "address_list" and digest is not None:
        return {"ruleUse": {"tokens": [_auto({"destinations": {"list": digest}})]}}
    if kind == "allowlist":
        dests = [f"addr-{i:07d}" for i in range(max(n - 1, 0))] + [_DEST]
        return {"ruleUse": {"tokens": [_auto({"destinations": dests})]}}
    if kind == "approvers":
        members = _approver_entries(max(n, 1))  # groups of 50: a group holds at most 64
        held = {"name": "large", "timelock": 0, "timeout": 0, "groups": [
            {"name": f"board-{i}", "quorum": len(members[i:i + 50]),
             "approvals": members[i:i + 50]} for i in range(0, len(members), 50)]}
        return {"ruleUse": {"tokens": [held, _auto({})]}}
    velocity = [{"asset": "TST", "windowSeconds": 10**8, "max": 10**30}]
    return {"ruleUse": {"tokens": [_auto({"velocity": velocity} if kind == "velocity" else {})]}}


#: Rows per fill transaction (each commit advances the anti-rollback counter once).
_FILL_CHUNK = 50_000


def _fill_velocity(store: Store, n: int) -> None:
    """Append ``n`` spends of 1 after the key's one real spend, with their running
    totals, through the store (so the anti-rollback seal binds them like any spend)."""
    family, token, at, cum_all, cum_token = store.execute(
        "SELECT family, token, at, cum_all, cum_token FROM spends "
        "ORDER BY at DESC, rowid DESC LIMIT 1")[0]
    rows = [(family, "TST", "1", float(at) + (i + 1) * 1e-6, token,
             str(int(cum_all) + i + 1), str(int(cum_token) + i + 1)) for i in range(n)]
    _insert(store, "spends", rows)


def _fill_audit(store: Store, n: int) -> None:
    """Append ``n`` hash-chained entries after the log's head, through the store."""
    seq, head = store.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")[0]
    at = time.time() - 3600
    rows: list[tuple[Any, ...]] = []
    for i in range(seq + 1, seq + n + 1):
        text = event_text({"op": "bench_fill", "i": i})
        digest = entry_hash(head, i, at, text.encode())
        rows.append((i, at, text, head, digest))
        head = digest
    _insert(store, "audit", rows)


def _insert(store: Store, table: str, rows: list[tuple[Any, ...]]) -> None:
    for start in range(0, len(rows), _FILL_CHUNK):
        with store.transaction():
            store.insert_rows(table, rows[start:start + _FILL_CHUNK])


def _rate(hsm: Hsm, iterations: int, batch: int, nonce: int) -> float:
    payloads = [transfer_payload("TST", 1000 + i, _DEST, 1, nonce=nonce + i)
                for i in range(iterations)]
    start = time.perf_counter()
    for i in range(0, iterations, batch):
        hsm.sign_batch("bench", payloads[i:i + batch], "TEST_TRANSFER")
    return iterations / (time.perf_counter() - start)


def measure(kind: str, n: int, iterations: int, batch: int, rounds: int = 2,
            ) -> dict[str, Any]:
    """One fresh store with ``kind`` state of size ``n``: its timings and signing rate."""
    with tempfile.TemporaryDirectory(prefix="ska-growth-") as tmp:
        path = Path(tmp) / "hsm.sqlite"
        hsm = Hsm.open(path, _PASS, so_passphrase=_SO, decoders=test_registry())
        rec: dict[str, Any] = {}
        digest = None
        if kind == "address_list" and n:
            start = time.perf_counter()
            digest = upload_list(hsm, list_addresses(n))
            rec["upload_s"] = round(time.perf_counter() - start, 3)
        policy = policy_for(kind, n, digest)
        start = time.perf_counter()
        hsm.create_key("bench", "SECP256K1", policy=policy)
        rec["create_key_s"] = round(time.perf_counter() - start, 4)
        hsm.sign_now("bench", transfer_payload("TST", 1, _DEST, 1, nonce=10**9), "TEST_TRANSFER")
        fill: Callable[[Store, int], None] | None = {
            "velocity": _fill_velocity, "audit": _fill_audit}.get(kind)
        if fill is not None:
            start = time.perf_counter()
            fill(hsm.boundary.store, n)
            rec["fill_s"] = round(time.perf_counter() - start, 3)
        hsm.close()
        start = time.perf_counter()
        hsm = Hsm.open(path, _PASS, decoders=test_registry())
        rec["open_s"] = round(time.perf_counter() - start, 4)
        start = time.perf_counter()  # the first signature reads the key (and its list)
        hsm.sign_now("bench", transfer_payload("TST", 2, _DEST, 1, nonce=10**9 + 1),
                     "TEST_TRANSFER")
        rec["first_sign_s"] = round(time.perf_counter() - start, 4)
        rec["signs_per_s"] = max(_rate(hsm, iterations, batch, r * iterations)
                                 for r in range(rounds))
        if kind == "audit":
            rec.update(_verify(hsm))
        hsm.close()
    return rec


def _verify(hsm: Hsm) -> dict[str, Any]:
    """Read the whole log in pages and verify its chain against the current signed head."""
    start = time.perf_counter()
    entries: list[AuditEntry] = []
    page = 10_000
    while True:
        got = hsm.audit_entries(len(entries) + 1, page)
        entries += got
        if len(got) < page:
            break
    read = time.perf_counter() - start
    start = time.perf_counter()
    report = verify_log(entries, [hsm.audit_head()], hsm.identity_public_key())
    verify = time.perf_counter() - start
    if not report.ok:
        raise RuntimeError(f"the filled audit log does not verify: {report.problems}")
    return {"audit_entries": len(entries), "audit_read_s": round(read, 3),
            "audit_verify_s": round(verify, 3),
            "audit_verify_s_per_million": round(verify / len(entries) * 10**6, 3)}


def sizes_for(kind: str, sizes: Sequence[int], approvers: int) -> list[int]:
    """The sizes ``kind`` is measured at: approvers at ``approvers`` only; an allowlist
    up to what a policy holds (:data:`~hsm_emulator.policy.MAX_LIST`, so a larger one
    is reported as not measurable rather than silently skipped)."""
    if kind == "approvers":
        return [approvers]
    if kind == "allowlist":
        return sorted({min(n, MAX_LIST) for n in sizes})
    if kind == "address_list":
        return sorted({min(n, MAX_ADDRESSES) for n in sizes})
    return list(sizes)


def bench_growth(sizes: Sequence[int] = (1000, 10_000, 100_000, 1_000_000),
                 iterations: int = 2000, batch: int = 100, rounds: int = 2,
                 approvers: int = 100, kinds: Sequence[str] = KINDS,
                 ) -> Iterator[dict[str, Any]]:
    """Yield one record per (kind, size), then the headline."""
    worst: dict[str, float] = {}
    measure("velocity", 0, iterations, batch, 1)  # warm up: imports, caches, the page cache
    for kind in kinds:
        base = measure(kind, 0, iterations, batch, rounds)
        yield {"bench": "growth", "kind": kind, "size": 0, **_rounded(base), "ratio": 1.0}
        for n in sizes_for(kind, sizes, approvers):
            rec = measure(kind, n, iterations, batch, rounds)
            # the empty state again, right after: on a shared machine the rate drifts, so
            # each size is compared with the best empty-state rate so far (conservative)
            again = measure(kind, 0, iterations, batch, rounds)["signs_per_s"]
            base["signs_per_s"] = max(base["signs_per_s"], again)
            ratio = round(rec["signs_per_s"] / base["signs_per_s"], 3)
            worst[kind] = min(worst.get(kind, ratio), ratio)
            yield {"bench": "growth", "kind": kind, "size": n, **_rounded(rec),
                   "empty_signs_per_s": round(base["signs_per_s"]), "ratio": ratio}
    yield {"bench": "growth", "headline": True, "sizes": list(sizes),
           "iterations": iterations, "batch": batch,
           "worst_ratio": min(worst.values(), default=1.0),
           **{f"worst_ratio_{k}": v for k, v in worst.items()}, "target_ratio": 0.8,
           "allowlist_max_entries": MAX_LIST, "address_list_max_entries": MAX_ADDRESSES,
           "allowlist_not_measured": sorted(n for n in sizes if n > MAX_LIST)}


def _rounded(rec: dict[str, Any]) -> dict[str, Any]:
    return {**rec, "signs_per_s": round(rec["signs_per_s"])}
