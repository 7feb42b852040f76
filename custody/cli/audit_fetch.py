"""``custody audit-verify``: fetch the audit log over HTTP, verify it offline.

A log that verifies may still be an old one: an HSM whose store was rewound signs a
fresh head over its rewound log. So the command also witnesses the current head
(:mod:`custody.witness`, the file of ``CUSTODY_WITNESS_FILE``, shared with the
command-line approver): it refuses a head whose epoch or sequence number is lower than
one it saw before, or a different head at the same sequence number, and says when a
restore from backup started a new epoch.

The operator's mistakes are told apart in one line each: a key that is not a public key
(2), a token the server refuses (2), a damaged witness file (2), a server that does not
answer (3); a log that does not verify, or went back, is 1.
"""

from __future__ import annotations

import base64
import binascii

import httpx
from cryptography.hazmat.primitives.serialization import load_der_public_key

from hsm_emulator.audit import AuditEntry, SignedHead, verify_log

from ..console import LOCAL, REFUSED, UNREACHABLE, ProgressLines, console, fail
from ..settings import ClientSettings
from ..witness import WitnessRefused
from ..witness_file import WitnessFileError, observe

PAGE = 5000


def parse_key(hsm_key: str) -> bytes:
    """The base64 SPKI given with ``--hsm-key``, or exit 2 saying what is wrong with it."""
    try:
        der = base64.b64decode(hsm_key, validate=True)
        load_der_public_key(der)
    except (binascii.Error, ValueError):
        fail("--hsm-key is not a base64 public key (SPKI DER): give the HSM identity key "
             "(identityPublicKey of GET /v1/hsm, obtained out of band)", LOCAL)
    return der


def fetch(url: str, token: str) -> tuple[list[AuditEntry], list[SignedHead]]:
    entries: list[AuditEntry] = []
    heads: list[SignedHead] = []
    headers = {"Authorization": f"Bearer {token}"}
    out = console()
    with httpx.Client(base_url=url, timeout=30, headers=headers) as client, \
            ProgressLines(out) as progress:
        task = progress.add("fetching audit log")
        while True:
            try:
                r = client.get("/v1/audit", params={"start": len(entries) + 1, "limit": PAGE})
            except httpx.HTTPError as exc:
                fail(f"cannot reach {url}: {exc}", UNREACHABLE)
            if r.status_code in (401, 403):
                fail(f"{url} refused CUSTODY_TOKEN ({r.status_code}): {_detail(r)}", LOCAL)
            if r.status_code != 200:
                fail(f"{url} answered {r.status_code}: {_detail(r)}", LOCAL)
            page = r.json()
            entries += [AuditEntry.from_json(e) for e in page["entries"]]
            heads = [SignedHead.from_json(page["head"]),
                     *(SignedHead.from_json(h) for h in page["checkpoints"])]
            if len(page["entries"]) < PAGE:
                break
            progress.update(task, f"fetching audit log: {len(entries)} entries")
    return entries, heads


def fetch_and_verify(url: str, token: str, hsm_key: str) -> None:
    key = parse_key(hsm_key)
    entries, heads = fetch(url, token)
    report = verify_log(entries, heads, key)
    if not report.ok:
        console().print(f"[red]audit log NOT verified[/]: {report.problems}")
        fail(f"the audit log does not verify against that key: {report.problems[:1]}",
             REFUSED)
    witness(key, heads[0])
    console().print(f"[green]audit log verified[/]: {report.entries} entries, "
                    f"{len(heads)} signed heads")


def witness(key: bytes, head: SignedHead) -> None:
    """Check the current head against what this user saw of the HSM before, and
    remember it; exit 1 if it went back."""
    try:
        seen = observe(ClientSettings().witness_file, key, [head.to_json()], {})
    except WitnessRefused as exc:
        console().print(f"[red]audit log REFUSED[/]: {exc.reason}")
        fail(f"refused: {exc.reason}", REFUSED)
    except WitnessFileError as exc:
        fail(exc.reason, LOCAL)
    for note in seen.notes:
        console().print(f"[yellow]note[/]: {note}")


def _detail(r: httpx.Response) -> str:
    try:
        return str(r.json().get("detail", r.text))[:200]
    except ValueError:
        return r.text[:200]
