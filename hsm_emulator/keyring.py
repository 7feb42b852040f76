"""Key management inside the HSM: create and derive keys, read them, compute addresses,
attest them, and what the security officers' requests do (invalidate, restore, destroy,
export; authorised by :mod:`.officer_desk`).

Keys never leave: callers get public keys, addresses and signed attestations. The one
exception, :meth:`Keyring.export_private_key_unsafe`, needs the key's ``exportable``
attribute, the partition's export setting and the officers' quorum.
"""

from __future__ import annotations

import json
from typing import Any

from .addresses import AddressKind, Network, address
from .boundary import Boundary
from .derivation import format_path, parse_path
from .errors import AttributeDenied, InvalidInput, KeyExists, KeyInvalidated
from .identity import Domain
from .keys import KeyMaterial
from .model import KeyAlgorithm, KeyAttributes, canonical_json
from .policy import Policy
from .records import LABEL_RE
from .results import Attestation, KeyInfo


class Keyring:
    """The key calls of :class:`hsm_emulator.Hsm` (see :class:`hsm_emulator.client.HsmKeys`
    and :class:`hsm_emulator.client.HsmOfficer`)."""

    def __init__(self, boundary: Boundary) -> None:
        self._b = boundary
        self._keys = boundary.keys

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
            parsed = self._b.lists.parse_policy(policy)
            if self._keys.exists(label):
                raise KeyExists(f"a key labelled {label!r} exists (labels are never reused)")
            if key_size is not None and algo is not KeyAlgorithm.RSA:
                raise InvalidInput("keySize applies to RSA keys only")
            material = KeyMaterial.generate(algo, key_size)
            rec = _record(label, material, attrs, parsed, self._b.clock.now(), None, "")
            rec["blocked"] = parsed.blocked
            rec["keySize"] = key_size or (2048 if algo is KeyAlgorithm.RSA else None)
            self._keys.put(rec)
            event.update(algorithm=algo.value, policyDigest=parsed.digest,
                         publicKey=material.public_key.hex())
            return self._keys.info(self._keys.state(label))

        with self._b.locked():
            return self._b.audited(event, create)

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
            state = self._keys.usable(parent)
            if not state.attributes.derive:
                raise AttributeDenied(f"key {parent!r} does not allow derivation")
            assert state.material is not None
            if not state.material.hd:
                raise AttributeDenied(f"{state.material.algorithm.value} keys do not derive")
            rel = format_path(parse_path(path))
            if not rel:
                raise InvalidInput("path: a derived key needs a non-empty path")
            if self._keys.exists(label):
                raise KeyExists(f"a key labelled {label!r} exists")
            material = state.material.derive(rel)
            rec = _record(label, material, state.attributes, None, self._b.clock.now(), parent,
                          rel)
            self._keys.put(rec)
            child = self._keys.state(label)
            event.update(policyDigest=child.policy.digest, publicKey=material.public_key.hex())
            return self._keys.info(child)

        with self._b.locked():
            return self._b.audited(event, derive)

    def get_key(self, label: str) -> KeyInfo:
        with self._b.locked():
            return self._keys.info(self._keys.state(label))

    def list_keys(self) -> list[str]:
        with self._b.locked():
            return self._keys.labels()

    def public_key(self, label: str, path: str = "") -> bytes:
        with self._b.locked():
            return self._derived(label, path).public_key

    def address(self, label: str, kind: AddressKind | str, network: Network | str,
                path: str = "") -> str:
        """An address of ``label`` (or of its child at ``path``), computed inside the HSM."""
        with self._b.locked():
            material = self._derived(label, path)
            return address(kind, network, material.public_key)  # type: ignore[arg-type]

    def _derived(self, label: str, path: str) -> KeyMaterial:
        state = self._keys.usable(label)
        assert state.material is not None
        if not path:
            return state.material
        if not state.attributes.derive:
            raise AttributeDenied(f"key {label!r} does not allow derivation")
        return state.material.derive(format_path(parse_path(path)))

    def attest(self, label: str) -> Attestation:
        """A statement, signed by the HSM identity, of what this key is and may do."""
        with self._b.locked():
            info = self._keys.info(self._keys.state(label))
            statement = canonical_json({
                "format": "ska-attestation", "version": 1, "hsmId": self._b.hsm_id,
                "label": info.label, "algorithm": info.algorithm.value,
                "publicKeySpki": info.public_key_spki.hex(),
                "attributes": info.attributes.to_json(), "policyDigest": info.policy_digest,
                "blocked": info.blocked, "invalidated": info.invalidated,
                "parent": info.parent, "path": info.path, "createdAt": info.created_at,
                "attestedAt": self._b.clock.now(), "nonExportable": not (
                    info.attributes.exportable and self._b.partition["allowExport"]),
            })
            return Attestation(statement, self._b.identity.sign(Domain.ATTESTATION, statement))

    def identity_public_key(self) -> bytes:
        """The HSM identity's SPKI DER: the root for attestations, challenges, audit heads."""
        return self._b.identity.public_der

    # -- what officers do (authorised by :mod:`.officer_desk`, in its transaction) ------

    def invalidate(self, label: str) -> KeyInfo:
        """Delete a key the recoverable way: it signs nothing until officers restore it."""
        rec = dict(self._keys.state(label).record)
        rec["invalidated"] = True
        self._keys.put(rec)
        return self._keys.info(self._keys.state(label))

    def restore(self, label: str) -> KeyInfo:
        rec = dict(self._keys.state(label).record)
        if rec["material"] is None:
            raise KeyInvalidated(f"key {label!r} was destroyed and cannot be restored")
        rec["invalidated"] = False
        self._keys.put(rec)
        return self._keys.info(self._keys.state(label))

    def destroy(self, label: str) -> KeyInfo:
        """Finally destroy an invalidated key's material; its label stays reserved."""
        state = self._keys.state(label)
        if not state.attributes.destroyable:
            raise AttributeDenied(f"key {label!r} is not destroyable")
        if not state.record["invalidated"]:
            raise InvalidInput(f"key {label!r} must be invalidated before it is destroyed")
        rec = dict(state.record)
        rec["material"] = None
        self._keys.put(rec)
        return self._keys.info(self._keys.state(label))

    def export_secret_unsafe(self, label: str) -> bytes:
        """DANGEROUS: a key's private bytes. Needs the key's ``exportable`` attribute and
        the partition's export setting (seed 001), besides the officers."""
        state = self._keys.usable(label)
        if not state.attributes.exportable:
            raise AttributeDenied(f"key {label!r} is not exportable")
        if not self._b.partition["allowExport"]:
            raise AttributeDenied("this HSM partition does not allow key export")
        assert state.material is not None
        return state.material.secret


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
