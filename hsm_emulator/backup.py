"""A partition backup: the whole HSM state, encrypted under a key split among officers.

Seeds 001 and 004 ask for backups "following the six-eyes principle", so that "keys
cannot be lost". A backup holds every sealed record (partition with the identity key and
officers, keys with their policies and attributes, requests), the velocity ledger with
its running totals, the audit log with its signed checkpoints, and the counter value. It
is encrypted with AES-256-GCM under a fresh 256-bit key that exists only while the backup
is made: the key is split into SLIP-39 shares (Trezor's reference, ``shamir-mnemonic``;
https://github.com/satoshilabs/slips/blob/master/slip-0039.md), M of N, one mnemonic per
officer, handed out once and never stored. Opening it needs M shares.

File format (version 1)::

    b"SKA-BACKUP-v1\\n" | header length (4 bytes, big-endian) | header (canonical JSON:
    hsmId, createdAt, threshold, shares, counter) | nonce (12) | AES-GCM(key, nonce,
    zlib(JSON content), aad = magic + header)

The header is authenticated as associated data, so any byte changed anywhere is refused.
"""

from __future__ import annotations

import json
import secrets
import zlib
from dataclasses import dataclass
from typing import Any

import shamir_mnemonic
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .canonical import canonical_json
from .errors import BackupInvalid
from .store import Store

MAGIC = b"SKA-BACKUP-v1\n"
_NONCE = 12
_MAX_HEADER = 4096
#: Most shares a ceremony may present (SLIP-39: at most 16 in a group).
MAX_SHARES = 16


@dataclass(frozen=True)
class Backup:
    """A made backup: the file, and the share mnemonics (one per officer, shown once)."""

    data: bytes
    mnemonics: tuple[str, ...]


def snapshot(store: Store) -> dict[str, Any]:
    """Everything the store holds, as plain JSON values (records decrypted: the backup
    re-encrypts them as a whole)."""
    kinds = [str(r[0]) for r in store.execute("SELECT DISTINCT kind FROM records ORDER BY kind")]
    records = [{"kind": kind, "id": ident, "body": store.get(kind, ident)}
               for kind in kinds for ident in store.ids(kind)]
    value = store.counter_value
    return {
        "records": records,
        "spends": [list(r) for r in store.execute(
            "SELECT family, asset, amount, at, token, cum_all, cum_token FROM spends "
            "ORDER BY rowid")],
        "audit": [list(r) for r in store.execute(
            "SELECT seq, at, event, prev, hash FROM audit ORDER BY seq")],
        "auditHeads": [list(r) for r in store.execute(
            "SELECT seq, body FROM audit_heads ORDER BY seq")],
        "counter": {"epoch": value.epoch, "count": value.count},
    }


def make_backup(content: dict[str, Any], header: dict[str, Any], threshold: int,
                shares: int) -> Backup:
    """Encrypt ``content`` under a fresh key and split the key ``threshold`` of ``shares``."""
    key = secrets.token_bytes(32)
    groups = shamir_mnemonic.generate_mnemonics(1, [(threshold, shares)], key)
    head = canonical_json({**header, "threshold": threshold, "shares": shares})
    nonce = secrets.token_bytes(_NONCE)
    plain = zlib.compress(json.dumps(content, sort_keys=True, separators=(",", ":")).encode())
    sealed = AESGCM(key).encrypt(nonce, plain, MAGIC + head)
    data = MAGIC + len(head).to_bytes(4, "big") + head + nonce + sealed
    return Backup(data, tuple(groups[0]))


def read_header(data: bytes) -> dict[str, Any]:
    """The backup's header (not yet authenticated: :func:`open_backup` does that)."""
    header, _, _ = _split(data)
    doc: dict[str, Any] = json.loads(header)
    return doc


def open_backup(data: bytes, mnemonics: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and content of a backup, with ``mnemonics`` (at least its threshold of
    its shares); :class:`BackupInvalid` says why not."""
    header, nonce, sealed = _split(data)
    if not 1 <= len(mnemonics) <= MAX_SHARES or not all(isinstance(m, str) for m in mnemonics):
        raise BackupInvalid(f"give 1 to {MAX_SHARES} share mnemonics")
    try:
        key = shamir_mnemonic.combine_mnemonics(mnemonics)
    except (shamir_mnemonic.MnemonicError, ValueError) as exc:
        raise BackupInvalid(f"the shares do not combine: {exc}") from None
    try:
        plain = AESGCM(key).decrypt(nonce, sealed, MAGIC + header)
    except (InvalidTag, ValueError):
        raise BackupInvalid("the backup does not open with these shares: it was altered, "
                            "or the shares are another backup's") from None
    try:
        content: dict[str, Any] = json.loads(zlib.decompress(plain))
        doc: dict[str, Any] = json.loads(header)
    except (zlib.error, ValueError):  # pragma: no cover - authenticated, so ours
        raise BackupInvalid("the backup's content is unreadable") from None
    return doc, content


def _split(data: bytes) -> tuple[bytes, bytes, bytes]:
    if not isinstance(data, bytes) or not data.startswith(MAGIC):
        raise BackupInvalid("not an SKA backup (version 1)")
    at = len(MAGIC)
    size = int.from_bytes(data[at:at + 4], "big")
    if not 0 < size <= _MAX_HEADER or len(data) < at + 4 + size + _NONCE + 16:
        raise BackupInvalid("the backup is truncated or its header is malformed")
    header = data[at + 4:at + 4 + size]
    try:
        if not isinstance(json.loads(header), dict):
            raise ValueError
    except ValueError:
        raise BackupInvalid("the backup's header is malformed") from None
    rest = data[at + 4 + size:]
    return header, rest[:_NONCE], rest[_NONCE:]
