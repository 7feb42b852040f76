"""``custody list upload FILE``: an allowlist too large for a policy, into the HSM.

The file holds one address per line (blank lines and ``#`` comments skipped). The
command checks and normalises every address as the HSM will, computes the list's digest
itself, uploads it in chunks through ``/v1/address-lists`` (a chunk whose answer was lost
is sent again under its index, which the HSM accepts only as the same set) and refuses
unless the HSM's digest is the one it computed - so the digest it prints, which a
policy's ``destinations: {"list": ...}`` or a tier configuration's ``allowlist`` then
names, is that of the file's addresses, whatever the server in between did.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import typer

from hsm_emulator.address_lists import MAX_ADDRESSES, MAX_CHUNK, list_digest, normalize_address
from hsm_emulator.errors import InvalidInput

from ..console import LOCAL, REFUSED, UNREACHABLE, fail


def read_addresses(path: Path) -> list[str]:
    """The file's distinct normalised addresses, sorted; exit 2 naming a bad line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {path}: {exc}", LOCAL)
    out: set[str] = set()
    for n, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            out.add(normalize_address(text, f"{path}:{n}"))
        except InvalidInput as exc:
            fail(exc.reason, LOCAL)
    if not out or len(out) > MAX_ADDRESSES:
        fail(f"{path}: 1 to {MAX_ADDRESSES} addresses, not {len(out)}", LOCAL)
    return sorted(out)


#: JSON bytes per chunk: half the API's 1 MiB body limit, whatever the addresses' length
#: (5,000 of 256 characters would be 1.3 MB).
CHUNK_BYTES = 512 * 1024


def chunks(addresses: list[str], most: int = MAX_CHUNK) -> list[list[str]]:
    """``addresses`` cut into chunks of at most ``most`` entries and :data:`CHUNK_BYTES`."""
    out: list[list[str]] = [[]]
    size = 0
    for a in addresses:
        cost = len(a) + 4  # quotes, comma, space
        if len(out[-1]) >= most or (out[-1] and size + cost > CHUNK_BYTES):
            out.append([])
            size = 0
        out[-1].append(a)
        size += cost
    return out


def upload(url: str, token: str, addresses: list[str], chunk: int = MAX_CHUNK
           ) -> dict[str, Any]:
    """Begin, put every chunk, finish; the HSM's answer for the finished list."""
    with httpx.Client(base_url=url, timeout=60,
                      headers={"Authorization": f"Bearer {token}"}) as client:
        upload_id = _send(client, "POST", "/v1/address-lists")["uploadId"]
        sent = 0
        for index, part in enumerate(chunks(addresses, chunk)):
            _send(client, "PUT", f"/v1/address-lists/{upload_id}/chunks/{index}",
                  {"addresses": part})
            sent += len(part)
            typer.echo(f"uploaded {sent} of {len(addresses)}", err=True)
        return _send(client, "POST", f"/v1/address-lists/{upload_id}/finish")


def _send(client: httpx.Client, method: str, path: str,
          body: dict[str, Any] | None = None) -> dict[str, Any]:
    for attempt in (1, 2):  # every call here may be sent again: the HSM answers the same
        try:
            r = client.request(method, path, json=body)
            break
        except httpx.HTTPError as exc:
            if attempt == 2:
                fail(f"cannot reach {client.base_url}: {exc}", UNREACHABLE)
    if r.status_code in (401, 403):
        fail(f"the server refused CUSTODY_TOKEN ({r.status_code}): a key_admin's token",
             LOCAL)
    if r.status_code >= 300:
        fail(f"{method} {path} answered {r.status_code}: {r.text[:300]}", REFUSED)
    doc: dict[str, Any] = r.json()
    return doc


def upload_file(url: str, token: str, path: Path, chunk: int) -> str:
    """Upload ``path``'s addresses; the digest, checked against the one computed here."""
    addresses = read_addresses(path)
    expected = list_digest(addresses)
    done = upload(url, token, addresses, chunk)
    if done.get("digest") != expected or done.get("size") != len(addresses):
        fail(f"the HSM's list {done.get('digest')} ({done.get('size')} addresses) is not "
             f"the file's {expected} ({len(addresses)}): do not use it", REFUSED)
    typer.echo(f"address list {expected}: {len(addresses)} addresses", err=True)
    return expected
