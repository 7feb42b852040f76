"""What every part of the HSM shares: its store, clock, identity and decoders, and the
rule that binds them - every operation runs under the store's lock and in one store
transaction with its audit entry, so a state change without its audit entry (or the
reverse) cannot happen; a refusal is audited too.

The HSM's parts (:mod:`.keyring`, :mod:`.flow`, :mod:`.autotier`, :mod:`.auditing`) each
hold the one :class:`Boundary` of their HSM; :class:`hsm_emulator.Hsm` composes them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .audit import AuditLog
from .clock import Clock, SystemClock
from .decoders import DecoderRegistry, default_registry
from .errors import AuthenticationFailed, HsmError, InvalidInput, PolicyNotMet
from .identity import IdentityKey
from .ledger import VelocityLedger
from .list_store import AddressListStore
from .model import Action
from .officers import OfficerSet, demo_officers, officer_policy
from .policy import Policy, Rule
from .records import KeyRecords, RequestRecords
from .store import Nvram, Store, Unlock

T = TypeVar("T")


class Boundary:
    """One HSM's shared state and its transaction-and-audit rule (:meth:`audited`)."""

    def __init__(self, store: Store, clock: Clock, registry: DecoderRegistry,
                 partition: dict[str, Any]) -> None:
        self.store = store
        self.clock = clock
        #: The chains' decoders; a test may swap it (the HSM reads it at each call).
        self.registry = registry
        self.partition = partition
        self.identity = IdentityKey.from_der(bytes.fromhex(partition["identity"]))
        self.hsm_id = hashlib.sha256(self.identity.public_der).hexdigest()[:16]
        self.audit = AuditLog(store, self.identity)
        self.lists = AddressListStore(store)
        self.keys = KeyRecords(store, self.lists)
        self.requests = RequestRecords(store)
        self.ledger = VelocityLedger(store, clock)

    @classmethod
    def open(
        cls,
        path: str | Path,
        unlock: Unlock,
        *,
        so_passphrase: str | None = None,
        officers: Sequence[dict[str, str]] | None = None,
        officer_threshold: int | None = None,
        allow_export: bool = False,
        clock: Clock | None = None,
        decoders: DecoderRegistry | None = None,
        nvram: Nvram = None,
    ) -> Boundary:
        """Open (or, on first use, initialise) the HSM store at ``path``: see
        :meth:`hsm_emulator.Hsm.open`."""
        store = Store(path, unlock, nvram)
        clock = clock or SystemClock()
        partition = store.get("partition", "config")
        try:
            if partition is None:
                partition = _new_partition(so_passphrase, officers, officer_threshold,
                                           allow_export, clock.now())
                with store.transaction():
                    store.put("partition", "config", partition)
            elif allow_export and not partition["allowExport"]:
                raise InvalidInput("allow_export is a partition setting fixed when the HSM "
                                   "is initialised (or changed by its officers); this HSM "
                                   "does not allow export")
            boundary = cls(store, clock, decoders or default_registry(), partition)
            boundary.audit.verify_own()
        except HsmError:
            store.close()
            raise
        if boundary.audit.entries(1, 1) == []:
            officer_set = OfficerSet.from_json(partition["officers"])
            boundary.audited({"op": "hsm.init", "hsmId": boundary.hsm_id,
                              "allowExport": partition["allowExport"],
                              "officers": len(officer_set.officers),
                              "officerThreshold": officer_set.threshold,
                              "officerDemo": officer_set.demo}, lambda: None)
        return boundary

    def rebind(self, partition: dict[str, Any]) -> None:
        """Take ``partition`` (a restored one: its identity, officers and settings) as
        this HSM's, re-reading the audit log's head under that identity."""
        self.partition = partition
        self.identity = IdentityKey.from_der(bytes.fromhex(partition["identity"]))
        self.hsm_id = hashlib.sha256(self.identity.public_der).hexdigest()[:16]
        self.audit = AuditLog(self.store, self.identity)
        self.keys.clear()

    def save_partition(self, partition: dict[str, Any]) -> None:
        """Write the partition record (in the caller's transaction) and use it."""
        self.store.put("partition", "config", partition)
        self.partition = partition

    def officer_set(self) -> OfficerSet:
        """The partition's officers; a store initialised before officers existed has
        them registered by its first passphrase call (:mod:`.officer_desk`)."""
        doc = self.partition.get("officers")
        if doc is None:
            raise AuthenticationFailed("this partition has registered no officers yet: "
                                       "its security officer passphrase registers one")
        return OfficerSet.from_json(doc)

    def auto_frozen_until(self) -> float:
        """Until when the auto tier is frozen after a restore (0: it is not)."""
        return float(self.partition.get("autoFrozenUntil", 0.0))

    def policy_now(self, policy: Policy, action: Action) -> Policy:
        """The policy a request is evaluated under now: while the auto tier is frozen,
        ``use`` releases only through tokens with approver groups (a small transfer is
        then released by the approvers of a higher tier)."""
        if action is not Action.USE or self.clock.now() >= self.auto_frozen_until():
            return policy
        return needing_approvers(policy)

    def frozen_note(self, action: Action) -> tuple[str, ...]:
        """Why a release may be missing now: the freeze, while it lasts."""
        until = self.auto_frozen_until()
        now = self.clock.now()
        if action is not Action.USE or now >= until:
            return ()
        return (f"the auto tier is frozen for {until - now:.0f}s more after a restore from "
                "backup (officers may lift it): approvals are needed",)

    def check_auto_tier(self) -> None:
        """Refuse a release by a token without approver groups while the auto tier is
        frozen after a restore (the restored HSM does not know what was signed after the
        backup, so its velocity windows undercount: README, "Backup, restore and
        officers"). A :class:`PolicyNotMet`, so the broker asks for approvals instead."""
        note = self.frozen_note(Action.USE)
        if note:
            raise PolicyNotMet(note[0], note)

    @contextmanager
    def locked(self) -> Iterator[None]:
        with self.store.lock:
            yield

    def audited(self, event: dict[str, Any], action: Callable[[], T]) -> T:
        """Run ``action`` and append ``event`` in one transaction; audit refusals too."""
        try:
            with self.store.transaction():
                result = action()
                self.audit.append(self.clock.now(), {**event, "result": "ok"})
            return result
        except HsmError as exc:
            self._reset_after_rollback()
            self._audit_refusal(event, exc)
            raise

    def audited_steps(self, steps: list[dict[str, Any]], action: Callable[[], T]) -> T:
        """:meth:`audited` for a call made of steps, each audited as its own entry, in
        one transaction and one counted commit: ``action`` appends each step's event to
        ``steps`` as it starts it (``steps`` holds the first when called). On success
        every step is appended as done; on a refusal the transaction rolls back and, in
        one new one, the steps before the last are appended as done and the last as
        refused - the log reads as if each step had been its own call."""
        try:
            with self.store.transaction():
                result = action()
                for event in steps:
                    self.audit.append(self.clock.now(), {**event, "result": "ok"})
            return result
        except HsmError as exc:
            self._reset_after_rollback()
            with self.store.transaction():
                for event in steps[:-1]:
                    self.audit.append(self.clock.now(), {**event, "result": "ok"})
                self.audit.append(self.clock.now(), {**steps[-1], "result": "refused",
                                                     "code": exc.code, "reason": exc.reason})
            raise

    def _audit_refusal(self, event: dict[str, Any], exc: HsmError) -> None:
        with self.store.transaction():
            self.audit.append(self.clock.now(), {**event, "result": "refused",
                                                 "code": exc.code, "reason": exc.reason})

    def _reset_after_rollback(self) -> None:
        partition = self.store.get("partition", "config")
        if partition is not None and partition != self.partition:
            self.rebind(partition)  # an officer change or a restore did not commit
        self.audit.reload()
        self.keys.clear()

    def check_legacy_so(self, passphrase: str) -> bool:
        """Whether ``passphrase`` is the SO passphrase of a partition initialised before
        officers existed (its scrypt hash is all it kept); False for any other."""
        expected = self.partition.get("soHash")
        if expected is None:
            return False
        got = so_hash(passphrase, bytes.fromhex(self.partition["soSalt"]))
        return hmac.compare_digest(bytes.fromhex(expected), got)


