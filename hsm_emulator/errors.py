"""One error root for the HSM, each error with a stable code.

The broker maps ``HsmError.code`` to HTTP problem types; clients show ``reason``.
Every refusal the HSM makes is one of these, never a bare built-in exception.
"""

from __future__ import annotations


class HsmError(Exception):
    """Root of every error the HSM raises. ``code`` is stable across releases."""

    code = "hsm.error"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return f"[{self.code}] {self.reason}"


class InvalidInput(HsmError):
    """A caller's argument is malformed (bad path, label, base64, size...)."""

    code = "hsm.invalid_input"


class PolicyInvalid(HsmError):
    """A policy document is malformed; ``field`` names the offending JSON path."""

    code = "hsm.policy_invalid"

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field


class KeyNotFound(HsmError):
    code = "hsm.key_not_found"


class KeyExists(HsmError):
    code = "hsm.key_exists"


class AttributeDenied(HsmError):
    """The key's attributes (sign, derive, exportable...) forbid the operation."""

    code = "hsm.attribute_denied"


class KeyBlocked(HsmError):
    code = "hsm.key_blocked"


class KeyInvalidated(HsmError):
    code = "hsm.key_invalidated"


class RequestNotFound(HsmError):
    code = "hsm.request_not_found"


class RequestExists(HsmError):
    """The caller chose a request id the HSM already holds: its first call went through
    (the caller asks for that request's challenge or result instead of a second one)."""

    code = "hsm.request_exists"


class RequestClosed(HsmError):
    """The request was already executed, cancelled or expired: nothing is done twice."""

    code = "hsm.request_closed"


class RequestExpired(RequestClosed):
    """The request's challenge expired before it was executed: sign a fresh one."""

    code = "hsm.request_expired"


class ApprovalRefused(HsmError):
    """An approval failed verification (signature, group, challenge, time, replay)."""

    code = "hsm.approval_refused"


class DuplicateApprover(ApprovalRefused):
    """One approver (one key, whatever its encoding) signed twice in one set: a quorum
    counts people, so the set is refused rather than silently counted once."""

    code = "hsm.duplicate_approver"


class PolicyNotMet(HsmError):
    """No token of the rule is satisfied; ``missing`` says what each token still needs."""

    code = "hsm.policy_not_met"

    def __init__(self, reason: str, missing: tuple[str, ...] = ()) -> None:
        super().__init__(reason)
        self.missing = missing


class DecodeError(HsmError):
    """A payload could not be decoded by the registered decoder for its type."""

    code = "hsm.decode_error"


class NetworkNotAllowed(HsmError):
    """A chain payload for a network the key's policy does not name."""

    code = "hsm.network_not_allowed"


class IntentMismatch(HsmError):
    """A rebuilt payload no longer matches the approved intent (or exceeds its fee cap)."""

    code = "hsm.intent_mismatch"


class CredentialInvalid(HsmError):
    """An approver credential (certificate or public key) cannot be parsed or is unsupported."""

    code = "hsm.credential_invalid"


class DerivationError(HsmError):
    code = "hsm.derivation_error"


class StoreLocked(HsmError):
    """The key store could not be opened: wrong passphrase or wrong sealed key."""

    code = "hsm.store_locked"


class TamperDetected(HsmError):
    """A stored record failed authentication: it was edited, swapped or corrupted."""

    code = "hsm.tamper_detected"


class StoreRolledBack(TamperDetected):
    """The store is older than the HSM's monotonic counter says: a copy put back, or the
    counter's record of it gone. Refused at open (:mod:`hsm_emulator.nvram`)."""

    code = "hsm.store_rolled_back"


class CounterFailure(HsmError):
    """The HSM's monotonic counter could not be advanced, so no further state change is
    made until it can be (the store would otherwise run ahead of it)."""

    code = "hsm.counter_failure"


class AuditFailure(HsmError):
    """The audit entry could not be written, so the operation was refused (fail closed)."""

    code = "hsm.audit_failure"


class AuthenticationFailed(HsmError):
    """A caller of the HSM (client, security officer) failed authentication."""

    code = "hsm.authentication_failed"


class TransportError(HsmError):
    """The remote HSM could not be reached or answered out of protocol."""

    code = "hsm.transport_error"


class BackupInvalid(HsmError):
    """A backup could not be opened: not a backup, altered (any byte), or the shares
    given are too few, malformed, or not this backup's."""

    code = "hsm.backup_invalid"


class RestoreRefused(HsmError):
    """A restore was refused: the HSM is not empty (a restore never merges state)."""

    code = "hsm.restore_refused"
