"""The emulated HSM: keys that never leave, each with a policy the HSM itself enforces.

:class:`Hsm` is the trust boundary. Key management lives here; the approval and signing
flow is in :mod:`hsm_emulator.flow`. Every operation runs under the store's lock and in
one store transaction with its audit entry, so a state change without its audit entry
(or the reverse) cannot happen; a refusal is audited too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .addresses import AddressKind, Network, address
from .audit import AuditEntry, AuditLog, SignedHead
from .clock import Clock, SystemClock
from .decoders import DecoderRegistry, default_registry
from .derivation import format_path, parse_path
from .errors import (
    AttributeDenied,
    AuthenticationFailed,
    HsmError,
    InvalidInput,
    KeyExists,
    KeyInvalidated,
    KeyNotFound,
)
from .identity import Domain, IdentityKey
from .keys import KeyMaterial
from .model import KeyAlgorithm, KeyAttributes, canonical_json
from .policy import Policy, parse_policy
from .results import Attestation, KeyInfo
from .store import Store, Unlock

LABEL_RE = re.compile(r"^[A-Za-z0-9_.:@+\-/]{1,128}$")
T = TypeVar("T")


@dataclass(frozen=True)
class KeyState:
    """A key record as the HSM sees it, with its inherited policy and status resolved."""

    record: dict[str, Any]
    material: KeyMaterial | None  #: None once destroyed
    attributes: KeyAttributes
    policy: Policy
    blocked: bool
    invalidated: bool
    family: str  #: the root key's label: velocity limits are kept per family

    @property
    def label(self) -> str:
        return str(self.record["label"])


class HsmCore:
    """State, storage, audit and key management. See :class:`hsm_emulator.Hsm`."""

    def __init__(self, store: Store, clock: Clock, registry: DecoderRegistry,
                 partition: dict[str, Any]) -> None:
        self._store = store
        self.clock = clock
        self.registry = registry
        self._partition = partition
        self.identity = IdentityKey.from_der(bytes.fromhex(partition["identity"]))
        self.hsm_id = hashlib.sha256(self.identity.public_der).hexdigest()[:16]
        self.audit = AuditLog(store, self.identity)
        self._keys: dict[str, KeyState] = {}
        self._policies: dict[str, Policy] = {}

    # -- opening ----------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | Path,
        unlock: Unlock,
        *,
        so_passphrase: str | None = None,
        allow_export: bool = False,
        clock: Clock | None = None,
        decoders: DecoderRegistry | None = None,
    ) -> Any:
        """Open (or, on first use, initialise) the HSM whose store is at ``path``.

        Initialising needs the security officer's passphrase; ``allow_export`` is the
        partition setting that, together with a key's ``exportable`` attribute, permits
        :meth:`export_private_key_unsafe`.
        """
        store = Store(path, unlock)
        clock = clock or SystemClock()
        partition = store.get("partition", "config")
        if partition is None:
            if so_passphrase is None or len(so_passphrase) < 8:
                store.close()
                raise InvalidInput("a new HSM needs a security officer passphrase "
                                   "(at least 8 characters)")
            salt = secrets.token_bytes(16)
            partition = {
                "identity": IdentityKey.generate().to_der().hex(),
                "soSalt": salt.hex(),
                "soHash": _so_hash(so_passphrase, salt).hex(),
                "allowExport": allow_export,
                "createdAt": clock.now(),
            }
            with store.transaction():
                store.put("partition", "config", partition)
        elif allow_export and not partition["allowExport"]:
            store.close()
            raise InvalidInput("allow_export is a partition setting fixed when the HSM is "
                               "initialised; this HSM does not allow export")
        hsm = cls(store, clock, decoders or default_registry(), partition)
        if hsm.audit.entries(1, 1) == []:
            hsm._audited({"op": "hsm.init", "hsmId": hsm.hsm_id,
                          "allowExport": partition["allowExport"]}, lambda: None)
        return hsm

    def close(self) -> None:
        self._store.close()

    # -- audit plumbing ---------------------------------------------------------------

    def _audited(self, event: dict[str, Any], action: Callable[[], T]) -> T:
        """Run ``action`` and append ``event`` in one transaction; audit refusals too."""
        try:
            with self._store.transaction():
                result = action()
                self.audit.append(self.clock.now(), {**event, "result": "ok"})
            return result
        except HsmError as exc:
            self._reset_after_rollback()
            self._audit_refusal(event, exc)
            raise

    def _audit_refusal(self, event: dict[str, Any], exc: HsmError) -> None:
        with self._store.transaction():
            self.audit.append(self.clock.now(), {**event, "result": "refused",
                                                 "code": exc.code, "reason": exc.reason})

    def _reset_after_rollback(self) -> None:
        self.audit.reload()
        self._keys.clear()

    @contextmanager
    def locked(self) -> Iterator[None]:
        with self._store.lock:
            yield

    def audit_entries(self, start: int = 1, limit: int = 1000) -> list[AuditEntry]:
        if not isinstance(start, int) or not isinstance(limit, int) or start < 1:
            raise InvalidInput("audit_entries: start >= 1 and limit are whole numbers")
        with self.locked():
            return self.audit.entries(start, max(0, min(limit, 10_000)))

    def audit_head(self) -> SignedHead:
        with self.locked():
            return self.audit.head(self.clock.now())

    def audit_checkpoints(self) -> list[SignedHead]:
        with self.locked():
            return self.audit.checkpoints()

    # -- key records ------------------------------------------------------------------

    def _policy(self, doc: dict[str, Any]) -> Policy:
        source = canonical_json(doc).decode()
        cached = self._policies.get(source)
        if cached is None:
            cached = parse_policy(doc)
            self._policies[source] = cached
        return cached

    def _state(self, label: str) -> KeyState:
        state = self._keys.get(label)
        if state is not None:
            return state
        if not isinstance(label, str) or not LABEL_RE.match(label):
            raise KeyNotFound(f"no key labelled {label!r}")
        rec = self._store.get("key", label)
        if rec is None:
            raise KeyNotFound(f"no key labelled {label!r}")
        material = None if rec["material"] is None else KeyMaterial.from_sealed(rec["material"])
        attrs = KeyAttributes.from_json(rec["attributes"])
        if rec["parent"]:
            parent = self._state(rec["parent"])
            policy = parent.policy if rec["policy"] is None else self._policy(rec["policy"])
            state = KeyState(rec, material, attrs, policy, rec["blocked"] or parent.blocked,
                             rec["invalidated"] or parent.invalidated, parent.family)
        else:
            state = KeyState(rec, material, attrs, self._policy(rec["policy"]), rec["blocked"],
                             rec["invalidated"], label)
        self._keys[label] = state
        return state

    def _put_key(self, rec: dict[str, Any]) -> None:
        self._store.put("key", rec["label"], rec)
        self._keys.clear()  # children inherit status and policy: drop every cached state

    def _usable(self, label: str) -> KeyState:
        state = self._state(label)
        if state.invalidated:
            raise KeyInvalidated(f"key {label!r} is invalidated and performs nothing")
        if state.material is None:
            raise KeyInvalidated(f"key {label!r} was destroyed")
        return state

    def _info(self, state: KeyState) -> KeyInfo:
        rec = state.record
        material = state.material
        pub = bytes.fromhex(rec["publicKey"])
        spki = bytes.fromhex(rec["publicKeySpki"])
        policy_doc = state.policy.to_json()
        policy_doc["keyStatus"] = {"blocked": state.blocked}
        return KeyInfo(
            label=state.label, algorithm=KeyAlgorithm(rec["algorithm"]),
            public_key=pub if material is None else material.public_key,
            public_key_spki=spki, attributes=state.attributes, policy=policy_doc,
            policy_digest=state.policy.digest, blocked=state.blocked,
            invalidated=state.invalidated, parent=rec["parent"], path=rec["path"],
            created_at=rec["createdAt"], key_size=rec.get("keySize"),
        )

    # -- key management ---------------------------------------------------------------

    def create_key(
        self,
        label: str,
        algorithm: KeyAlgorithm | str,
        *,
        key_size: int | None = None,
        attributes: KeyAttributes | dict[str, Any] | None = None,
        policy: dict[str, Any] | None = None,
    ) -> KeyInfo:
        """Generate a key inside the HSM with its attributes and SKA policy."""
        event = {"op": "key.create", "label": label}

        def create() -> KeyInfo:
            _check_label(label)
            algo = _algorithm(algorithm)
            attrs = attributes if isinstance(attributes, KeyAttributes) else (
                KeyAttributes.from_json(attributes))
            parsed = parse_policy(policy)
            if self._store.get("key", label) is not None:
                raise KeyExists(f"a key labelled {label!r} exists (labels are never reused)")
            if key_size is not None and algo is not KeyAlgorithm.RSA:
                raise InvalidInput("keySize applies to RSA keys only")
            material = KeyMaterial.generate(algo, key_size)
            rec = _record(label, material, attrs, parsed, self.clock.now(), None, "")
            rec["blocked"] = parsed.blocked
            rec["keySize"] = key_size or (2048 if algo is KeyAlgorithm.RSA else None)
            self._put_key(rec)
            event.update(algorithm=algo.value, policyDigest=parsed.digest,
                         publicKey=material.public_key.hex())
            return self._info(self._state(label))

        with self.locked():
            return self._audited(event, create)

    def derive_key(self, parent: str, path: str, label: str,
                   policy: dict[str, Any] | None = None) -> KeyInfo:
        """Derive and keep a child key (BIP32 / SLIP-10) under its own label.

        The child inherits the parent's attributes, its status and its policy, including
        later modifications of it. ``policy`` must be None: a child signs for the
        parent's addresses, so a policy of its own given here would let whoever may
        derive escape the parent's approvals. A child gets a policy of its own only
        through a ``modify`` request on it, which the inherited ``ruleModify`` - the
        parent's approvers - must approve. The audit entry names the child's policy
        digest.
        """
        event = {"op": "key.derive", "label": label, "parent": parent, "path": path}

        def derive() -> KeyInfo:
            _check_label(label)
            if policy is not None:
                raise AttributeDenied(
                    "a derived key is governed by its parent's policy; give it its own "
                    "through a modify request that the parent's ruleModify approvers approve")
            state = self._usable(parent)
            if not state.attributes.derive:
                raise AttributeDenied(f"key {parent!r} does not allow derivation")
            assert state.material is not None
            if not state.material.hd:
                raise AttributeDenied(f"{state.material.algorithm.value} keys do not derive")
            rel = format_path(parse_path(path))
            if not rel:
                raise InvalidInput("path: a derived key needs a non-empty path")
            if self._store.get("key", label) is not None:
                raise KeyExists(f"a key labelled {label!r} exists")
            material = state.material.derive(rel)
            rec = _record(label, material, state.attributes, None, self.clock.now(), parent, rel)
            self._put_key(rec)
            child = self._state(label)
            event.update(policyDigest=child.policy.digest, publicKey=material.public_key.hex())
            return self._info(child)

        with self.locked():
            return self._audited(event, derive)

    def get_key(self, label: str) -> KeyInfo:
        with self.locked():
            return self._info(self._state(label))

    def list_keys(self) -> list[str]:
        with self.locked():
            return self._store.ids("key")

    def public_key(self, label: str, path: str = "") -> bytes:
        with self.locked():
            return self._derived(label, path).public_key

    def address(self, label: str, kind: AddressKind | str, network: Network | str,
                path: str = "") -> str:
        """An address of ``label`` (or of its child at ``path``), computed inside the HSM."""
        with self.locked():
            material = self._derived(label, path)
            return address(kind, network, material.public_key)  # type: ignore[arg-type]

    def _derived(self, label: str, path: str) -> KeyMaterial:
        state = self._usable(label)
        assert state.material is not None
        if not path:
            return state.material
        if not state.attributes.derive:
            raise AttributeDenied(f"key {label!r} does not allow derivation")
        return state.material.derive(format_path(parse_path(path)))

    def invalidate_key(self, label: str) -> KeyInfo:
        """Delete a key the recoverable way: it signs nothing until an SO restores it."""
        def invalidate() -> KeyInfo:
            rec = dict(self._state(label).record)
            rec["invalidated"] = True
            self._put_key(rec)
            return self._info(self._state(label))

        with self.locked():
            return self._audited({"op": "key.invalidate", "label": label}, invalidate)

    def restore_key(self, label: str, so_passphrase: str) -> KeyInfo:
        def restore() -> KeyInfo:
            self._check_so(so_passphrase)
            rec = dict(self._state(label).record)
            if rec["material"] is None:
                raise KeyInvalidated(f"key {label!r} was destroyed and cannot be restored")
            rec["invalidated"] = False
            self._put_key(rec)
            return self._info(self._state(label))

        with self.locked():
            return self._audited({"op": "key.restore", "label": label}, restore)

    def destroy_key(self, label: str, so_passphrase: str) -> KeyInfo:
        """Finally destroy an invalidated key's material; its label stays reserved."""
        def destroy() -> KeyInfo:
            self._check_so(so_passphrase)
            state = self._state(label)
            if not state.attributes.destroyable:
                raise AttributeDenied(f"key {label!r} is not destroyable")
            if not state.record["invalidated"]:
                raise InvalidInput(f"key {label!r} must be invalidated before it is destroyed")
            rec = dict(state.record)
            rec["material"] = None
            self._put_key(rec)
            return self._info(self._state(label))

        with self.locked():
            return self._audited({"op": "key.destroy", "label": label}, destroy)

    def export_private_key_unsafe(self, label: str, so_passphrase: str) -> bytes:
        """DANGEROUS: hand out private key bytes. Needs the key's ``exportable`` attribute,
        the partition's export setting, and the security officer (seed 001)."""
        def export() -> bytes:
            self._check_so(so_passphrase)
            state = self._usable(label)
            if not state.attributes.exportable:
                raise AttributeDenied(f"key {label!r} is not exportable")
            if not self._partition["allowExport"]:
                raise AttributeDenied("this HSM partition does not allow key export")
            assert state.material is not None
            return state.material.secret

        with self.locked():
            return self._audited({"op": "key.export", "label": label}, export)

    def _check_so(self, passphrase: str) -> None:
        expected = bytes.fromhex(self._partition["soHash"])
        got = _so_hash(passphrase, bytes.fromhex(self._partition["soSalt"]))
        if not hmac.compare_digest(expected, got):
            raise AuthenticationFailed("security officer authentication failed")

    def attest(self, label: str) -> Attestation:
        """A statement, signed by the HSM identity, of what this key is and may do."""
        with self.locked():
            info = self._info(self._state(label))
            statement = canonical_json({
                "format": "ska-attestation", "version": 1, "hsmId": self.hsm_id,
                "label": info.label, "algorithm": info.algorithm.value,
                "publicKeySpki": info.public_key_spki.hex(),
                "attributes": info.attributes.to_json(), "policyDigest": info.policy_digest,
                "blocked": info.blocked, "invalidated": info.invalidated,
                "parent": info.parent, "path": info.path, "createdAt": info.created_at,
                "attestedAt": self.clock.now(), "nonExportable": not (
                    info.attributes.exportable and self._partition["allowExport"]),
            })
            return Attestation(statement, self.identity.sign(Domain.ATTESTATION, statement))

    def identity_public_key(self) -> bytes:
        """The HSM identity's SPKI DER: the root for attestations, challenges, audit heads."""
        return self.identity.public_der


def _so_hash(passphrase: str, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, n=2**14, r=8, p=1).derive(passphrase.encode())


def _check_label(label: str) -> None:
    if not isinstance(label, str) or not LABEL_RE.match(label):
        raise InvalidInput("label: 1-128 characters of A-Z a-z 0-9 _ . : @ + - /")


def _algorithm(value: KeyAlgorithm | str) -> KeyAlgorithm:
    try:
        return KeyAlgorithm(value)
    except ValueError:
        raise InvalidInput(f"algorithm: one of {[a.value for a in KeyAlgorithm]}") from None


def _record(label: str, material: KeyMaterial, attrs: KeyAttributes, policy: Policy | None,
            now: float, parent: str | None, path: str) -> dict[str, Any]:
    return {
        "label": label,
        "algorithm": material.algorithm.value,
        "material": material.to_sealed(),
        "publicKey": material.public_key.hex(),
        "publicKeySpki": material.public_key_spki().hex(),
        "attributes": attrs.to_json(),
        "policy": None if policy is None else json.loads(policy.source),
        "blocked": False if policy is None else policy.blocked,
        "invalidated": False,
        "parent": parent,
        "path": path,
        "createdAt": now,
    }
