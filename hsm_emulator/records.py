"""The HSM's records as it reads them: keys (with inherited policy and status resolved)
and approval requests.

Both live in the HSM's own store (kinds ``key`` and ``request``); these classes are the
only code that reads or writes them, so the key cache can never be stale: every write
goes through :meth:`KeyRecords.put`, which drops it.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from .errors import InvalidInput, KeyInvalidated, KeyNotFound, RequestExists, RequestNotFound
from .keys import KeyMaterial, MaterialView
from .list_store import AddressListStore
from .model import KeyAlgorithm, KeyAttributes, canonical_json
from .policy import Policy
from .request import HsmRequest
from .results import KeyInfo
from .store import Store

LABEL_RE = re.compile(r"^[A-Za-z0-9_.:@+\-/]{1,128}$")
#: A request id a caller may choose (``begin`` / ``sign_now``).
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")


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


class KeyRecords:
    """Key records with their resolved state, cached until any key is written."""

    def __init__(self, store: Store, lists: AddressListStore | None = None) -> None:
        self._store = store
        #: resolves the address lists policies name (:mod:`.address_lists`)
        self._lists = lists or AddressListStore(store)
        self._keys: dict[str, KeyState] = {}
        self._policies: dict[str, Policy] = {}

    def clear(self) -> None:
        """Forget every resolved state (after a write, or a rolled-back transaction)."""
        self._keys.clear()

    def exists(self, label: str) -> bool:
        return self._store.get("key", label) is not None

    def labels(self) -> list[str]:
        return self._store.ids("key")

    def _policy(self, doc: dict[str, Any]) -> Policy:
        source = canonical_json(doc).decode()
        cached = self._policies.get(source)
        if cached is None:
            cached = self._lists.parse_policy(doc)
            self._policies[source] = cached
        return cached

    def state(self, label: str) -> KeyState:
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
            parent = self.state(rec["parent"])
            policy = parent.policy if rec["policy"] is None else self._policy(rec["policy"])
            state = KeyState(rec, material, attrs, policy, rec["blocked"] or parent.blocked,
                             rec["invalidated"] or parent.invalidated, parent.family)
        else:
            state = KeyState(rec, material, attrs, self._policy(rec["policy"]), rec["blocked"],
                             rec["invalidated"], label)
        self._keys[label] = state
        return state

    def put(self, rec: dict[str, Any]) -> None:
        self._store.put("key", rec["label"], rec)
        self._keys.clear()  # children inherit status and policy: drop every cached state

    def usable(self, label: str) -> KeyState:
        """The key's state if it may perform anything (neither invalidated nor destroyed)."""
        state = self.state(label)
        if state.invalidated:
            raise KeyInvalidated(f"key {label!r} is invalidated and performs nothing")
        if state.material is None:
            raise KeyInvalidated(f"key {label!r} was destroyed")
        return state

    @staticmethod
    def view(state: KeyState) -> MaterialView:
        """What a chain decoder may see of a key: public keys, derivation, no secret."""
        assert state.material is not None
        return MaterialView(state.material, state.attributes.derive)

    @staticmethod
    def info(state: KeyState) -> KeyInfo:
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


class RequestRecords:
    """Approval requests, kept in the HSM's store as :meth:`HsmRequest.to_json` records."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def get(self, request_id: str) -> HsmRequest:
        if not isinstance(request_id, str) or len(request_id) > 64:
            raise RequestNotFound("no such request")
        doc = self._store.get("request", request_id)
        if doc is None:
            raise RequestNotFound(f"no request {request_id!r}")
        return HsmRequest.from_json(doc)

    def put(self, req: HsmRequest) -> None:
        self._store.put("request", req.id, req.to_json())

    def fresh_id(self, chosen: str | None) -> str:
        """A new request's id: the caller's choice (8-64 of ``A-Z a-z 0-9 _ -``), once
        only - a second request under it is :class:`RequestExists` - or a random one."""
        if chosen is None:
            return str(uuid.uuid4())
        if not isinstance(chosen, str) or not _REQUEST_ID.fullmatch(chosen):
            raise InvalidInput("request_id: 8-64 characters of A-Z a-z 0-9 _ -")
        if self._store.get("request", chosen) is not None:
            raise RequestExists(f"request {chosen} exists")
        return chosen
