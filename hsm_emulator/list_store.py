"""Address lists in the HSM's store: uploads, their chunks, finished lists, and the
policies that name them (format, bounds and threat model: :mod:`.address_lists`).

Sealed records, all written in the caller's store transaction:

* ``addrlist-upload`` / upload id: ``received`` (addresses added, repeats across chunks
  counted), ``chunks``, ``createdAt``, ``digest`` (set when finished);
* ``addrlist-chunk`` / ``<upload id>.<index>``: the chunk's sorted, distinct addresses;
* ``addrlist`` / digest: the finished list's ``uploadId``, ``size`` and ``chunks``;
* ``addrlist-usage`` / ``total``: ``held`` addresses and ``open`` uploads, so the bounds
  are checked without reading every upload.
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any

from .address_lists import (
    DIGEST_RE,
    MAX_ADDRESSES,
    MAX_HELD,
    MAX_OPEN_UPLOADS,
    UPLOAD_RE,
    AddressListInfo,
    list_digest,
    normalize_chunk,
)
from .errors import InvalidInput, PolicyInvalid, TamperDetected
from .policy import RULE_FIELDS, Policy, Rule, Token, parse_policy
from .store import Store

_UPLOAD, _CHUNK, _LIST, _USAGE = "addrlist-upload", "addrlist-chunk", "addrlist", "addrlist-usage"


class AddressListStore:
    """Uploads and finished lists; finished lists are loaded once into a frozenset."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._loaded: dict[str, frozenset[str]] = {}

    # -- uploads ------------------------------------------------------------------------

    def begin(self, now: float) -> AddressListInfo:
        usage = self._usage()
        if usage["open"] >= MAX_OPEN_UPLOADS:
            raise InvalidInput(f"at most {MAX_OPEN_UPLOADS} address list uploads may be "
                               "unfinished: finish or discard one first")
        upload_id = secrets.token_hex(16)
        self._store.put(_UPLOAD, upload_id, {"received": 0, "chunks": 0, "createdAt": now,
                                             "digest": None})
        self._set_usage(usage["held"], usage["open"] + 1)
        return AddressListInfo(upload_id, 0, 0)

    def add(self, upload_id: str, index: int, addresses: Any) -> AddressListInfo:
        """Add chunk ``index`` (the next one: 0, 1, ...); the same chunk again under an
        index already added changes nothing, another one there is refused."""
        up = self._open_upload(upload_id)
        chunk = normalize_chunk(addresses)
        if isinstance(index, bool) or not isinstance(index, int) or not (
                0 <= index <= up["chunks"]):
            raise InvalidInput(f"index: the next chunk of this upload is {up['chunks']}")
        if index < up["chunks"]:
            if self._chunk(upload_id, index) != chunk:
                raise InvalidInput(f"chunk {index} of this upload was added with other "
                                   "addresses: an upload's chunks never change")
            return AddressListInfo(upload_id, up["received"], up["chunks"])
        usage = self._usage()
        if up["received"] + len(chunk) > MAX_ADDRESSES:
            raise InvalidInput(f"a list holds at most {MAX_ADDRESSES} addresses")
        if usage["held"] + len(chunk) > MAX_HELD:
            raise InvalidInput(f"the HSM holds at most {MAX_HELD} list addresses in all")
        self._store.put(_CHUNK, f"{upload_id}.{index}", {"addresses": chunk})
        up.update(received=up["received"] + len(chunk), chunks=index + 1)
        self._store.put(_UPLOAD, upload_id, up)
        self._set_usage(usage["held"] + len(chunk), usage["open"])
        return AddressListInfo(upload_id, up["received"], up["chunks"])

    def finish(self, upload_id: str) -> AddressListInfo:
        """Close the upload; its set becomes the list of its digest. Finishing again
        answers the same list; a set already held is that list (this upload's chunks
        are dropped)."""
        up = self._upload(upload_id)
        if up["digest"] is not None:
            return self.info(up["digest"])
        if up["chunks"] == 0:
            raise InvalidInput("an address list needs at least one address")
        addresses = self._addresses(upload_id, up["chunks"])
        digest = list_digest(addresses)
        usage = self._usage()
        held = usage["held"]
        existing = self._store.get(_LIST, digest)
        if existing is None:
            self._store.put(_LIST, digest, {"uploadId": upload_id, "size": len(addresses),
                                            "chunks": up["chunks"]})
        else:
            for i in range(up["chunks"]):
                self._store.delete(_CHUNK, f"{upload_id}.{i}")
            held -= up["received"]
            up["received"] = 0
        up["digest"] = digest
        self._store.put(_UPLOAD, upload_id, up)
        self._set_usage(held, usage["open"] - 1)
        return self.info(digest)

    def discard(self, upload_id: str) -> None:
        up = self._open_upload(upload_id)
        for i in range(up["chunks"]):
            self._store.delete(_CHUNK, f"{upload_id}.{i}")
        self._store.delete(_UPLOAD, upload_id)
        usage = self._usage()
        self._set_usage(usage["held"] - up["received"], usage["open"] - 1)

    def info(self, list_id: str) -> AddressListInfo:
        """A finished list by digest, or an upload by id."""
        if isinstance(list_id, str) and DIGEST_RE.fullmatch(list_id):
            rec = self._store.get(_LIST, list_id)
            if rec is None:
                raise InvalidInput(f"no finished address list {list_id}")
            return AddressListInfo(rec["uploadId"], rec["size"], rec["chunks"], list_id)
        up = self._upload(list_id)
        if up["digest"] is not None:
            return self.info(up["digest"])
        return AddressListInfo(list_id, up["received"], up["chunks"])

    # -- lists in policies ----------------------------------------------------------------

    def addresses(self, digest: str) -> frozenset[str] | None:
        """The finished list of ``digest``, loaded once; None if not held (completely)."""
        loaded = self._loaded.get(digest)
        if loaded is not None:
            return loaded
        rec = self._store.get(_LIST, digest) if DIGEST_RE.fullmatch(digest) else None
        if rec is None:
            return None
        addresses = self._addresses(rec["uploadId"], rec["chunks"])
        if len(addresses) != rec["size"] or list_digest(addresses) != digest:
            raise TamperDetected(f"address list {digest} does not match its digest")
        self._loaded[digest] = addresses
        return addresses

    def parse_policy(self, doc: Any) -> Policy:
        """:func:`~hsm_emulator.policy.parse_policy`, with every list the policy names
        resolved: one not held completely makes the policy invalid."""
        return self.resolve(parse_policy(doc))

    def resolve(self, policy: Policy) -> Policy:
        rules = []
        for action, rule in policy.rules:
            path = f"policy.{RULE_FIELDS[action]}.tokens"
            tokens = tuple(self._token(t, f"{path}[{i}]") for i, t in enumerate(rule.tokens))
            rules.append((action, Rule(tokens)))
        return dataclasses.replace(policy, rules=tuple(rules))

    def _token(self, token: Token, path: str) -> Token:
        digest = token.conditions.destinations_list
        if digest is None:
            return token
        held = self.addresses(digest)
        if held is None:
            raise PolicyInvalid(f"{path}.conditions.destinations.list",
                                f"this HSM holds no finished address list {digest}")
        return dataclasses.replace(token, conditions=dataclasses.replace(
            token.conditions, destinations=held))

    # -- records ------------------------------------------------------------------------

    def _upload(self, upload_id: str) -> dict[str, Any]:
        rec = self._store.get(_UPLOAD, upload_id) if isinstance(upload_id, str) and (
            UPLOAD_RE.fullmatch(upload_id)) else None
        if rec is None:
            raise InvalidInput("no such address list upload")
        return rec

    def _open_upload(self, upload_id: str) -> dict[str, Any]:
        rec = self._upload(upload_id)
        if rec["digest"] is not None:
            raise InvalidInput("this address list upload is finished: a list never changes")
        return rec

    def _chunk(self, upload_id: str, index: int) -> list[str]:
        rec = self._store.get(_CHUNK, f"{upload_id}.{index}")
        if rec is None:
            raise TamperDetected(f"chunk {index} of address list upload {upload_id} is missing")
        chunk: list[str] = rec["addresses"]
        return chunk

    def _addresses(self, upload_id: str, chunks: int) -> frozenset[str]:
        out: set[str] = set()
        for i in range(chunks):
            out.update(self._chunk(upload_id, i))
        return frozenset(out)

    def _usage(self) -> dict[str, int]:
        return self._store.get(_USAGE, "total") or {"held": 0, "open": 0}

    def _set_usage(self, held: int, open_uploads: int) -> None:
        self._store.put(_USAGE, "total", {"held": held, "open": open_uploads})
