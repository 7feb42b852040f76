"""Where a command-line witness keeps its memory: one small JSON file per user.

``~/.custody/witness.json`` unless ``CUSTODY_WITNESS_FILE`` says otherwise, shared by
the command-line approver (every approval key of this user) and ``custody
audit-verify``: what one of them saw binds the others. Per HSM (by the SHA-256 of its
identity key, the fingerprint approvers pin) it holds a :class:`custody.witness.Memory`::

    {"format": "ska-witness", "version": 1,
     "hsms": {"<sha256 hex>": {"epoch": 0, "head": {"epoch": 0, "seq": 41, "hash": "..."}}}}

An update reads, checks and writes under an exclusive lock on ``<file>.lock`` (two
commands at once cannot lose each other's head), and writes atomically (a temporary
file, fsync, rename, fsync of the directory), so a crash leaves the old memory or the
new one. A damaged file is refused, never reset: it is the only evidence of what the
HSM showed before.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hsm_emulator.audit import SignedHead

from .witness import (
    HeadMark,
    Memory,
    Seen,
    WitnessRefused,
    check_challenge,
    witness_epochs,
    witness_head,
)

FORMAT = "ska-witness"
VERSION = 1


class WitnessFileError(Exception):
    """The witness file cannot be read or written (a local problem)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def update(path: Path, fingerprint: str, see: Callable[[Memory | None], Seen]) -> Seen:
    """Apply ``see`` to the memory of the HSM ``fingerprint`` and keep what it returns.

    ``see`` raises (:class:`~custody.witness.WitnessRefused`) to refuse: then nothing is
    written."""
    with _locked(path):
        doc = _read(path)
        raw = doc["hsms"].get(fingerprint)
        try:
            memory = None if raw is None else Memory.from_json(raw)
        except ValueError:
            raise WitnessFileError(f"{path}: the entry for HSM {fingerprint[:16]} is "
                                   "damaged; inspect it (it is your record of what this "
                                   "HSM showed), do not just delete it") from None
        seen = see(memory)
        if seen.memory != memory:
            doc["hsms"][fingerprint] = seen.memory.to_json()
            _write(path, doc)
        return seen


@dataclass(frozen=True)
class Observed:
    """What a listing showed: ``notes`` to tell the user (a restore), and the tasks whose
    challenge is refused (request id -> why)."""

    notes: tuple[str, ...]
    refused: dict[str, str]


def observe(path: Path, hsm_public_der: bytes, heads: Sequence[Any],
            epochs: Mapping[str, int]) -> Observed:
    """Witness one task listing: every signed audit head the server sent with it (in
    order), then the epochs of its verified challenges (request id -> epoch).

    A head that is missing, malformed, not signed by this HSM or that goes back raises
    :class:`~custody.witness.WitnessRefused` and nothing is remembered; a challenge from
    before the remembered epoch is refused on its own (in ``refused``)."""
    marks = [HeadMark.of(_verified(h, hsm_public_der)) for h in heads]
    if not marks:
        raise WitnessRefused("the server sent no signed audit head with the task list, so "
                             "this client cannot check that the HSM's state did not go "
                             "back; do not approve")

    def see(memory: Memory | None) -> Seen:
        notes: list[str] = []
        for mark in marks:
            seen = witness_head(memory, mark)
            memory, notes = seen.memory, notes + list(seen.notes)
        assert memory is not None
        seen = witness_epochs(memory, epochs.values())
        return Seen(seen.memory, (*notes, *seen.notes))

    fingerprint = hashlib.sha256(hsm_public_der).hexdigest()
    seen = update(path, fingerprint, see)
    refused: dict[str, str] = {}
    for request_id, epoch in epochs.items():
        try:
            check_challenge(seen.memory, request_id, epoch)
        except WitnessRefused as exc:
            refused[request_id] = exc.reason
    return Observed(seen.notes, refused)


def _verified(raw: Any, hsm_public_der: bytes) -> SignedHead:
    try:
        head = SignedHead.from_json(raw)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise WitnessRefused("the server sent a malformed audit head; do not approve"
                             ) from None
    if not head.verify(hsm_public_der):
        raise WitnessRefused(f"the audit head (seq {head.seq}) was not signed by the "
                             "pinned HSM or was altered; do not approve")
    return head


def load(path: Path, fingerprint: str) -> Memory | None:
    """The memory of one HSM, or None (never seen)."""
    raw = _read(path)["hsms"].get(fingerprint)
    try:
        return None if raw is None else Memory.from_json(raw)
    except ValueError:
        raise WitnessFileError(f"{path}: the entry for HSM {fingerprint[:16]} is damaged"
                               ) from None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise WitnessFileError(f"cannot use the witness file {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {"format": FORMAT, "version": VERSION, "hsms": {}}
    except OSError as exc:
        raise WitnessFileError(f"cannot read the witness file {path}: {exc.strerror}"
                               ) from None
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get(
            "version") != VERSION or not isinstance(doc.get("hsms"), dict):
        raise WitnessFileError(f"the witness file {path} is damaged or of another format; "
                               "inspect it (it is your record of what each HSM showed), "
                               "do not just delete it")
    return doc


def _write(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        dirfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
    except OSError as exc:
        raise WitnessFileError(f"cannot write the witness file {path}: {exc.strerror}"
                               ) from None
