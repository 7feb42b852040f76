"""``HsmClient``: the one narrow interface in front of the HSM.

Two implementations: :class:`LocalHsmClient` (in-process, the embedded default) and
:class:`hsm_emulator.remote.RemoteHsmClient` (the HSM as its own process). Callers -
the broker, the CLI - see public keys, challenges and signatures, never key bytes
(except through the deliberately named ``export_private_key_unsafe``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from .addresses import AddressKind, Network
from .audit import AuditEntry, SignedHead
from .challenge import Challenge
from .evaluate import Evaluation
from .flow import Approval
from .hsm import Hsm
from .model import Action, KeyAlgorithm, KeyAttributes, SignScheme
from .results import Attestation, Execution, KeyInfo


@runtime_checkable
class HsmClient(Protocol):
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

    def invalidate_key(self, label: str) -> KeyInfo: ...

    def restore_key(self, label: str, so_passphrase: str) -> KeyInfo: ...

    def destroy_key(self, label: str, so_passphrase: str) -> KeyInfo: ...

    def export_private_key_unsafe(self, label: str, so_passphrase: str) -> bytes: ...

    def attest(self, label: str) -> Attestation: ...

    def identity_public_key(self) -> bytes: ...

    def begin(self, label: str, action: Action | str = Action.USE, payload: bytes = b"",
              payload_type: str = "UNSPECIFIED", scheme: SignScheme | str | None = None, *,
              fee_cap: int | None = None, new_policy: dict[str, Any] | None = None,
              initiator: str = "", request_id: str | None = None,
              initiation: Approval | None = None) -> Challenge: ...

    def check_approval(self, request_id: str, approval: Approval) -> str: ...

    def execute(self, request_id: str, approvals: Sequence[Approval] = (), *,
                payload: bytes | None = None) -> Execution: ...

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

    def audit_entries(self, start: int = 1, limit: int = 1000) -> list[AuditEntry]: ...

    def audit_head(self) -> SignedHead: ...

    def audit_checkpoints(self) -> list[SignedHead]: ...


    def close(self) -> None: ...


#: Names of the calls an HsmClient forwards: the whole surface, nothing else.
CALLS = tuple(
    name for name in HsmClient.__dict__
    if not name.startswith("_") and callable(getattr(HsmClient, name)) and name != "close"
)  # ``close`` is the client's own lifecycle, never forwarded to the HSM


def local_client(hsm: Hsm) -> HsmClient:
    """The in-process HSM, typed as the narrow interface: the embedded default.

    :class:`Hsm` implements every call itself; handing it out as ``HsmClient`` keeps
    callers (checked by mypy) off its internals, as they are with the remote client.
    """
    return hsm
