"""``HsmClient``: the one narrow interface in front of the HSM.

Two implementations: :class:`LocalHsmClient` (in-process, the embedded default) and
:class:`hsm_emulator.remote.RemoteHsmClient` (the HSM as its own process). Callers -
the broker, the CLI - see public keys, challenges and signatures, never key bytes
(except through the deliberately named ``export_private_key_unsafe``).

``HsmClient`` is the composition of five role protocols - :class:`HsmKeys`,
:class:`HsmSigning`, :class:`HsmAudit`, :class:`HsmOfficer`, :class:`HsmAddressLists` -
so a caller that needs one role can say so in its annotation, and anything typed
``HsmClient`` serves every role.
Each call belongs to exactly one role (:data:`ROLES`; the remote call table names it).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Any, Protocol, runtime_checkable

from .address_lists import AddressListInfo
from .addresses import AddressKind, Network
from .audit import AuditEntry, SignedHead
from .challenge import Challenge
from .evaluate import Evaluation
from .flow import Approval
from .hsm import Hsm
from .model import Action, KeyAlgorithm, KeyAttributes, SignScheme
from .officers import OfficerAction, OfficerOutcome, OfficerSet
from .results import ApprovalOutcome, Attestation, Execution, KeyInfo


@runtime_checkable
class HsmKeys(Protocol):
    """Create, derive and read keys; addresses and attestations: what a wallet needs."""

    def create_key(self, label: str, algorithm: KeyAlgorithm | str, *,
                   key_size: int | None = None,
                   attributes: KeyAttributes | dict[str, Any] | None = None,
                   policy: dict[str, Any] | None = None) -> KeyInfo: ...

    def derive_key(self, parent: str, path: str, label: str,
                   policy: dict[str, Any] | None = None) -> KeyInfo: ...

    def get_key(self, label: str) -> KeyInfo: ...

    def list_keys(self) -> list[str]: ...

    def public_key(self, label: str, path: str = "") -> bytes: ...

    def address(self, label: str, kind: AddressKind | str, network: Network | str,
                path: str = "") -> str: ...

    def attest(self, label: str) -> Attestation: ...

    def identity_public_key(self) -> bytes: ...


@runtime_checkable
class HsmSigning(Protocol):
    """Requests, challenges, approvals and signatures: the broker's daily work."""

    def begin(self, label: str, action: Action | str = Action.USE, payload: bytes = b"",
              payload_type: str = "UNSPECIFIED", scheme: SignScheme | str | None = None, *,
              fee_cap: int | None = None, new_policy: dict[str, Any] | None = None,
              initiator: str = "", request_id: str | None = None,
              initiation: Approval | None = None) -> Challenge: ...

    def check_approval(self, request_id: str, approval: Approval) -> str: ...

    def execute(self, request_id: str, approvals: Sequence[Approval] = (), *,
                payload: bytes | None = None) -> Execution: ...

    def approve(self, request_id: str, approval: Approval, approvals: Sequence[Approval] = (),
                *, payload: bytes | None = None) -> ApprovalOutcome: ...

    def sign_now(self, label: str, payload: bytes, payload_type: str = "UNSPECIFIED",
                 scheme: SignScheme | str | None = None, *,
                 request_id: str | None = None,
                 initiation: Approval | None = None) -> Execution: ...

    def sign_batch(self, label: str, payloads: Sequence[bytes],
                   payload_type: str = "UNSPECIFIED", scheme: SignScheme | str | None = None,
                   ) -> list[Execution]: ...

    def dry_run(self, label: str, payload: bytes = b"", payload_type: str = "UNSPECIFIED",
                action: Action | str = Action.USE, *, approvers: Sequence[str] = (),
                elapsed: float = 0.0) -> Evaluation: ...

    def request_status(self, request_id: str, approvals: Sequence[Approval] = (),
                       rejected: Sequence[str] = ()) -> Evaluation: ...

    def cancel(self, request_id: str, reason: str = "") -> None: ...

    def request_result(self, request_id: str) -> Execution: ...

    def request_challenge(self, request_id: str) -> Challenge: ...


