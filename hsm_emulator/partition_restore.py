"""Restoring a backup (:mod:`.backup`) into an empty HSM, and the rule that follows.

The restored HSM knows nothing of what happened after the backup was taken. So a restore

* goes only into a fresh or wiped HSM (no keys, no requests, no ledger): it never merges;
* replaces the whole state - records (the identity key too, so attestations and
  challenges verify under the same public key), the velocity ledger, the audit log - and
  appends one audit entry naming the HSM it replaced and that HSM's audit head;
* starts a new **epoch** of the counter (:meth:`~.store.Store.start_epoch`): officer
  requests of an earlier epoch are refused;
* voids every request that was open in the backup (cancelled: re-approval needed), so no
  approval given before the restore releases anything after it; a request executed after
  the backup is unknown here, and asked again it gets a new challenge that the old
  approvals do not verify over;
* freezes the auto tier (a release by a token without approver groups) for the
  partition's ``restoreFreezeSeconds`` if its officers set one, else for 24 h or the
  longest velocity window of any key's policy, whichever is longer - the ledger undercounts
  what was signed after the backup - unless officers lift it (``lift_freeze``).
"""

from __future__ import annotations

from typing import Any

from .backup import open_backup
from .boundary import Boundary
from .errors import RestoreRefused

#: The auto tier's freeze after a restore, unless the partition or a policy says longer.
DEFAULT_FREEZE = 24 * 3600
VOID = "void: it was open when the backup was taken and the HSM was restored since; ask again"


def restore_partition(b: Boundary, backup: bytes, shares: list[str]) -> dict[str, Any]:
    """Replace this empty HSM's state with the backup's (in the caller's transaction);
    the summary the audit entry and the caller get."""
    _, content = open_backup(backup, shares)
    _check_empty(b)
    store = b.store
    seq, head = _audit_head(b)
    replaced = {"replacedHsmId": b.hsm_id, "replacedAuditSeq": seq, "replacedAuditHash": head}
    for kind in _kinds(b):
        for ident in store.ids(kind):
            store.delete(kind, ident)
    store.execute("DELETE FROM audit")
    store.execute("DELETE FROM audit_heads")
    voided = 0
    for rec in content["records"]:
        body = rec["body"]
        if rec["kind"] in ("request", "officer-request") and body.get("status") == "open":
            body = {**body, "status": "cancelled", "reason": VOID}
            voided += 1
        store.put(rec["kind"], rec["id"], body)
    store.insert_rows("spends", [tuple(r) for r in content["spends"]])
    store.insert_rows("audit", [tuple(r) for r in content["audit"]])
    store.executemany("INSERT INTO audit_heads VALUES (?, ?)",
                      [tuple(r) for r in content["auditHeads"]])
    epoch = max(int(content["counter"]["epoch"]), store.counter_value.epoch) + 1
    store.start_epoch(epoch)
    partition = store.get("partition", "config")
    if partition is None:
        raise RestoreRefused("the backup holds no partition record")
    b.rebind(partition)
    now = b.clock.now()
    freeze = partition.get("restoreFreezeSeconds")
    if freeze is None:
        freeze = max(DEFAULT_FREEZE, _longest_window(b))
    b.save_partition({**partition, "autoFrozenUntil": now + freeze, "restoredAt": now})
    return {**replaced, "hsmId": b.hsm_id, "epoch": epoch, "voided": voided,
            "keys": len(store.ids("key")), "autoFrozenUntil": now + freeze,
            "backupCounter": content["counter"]}


def _kinds(b: Boundary) -> list[str]:
    return [str(r[0]) for r in b.store.execute("SELECT DISTINCT kind FROM records")]


def _check_empty(b: Boundary) -> None:
    keys, requests = len(b.store.ids("key")), len(b.store.ids("request"))
    spends = int(b.store.execute("SELECT COUNT(*) FROM spends")[0][0])
    if keys or requests or spends:
        raise RestoreRefused(f"this HSM is not empty ({keys} keys, {requests} requests, "
                             f"{spends} ledger rows): a restore goes into a fresh or wiped "
                             "HSM only, never over live state")


def _audit_head(b: Boundary) -> tuple[int, str]:
    row = b.store.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
    return (int(row[0][0]), str(row[0][1])) if row else (0, "")


def _longest_window(b: Boundary) -> int:
    """The longest velocity window of any key's policy (derived keys share theirs)."""
    longest = 0
    for label in b.keys.labels():
        policy = b.keys.state(label).policy
        for _, rule in policy.rules:
            for token in rule.tokens:
                for v in token.conditions.velocity:
                    longest = max(longest, v.window_seconds)
    return longest
