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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .audit import AuditLog
from .clock import Clock, SystemClock
from .decoders import DecoderRegistry, default_registry
from .errors import AuthenticationFailed, HsmError, InvalidInput
from .identity import IdentityKey
from .ledger import VelocityLedger
from .list_store import AddressListStore
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
        if partition is None:
            if so_passphrase is None or len(so_passphrase) < 8:
                store.close()
                raise InvalidInput("a new HSM needs a security officer passphrase "
                                   "(at least 8 characters)")
            salt = secrets.token_bytes(16)
            partition = {
                "identity": IdentityKey.generate().to_der().hex(),
                "soSalt": salt.hex(),
                "soHash": so_hash(so_passphrase, salt).hex(),
                "allowExport": allow_export,
                "createdAt": clock.now(),
            }
            with store.transaction():
                store.put("partition", "config", partition)
        elif allow_export and not partition["allowExport"]:
            store.close()
            raise InvalidInput("allow_export is a partition setting fixed when the HSM is "
                               "initialised; this HSM does not allow export")
        boundary = cls(store, clock, decoders or default_registry(), partition)
        try:
            boundary.audit.verify_own()
        except HsmError:
            store.close()
            raise
        if boundary.audit.entries(1, 1) == []:
            boundary.audited({"op": "hsm.init", "hsmId": boundary.hsm_id,
                              "allowExport": partition["allowExport"]}, lambda: None)
        return boundary

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

    def _audit_refusal(self, event: dict[str, Any], exc: HsmError) -> None:
        with self.store.transaction():
            self.audit.append(self.clock.now(), {**event, "result": "refused",
                                                 "code": exc.code, "reason": exc.reason})

    def _reset_after_rollback(self) -> None:
        self.audit.reload()
        self.keys.clear()

    def check_so(self, passphrase: str) -> None:
        """Refuse unless ``passphrase`` is the security officer's."""
        expected = bytes.fromhex(self.partition["soHash"])
        got = so_hash(passphrase, bytes.fromhex(self.partition["soSalt"]))
        if not hmac.compare_digest(expected, got):
            raise AuthenticationFailed("security officer authentication failed")


def so_hash(passphrase: str, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, n=2**14, r=8, p=1).derive(passphrase.encode())
