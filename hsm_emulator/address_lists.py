"""Named address lists: allowlists too large for a policy document, bound to it by digest.

An inline ``destinations`` array holds at most :data:`~hsm_emulator.policy.MAX_LIST`
addresses, and a 100,000-address array would not fit a 4 MiB socket frame or a 1 MiB
API body anyway. A larger allowlist enters the HSM as a **list object**, uploaded in
chunks (``address_list_begin``, ``address_list_add`` per chunk of at most
:data:`MAX_CHUNK`, ``address_list_finish``), and a token refers to it by digest::

    "conditions": {"destinations": {"list": "<sha256 hex>"}, ...}

beside the inline array form, which keeps working.

**Canonical form and digest.** Each address is validated (1-256 printable ASCII
characters, no space) and normalised exactly as an inline one is
(:func:`~hsm_emulator.policy.normalize_destination`: hex addresses lower-cased). The
list is the *set* of normalised addresses - order and repeats do not matter. Its digest
is SHA-256 over ``b"ska-address-list-v1\\n"`` followed by each address of the set, sorted
by code point (= byte order: ASCII only), as ASCII, each followed by ``b"\\n"``. So
``{"b", "A"}`` is ``sha256(b"ska-address-list-v1\\nA\\nb\\n")``; no address can contain
the separator.

**Storage.** Chunks and list headers are sealed records of the HSM's store, so the
anti-rollback seal covers them like any key record: an edited, swapped or rewound list
record stops the HSM from opening (``hsm.tamper_detected`` /
``hsm.store_rolled_back``). When a list is loaded its digest is recomputed from its
chunks and compared with the header's (defence in depth). A finished list is immutable:
a different set has a different digest, so changing a key's allowlist is a policy
``modify``, which the key's ``ruleModify`` approvers must approve; the challenge shows
the list's digest and size, and how many addresses it adds and removes against the
same tier's list of the current policy.

**Who may upload, and the attacker's view (a compromised broker).** Uploading changes
no policy, so it needs no approval; binding a list into a policy does.

* Can it make an approved policy's allowlist mean another set? No: the digest is in the
  policy the approvers signed, a finished list never changes, and a list that is not
  held completely (an unfinished upload, an unknown digest) makes the policy
  ``PolicyInvalid`` at ``create_key`` and ``modify`` - it never reads as "no allowlist".
* Can it exhaust the HSM's memory or disk? Bounded: a chunk holds at most
  :data:`MAX_CHUNK` addresses; a list at most :data:`MAX_ADDRESSES`; at most
  :data:`MAX_OPEN_UPLOADS` uploads are unfinished at a time (``address_list_discard``
  frees one); and every list and upload together hold at most :data:`MAX_HELD`
  addresses (about 70 bytes each sealed on disk, about 100 in memory once loaded). A
  broker that fills these denies the list feature - denial of service, which it could
  do anyway - and finished lists are not deleted (deleting one a pending ``modify`` names
  would need an officer's call; not built yet).
* Can it confuse the HSM with a hostile chunk? A bad address, an oversize chunk, an
  unknown upload id, a chunk out of order or a finished upload is refused with no state
  change; a chunk sent again under its index (a retry after a lost reply) is accepted
  only if it is the same set, and changes nothing.

Lookups are one hash-set membership test per recipient: a list is loaded once into a
``frozenset`` (shared by every policy naming it) when a policy naming it is parsed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .errors import InvalidInput
from .policy import normalize_destination

#: Addresses per ``address_list_add`` chunk: about 0.4 MB of JSON, well under the 4 MiB
#: socket frame and the API's 1 MiB body.
MAX_CHUNK = 5_000
#: Addresses per list.
MAX_ADDRESSES = 1_000_000
#: Uploads begun and neither finished nor discarded.
MAX_OPEN_UPLOADS = 4
#: Addresses held by every list and unfinished upload together.
MAX_HELD = 4_000_000
#: The longest address (as for inline ``destinations``).
MAX_ADDRESS = 256

DIGEST_CONTEXT = b"ska-address-list-v1\n"
DIGEST_RE = re.compile(r"[0-9a-f]{64}")
UPLOAD_RE = re.compile(r"[0-9a-f]{32}")
_PRINTABLE = re.compile(rf"[\x21-\x7e]{{1,{MAX_ADDRESS}}}")


def normalize_address(value: Any, where: str) -> str:
    """One list entry, validated and normalised as an inline ``destinations`` entry is;
    printable ASCII without spaces, so the digest's separator cannot occur in it."""
    if not isinstance(value, str) or not _PRINTABLE.fullmatch(value):
        raise InvalidInput(f"{where}: an address is 1-{MAX_ADDRESS} printable ASCII "
                           "characters without spaces")
    return normalize_destination(value)


def normalize_chunk(addresses: Any) -> list[str]:
    """A chunk's addresses, normalised, de-duplicated and sorted; refused whole if any
    entry is bad or there are more than :data:`MAX_CHUNK`."""
    if not isinstance(addresses, list | tuple):
        raise InvalidInput("addresses: must be a list of strings")
    if not 0 < len(addresses) <= MAX_CHUNK:
        raise InvalidInput(f"addresses: 1-{MAX_CHUNK} per chunk, not {len(addresses)}")
    return sorted({normalize_address(a, f"addresses[{i}]") for i, a in enumerate(addresses)})


def list_digest(addresses: Iterable[str]) -> str:
    """The digest of a set of *normalised* addresses (module docstring)."""
    h = hashlib.sha256(DIGEST_CONTEXT)
    for address in sorted(set(addresses)):
        h.update(address.encode("ascii") + b"\n")
    return h.hexdigest()


@dataclass(frozen=True)
class AddressListInfo:
    """An upload in progress (``digest`` None) or a finished list: ``upload_id`` is the
    upload it came from, ``size`` its distinct addresses so far, ``chunks`` how many
    chunks were added."""

    upload_id: str
    size: int
    chunks: int
    digest: str | None = None

    @property
    def finished(self) -> bool:
        return self.digest is not None

    def to_json(self) -> dict[str, Any]:
        return {"uploadId": self.upload_id, "size": self.size, "chunks": self.chunks,
                "digest": self.digest}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> AddressListInfo:
        digest = doc["digest"]
        if not (isinstance(doc["uploadId"], str) and isinstance(doc["size"], int) and
                isinstance(doc["chunks"], int) and (digest is None or isinstance(digest, str))):
            raise ValueError("malformed address list info")
        return cls(doc["uploadId"], doc["size"], doc["chunks"], digest)