def needing_approvers(policy: Policy) -> Policy:
    """``policy`` without what releases ``use`` with no approver: its tokens without
    groups, and ``use`` as an open action."""
    rules = tuple((a, Rule(tuple(t for t in r.tokens if t.groups)) if a is Action.USE else r)
                  for a, r in policy.rules)
    return replace(policy, rules=rules, open_actions=policy.open_actions - {Action.USE})


def _new_partition(so_passphrase: str | None, officers: Sequence[dict[str, str]] | None,
                   threshold: int | None, allow_export: bool, now: float) -> dict[str, Any]:
    """A new partition: its identity key, settings and first officers - registered keys
    with their threshold, or (single-officer demo mode) the one officer derived from the
    SO passphrase (:func:`~.officers.demo_officers`)."""
    salt = secrets.token_bytes(16)
    if officers is not None:
        if so_passphrase is not None:
            raise InvalidInput("a new HSM gets officer keys or a security officer passphrase "
                               "(single-officer demo mode), not both")
        officer_set = OfficerSet(tuple(dict(o) for o in officers),
                                 officer_threshold_of(officers, threshold))
    elif so_passphrase is None or len(so_passphrase) < 8:
        raise InvalidInput("a new HSM needs its officers (officer keys and a threshold) or, "
                           "in single-officer demo mode, a security officer passphrase (at "
                           "least 8 characters)")
    else:
        officer_set = demo_officers(so_passphrase, salt)
    return {"identity": IdentityKey.generate().to_der().hex(), "soSalt": salt.hex(),
            "officers": officer_set.to_json(), "allowExport": allow_export, "createdAt": now}


def officer_threshold_of(officers: Sequence[dict[str, str]], threshold: int | None) -> int:
    if threshold is None:
        raise InvalidInput("officer keys need their threshold (M of N)")
    officer_policy(list(officers), threshold)
    return threshold


def so_hash(passphrase: str, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, n=2**14, r=8, p=1).derive(passphrase.encode())
