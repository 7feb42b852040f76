"""The emulated HSM: keys that never leave, each with a policy the HSM itself enforces.

:class:`Hsm` is the trust boundary, composed of one part per concept over the shared
:class:`~hsm_emulator.boundary.Boundary` (store, clock, identity, decoders, and the rule
that every operation runs under the store's lock and in one transaction with its audit
entry):

- :class:`~hsm_emulator.keyring.Keyring`: create, derive, read, attest keys;
- :class:`~hsm_emulator.officer_desk.OfficerDesk`: the security officers' requests by
  quorum (invalidate, restore, destroy, export keys; partition settings, officers,
  backup, restore);
- :class:`~hsm_emulator.flow.ApprovalFlow`: begin, challenge, approvals, execute, and
  reading requests;
- :class:`~hsm_emulator.autotier.AutoTier`: signing at once (``sign_now``, ``sign_batch``);
- :class:`~hsm_emulator.auditing.AuditTrail`: the audit log's pages, head, checkpoints;
- :class:`~hsm_emulator.list_uploads.AddressListCalls`: address lists uploaded in chunks.

``Hsm`` itself only opens, closes and delegates: its methods are the
:class:`~hsm_emulator.client.HsmClient` calls, with the same signatures (the address list
role's delegates come from :class:`~hsm_emulator.list_uploads.AddressListRole`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .addresses import AddressKind, Network
from .audit import AuditEntry, AuditLog, SignedHead
from .auditing import AuditTrail
from .autotier import AutoTier
from .boundary import Boundary
from .challenge import Challenge
from .clock import Clock
from .decoders import UNSPECIFIED, DecoderRegistry
from .evaluate import Evaluation
from .flow import Approval, ApprovalFlow
from .identity import IdentityKey
from .keyring import Keyring
from .list_uploads import AddressListCalls, AddressListRole
from .model import Action, KeyAlgorithm, KeyAttributes, SignScheme
from .officer_desk import OfficerDesk
from .officers import OfficerAction, OfficerOutcome, OfficerSet
from .records import KeyState
from .results import ApprovalOutcome, Attestation, Execution, KeyInfo
from .store import Nvram, Unlock

__all__ = ["Hsm", "KeyState"]


class OfficerCalls:
    """The officer role (:class:`~hsm_emulator.client.HsmOfficer`) of :class:`Hsm`,
    delegated to its :class:`~hsm_emulator.officer_desk.OfficerDesk`: the HSM's class is
    composed per role, as its interface is."""

    officers: OfficerDesk

    def officer_set(self) -> OfficerSet:
        return self.officers.officer_set()

    def officer_begin(self, action: OfficerAction | str,
                      arguments: dict[str, Any] | None = None) -> Challenge:
        return self.officers.officer_begin(action, arguments)

    def officer_challenge(self, request_id: str) -> Challenge:
        return self.officers.officer_challenge(request_id)

    def officer_execute(self, request_id: str,
                        approvals: Sequence[Approval] = ()) -> OfficerOutcome:
        return self.officers.officer_execute(request_id, approvals)

    def restore_backup(self, request_id: str, approvals: Sequence[Approval], backup: bytes,
                       shares: Sequence[str]) -> OfficerOutcome:
        return self.officers.restore_backup(request_id, approvals, backup, shares)

    # single-officer demo mode: the SO passphrase stands for the one officer's signature

    def invalidate_key(self, label: str, so_passphrase: str) -> KeyInfo:
        return self._demo(so_passphrase, OfficerAction.INVALIDATE_KEY, label)

    def restore_key(self, label: str, so_passphrase: str) -> KeyInfo:
        return self._demo(so_passphrase, OfficerAction.RESTORE_KEY, label)

    def destroy_key(self, label: str, so_passphrase: str) -> KeyInfo:
        return self._demo(so_passphrase, OfficerAction.DESTROY_KEY, label)

    def export_private_key_unsafe(self, label: str, so_passphrase: str) -> bytes:
        outcome = self.officers.as_demo_officer(so_passphrase, OfficerAction.EXPORT_KEY,
                                                {"label": label})
        return bytes.fromhex(outcome.secret["privateKey"])

    def _demo(self, so_passphrase: str, action: OfficerAction, label: str) -> KeyInfo:
        outcome = self.officers.as_demo_officer(so_passphrase, action, {"label": label})
        return KeyInfo.from_json(outcome.summary["key"])


class Hsm(OfficerCalls, AddressListRole):
    """The HSM. Open one with :meth:`Hsm.open`; reach it through an ``HsmClient``."""

    def __init__(self, boundary: Boundary) -> None:
        self.boundary = boundary
        self.records = boundary.keys  #: key records, resolved (for tests and decoders' views)
        self.keyring = Keyring(boundary)
        self.approvals = ApprovalFlow(boundary)
        self.auto = AutoTier(boundary)
        self.trail = AuditTrail(boundary)
        self.officers = OfficerDesk(boundary, self.keyring)
        self.lists = AddressListCalls(boundary)
        self.clock = boundary.clock
        self._store = boundary.store

    # A restore replaces the identity and the audit log: always the boundary's current ones.

    @property
    def identity(self) -> IdentityKey:
        return self.boundary.identity

    @property
    def hsm_id(self) -> str:
        return self.boundary.hsm_id

    @property
    def audit(self) -> AuditLog:
        return self.boundary.audit

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
    ) -> Hsm:
        """Open (or, on first use, initialise) the HSM whose store is at ``path``.

        Initialising registers the first security officers: ``officers`` (credentials as
        in a policy's ``approvals``: ``{"type", "value", "name"}``) acting by
        ``officer_threshold`` of them, or - single-officer demo mode - the one officer
        derived from ``so_passphrase`` (:mod:`hsm_emulator.officers`); later opens ignore
        both (the officers change by their own quorum). ``allow_export`` is the
        partition setting that, together with a key's ``exportable`` attribute, permits
        :meth:`export_private_key_unsafe`. ``nvram`` is the HSM's monotonic counter, its
        tamper-resistant memory (:mod:`hsm_emulator.nvram`): a path for the sealed
        counter file (default ``<path>.nvram``) or a ``MonotonicCounter``. Opening
        verifies the audit chain and refuses a store behind the counter
        (``StoreRolledBack``) or not matching its sealed state (``TamperDetected``).
        """
        return cls(Boundary.open(path, unlock, so_passphrase=so_passphrase,
                                 officers=officers, officer_threshold=officer_threshold,
                                 allow_export=allow_export, clock=clock, decoders=decoders,
                                 nvram=nvram))

    def close(self) -> None:
        self._store.close()

    @contextmanager
    def locked(self) -> Iterator[None]:
        with self.boundary.locked():
            yield

    # -- keys (Keyring) ---------------------------------------------------------------

    def create_key(self, label: str, algorithm: KeyAlgorithm | str, *,
                   key_size: int | None = None,
                   attributes: KeyAttributes | dict[str, Any] | None = None,
                   policy: dict[str, Any] | None = None) -> KeyInfo:
        return self.keyring.create_key(label, algorithm, key_size=key_size,
                                       attributes=attributes, policy=policy)

    def derive_key(self, parent: str, path: str, label: str,
                   policy: dict[str, Any] | None = None) -> KeyInfo:
        return self.keyring.derive_key(parent, path, label, policy)

    def get_key(self, label: str) -> KeyInfo:
        return self.keyring.get_key(label)

    def list_keys(self) -> list[str]:
        return self.keyring.list_keys()

    def public_key(self, label: str, path: str = "") -> bytes:
        return self.keyring.public_key(label, path)

    def address(self, label: str, kind: AddressKind | str, network: Network | str,
                path: str = "") -> str:
        return self.keyring.address(label, kind, network, path)

    def attest(self, label: str) -> Attestation:
        return self.keyring.attest(label)

    def identity_public_key(self) -> bytes:
        return self.keyring.identity_public_key()

    # -- signing and approvals (ApprovalFlow, AutoTier) -------------------------------

    def begin(self, label: str, action: Action | str = Action.USE, payload: bytes = b"",
              payload_type: str = UNSPECIFIED, scheme: SignScheme | str | None = None, *,
              fee_cap: int | None = None, new_policy: dict[str, Any] | None = None,
              initiator: str = "", request_id: str | None = None,
              initiation: Approval | None = None) -> Challenge:
        return self.approvals.begin(label, action, payload, payload_type, scheme,
                                    fee_cap=fee_cap, new_policy=new_policy, initiator=initiator,
                                    request_id=request_id, initiation=initiation)

    def check_approval(self, request_id: str, approval: Approval) -> str:
        return self.approvals.check_approval(request_id, approval)

    def execute(self, request_id: str, approvals: Sequence[Approval] = (), *,
                payload: bytes | None = None) -> Execution:
        return self.approvals.execute(request_id, approvals, payload=payload)

    def approve(self, request_id: str, approval: Approval, approvals: Sequence[Approval] = (),
                *, payload: bytes | None = None) -> ApprovalOutcome:
        return self.approvals.approve(request_id, approval, approvals, payload=payload)

    def sign_now(self, label: str, payload: bytes, payload_type: str = UNSPECIFIED,
                 scheme: SignScheme | str | None = None, *,
                 request_id: str | None = None,
                 initiation: Approval | None = None) -> Execution:
        return self.auto.sign_now(label, payload, payload_type, scheme,
                                  request_id=request_id, initiation=initiation)

    def sign_batch(self, label: str, payloads: Sequence[bytes],
                   payload_type: str = UNSPECIFIED, scheme: SignScheme | str | None = None,
                   ) -> list[Execution]:
        return self.auto.sign_batch(label, payloads, payload_type, scheme)

    def dry_run(self, label: str, payload: bytes = b"", payload_type: str = UNSPECIFIED,
                action: Action | str = Action.USE, *, approvers: Sequence[str] = (),
                elapsed: float = 0.0) -> Evaluation:
        return self.approvals.dry_run(label, payload, payload_type, action,
                                      approvers=approvers, elapsed=elapsed)

    def request_status(self, request_id: str, approvals: Sequence[Approval] = (),
                       rejected: Sequence[str] = ()) -> Evaluation:
        return self.approvals.request_status(request_id, approvals, rejected)

    def cancel(self, request_id: str, reason: str = "") -> None:
        self.approvals.cancel(request_id, reason)

    def request_result(self, request_id: str) -> Execution:
        return self.approvals.request_result(request_id)

    def request_challenge(self, request_id: str) -> Challenge:
        return self.approvals.request_challenge(request_id)

    # -- audit (AuditTrail) -----------------------------------------------------------

    def audit_entries(self, start: int = 1, limit: int = 1000) -> list[AuditEntry]:
        return self.trail.audit_entries(start, limit)

    def audit_head(self) -> SignedHead:
        return self.trail.audit_head()

    def audit_checkpoints(self) -> list[SignedHead]:
        return self.trail.audit_checkpoints()