@runtime_checkable
class HsmAudit(Protocol):
    """Reading the HSM's signed, hash-chained audit log: what an auditor needs."""

    def audit_entries(self, start: int = 1, limit: int = 1000) -> list[AuditEntry]: ...

    def audit_head(self) -> SignedHead: ...

    def audit_checkpoints(self) -> list[SignedHead]: ...


@runtime_checkable
class HsmOfficer(Protocol):
    """The security officers' calls. Officer requests by quorum (:mod:`.officer_desk`):
    begin one, have M officers sign its challenge, execute it - invalidate, restore,
    destroy or export a key, partition settings, the officer set, backup, restore, lift
    the auto tier's freeze. And the single-officer demo mode's passphrase calls: take a
    key out of service, bring it back, destroy it, or (where the partition and the key
    allow it) export it."""

    def officer_set(self) -> OfficerSet: ...

    def officer_begin(self, action: OfficerAction | str,
                      arguments: dict[str, Any] | None = None) -> Challenge: ...

    def officer_challenge(self, request_id: str) -> Challenge: ...

    def officer_execute(self, request_id: str,
                        approvals: Sequence[Approval] = ()) -> OfficerOutcome: ...

    def restore_backup(self, request_id: str, approvals: Sequence[Approval], backup: bytes,
                       shares: Sequence[str]) -> OfficerOutcome: ...

    def invalidate_key(self, label: str, so_passphrase: str) -> KeyInfo: ...

    def restore_key(self, label: str, so_passphrase: str) -> KeyInfo: ...

    def destroy_key(self, label: str, so_passphrase: str) -> KeyInfo: ...

    def export_private_key_unsafe(self, label: str, so_passphrase: str) -> bytes: ...


@runtime_checkable
class HsmAddressLists(Protocol):
    """Upload address lists too large for a policy document, in chunks, and read them:
    a policy then names one by digest (:mod:`hsm_emulator.address_lists`)."""

    def address_list_begin(self) -> AddressListInfo: ...

    def address_list_add(self, upload_id: str, index: int,
                         addresses: Sequence[str]) -> AddressListInfo: ...

    def address_list_finish(self, upload_id: str) -> AddressListInfo: ...

    def address_list_discard(self, upload_id: str) -> None: ...

    def address_list_info(self, list_id: str) -> AddressListInfo: ...


@runtime_checkable
class HsmClient(HsmKeys, HsmSigning, HsmAudit, HsmOfficer, HsmAddressLists, Protocol):
    """Every role: the whole HSM. A caller that needs one role may ask for just it."""

    def close(self) -> None: ...


class Role(Enum):
    """Which role protocol a call belongs to (the remote call table names one each)."""

    KEYS = "keys"
    SIGNING = "signing"
    AUDIT = "audit"
    OFFICER = "officer"
    LISTS = "lists"


#: The protocol of each role.
ROLES: dict[Role, type] = {Role.KEYS: HsmKeys, Role.SIGNING: HsmSigning,
                           Role.AUDIT: HsmAudit, Role.OFFICER: HsmOfficer,
                           Role.LISTS: HsmAddressLists}


def role_calls(role: Role) -> tuple[str, ...]:
    """The names of the calls a role's protocol declares, in declaration order."""
    protocol = ROLES[role]
    return tuple(name for name in protocol.__dict__
                 if not name.startswith("_") and callable(getattr(protocol, name)))


#: Names of the calls an HsmClient forwards: the whole surface, nothing else (``close``
#: is the client's own lifecycle, never forwarded to the HSM).
CALLS = tuple(name for role in Role for name in role_calls(role))


def local_client(hsm: Hsm) -> HsmClient:
    """The in-process HSM, typed as the narrow interface: the embedded default.

    :class:`Hsm` implements every call itself; handing it out as ``HsmClient`` keeps
    callers (checked by mypy) off its internals, as they are with the remote client.
    """
    return hsm
