"""The approver's side of the /v1 approver API (seed 003), over httpx.

Listing tasks proves key possession with a fresh signed timestamp (the server answers
with the HSM's latest signed audit head beside them, kept in :attr:`ApproverClient.heads`
for the caller's witness); approving signs the challenge bytes, rejecting signs
``REJECT_PREFIX`` + the challenge bytes. TLS is verified (system roots, or ``ca_file``
for a private CA); transport failures and server refusals become :class:`ApproverError`
messages a person can act on.
"""

from __future__ import annotations

import base64
import datetime as dt
import ssl
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from .approver_keys import ApproverError, ApproverKey
from .approver_verify import VerifiedTask
from .broker import REJECT_PREFIX

PAGE_SIZE = 100
MAX_PAGES = 50

#: What a refusal most likely means to the approver, by HTTP status.
_HINTS = {
    400: "the server refused the request as malformed",
    401: "the server did not accept the signed timestamp (clock skew or replay?)",
    403: "refused: this key may not answer this task",
    404: "no such request",
    409: "already answered, or the request is closed",
    422: "the server refused the request body",
    429: "rate limited; try again shortly",
}


def _tls_context(ca_file: Path | None) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ApproverError(f"cannot use CA file {ca_file}: {exc}", 2) from None


class ApproverClient:
    def __init__(self, server: str, ca_file: Path | None = None, timeout: float = 30) -> None:
        url = httpx.URL(server) if server.startswith(("http://", "https://")) else None
        if url is None or not url.host:
            raise ApproverError(f"server URL {server!r} must be http(s)://host[:port]", 2)
        self.server = server.rstrip("/")
        self._http = httpx.Client(base_url=self.server, timeout=timeout,
                                  verify=_tls_context(ca_file), follow_redirects=False)
        #: Every signed audit head the server sent with a page of tasks, in order: the
        #: caller's witness checks them (:func:`custody.witness_file.observe`).
        self.heads: list[Any] = []

    def __enter__(self) -> ApproverClient:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None,
                 ) -> None:
        self._http.close()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            r = self._http.request(method, path, json=body)
        except httpx.ConnectError as exc:
            text = str(exc)
            if isinstance(exc.__context__, ssl.SSLError) or "SSL" in text or "certif" in text:
                raise ApproverError(f"TLS error talking to {self.server}: {text}", 3) from None
            raise ApproverError(f"cannot reach {self.server}: {text}", 3) from None
        except httpx.HTTPError as exc:
            raise ApproverError(f"cannot reach {self.server}: {type(exc).__name__} {exc}",
                                3) from None
        try:
            doc = r.json()
        except ValueError:
            doc = None
        if r.status_code >= 400:
            detail = doc.get("detail") if isinstance(doc, dict) else r.text[:200]
            hint = _HINTS.get(r.status_code, "the server failed")
            raise ApproverError(f"{hint} (HTTP {r.status_code}: {detail})")
        if not isinstance(doc, dict):
            raise ApproverError(f"{self.server} did not answer with a JSON object")
        return doc

    def hsm_identity(self) -> str:
        key = self._call("GET", "/v1/hsm").get("identityPublicKey")
        if not isinstance(key, str):
            raise ApproverError("the server did not give an HSM identity key")
        return key

    def tasks(self, key: ApproverKey, page: int = 0) -> list[Any]:
        """One page of this approver's open tasks, with payloads (detail level 3)."""
        ts = dt.datetime.now(dt.UTC).isoformat()
        doc = self._call("POST", "/v1/filteredSignApprovalTask", {
            "timestamp": ts, "timestampSignature": base64.b64encode(
                key.sign(ts.encode())).decode(),
            "approverCertificate": key.spki_b64, "detailLevel": "level3",
            "paging": {"pageNumber": page, "pageSize": PAGE_SIZE}})
        found = doc.get("tasks")
        if not isinstance(found, list):
            raise ApproverError("the server sent a malformed task list")
        if "auditHead" in doc:
            self.heads.append(doc["auditHead"])
        return found

    def all_tasks(self, key: ApproverKey) -> list[Any]:
        out: list[Any] = []
        for page in range(MAX_PAGES):
            found = self.tasks(key, page)
            out += found
            if len(found) < PAGE_SIZE:
                break
        return out

    def find_task(self, key: ApproverKey, ref: str) -> Any:
        """The open task whose id is ``ref`` or starts with it (the short reference
        ``tasks`` prints: 4 characters at least, and only one task may match)."""
        found = [t for t in self.all_tasks(key) if isinstance(t, dict)
                 and isinstance(t.get("id"), str)]
        for task in found:
            if task["id"] == ref:
                return task
        matches = [t for t in found if len(ref) >= 4 and t["id"].startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise ApproverError(f"{ref} matches {len(matches)} tasks; give more of the id", 2)
        raise ApproverError(f"{ref} is not among your open tasks (already answered, "
                            "closed, or this key is not an approver of it)")

    def answer(self, key: ApproverKey, task: VerifiedTask, reject: bool = False) -> Any:
        """Sign the verified challenge bytes (or the rejection of them) and submit."""
        message = REJECT_PREFIX + task.envelope if reject else task.envelope
        return self._call("POST", "/v1/rejection" if reject else "/v1/approval", {
            "id": task.request_id, "approvalToBeSigned": task.challenge_b64,
            "signature": base64.b64encode(key.sign(message)).decode(),
            "approverCertificate": key.spki_b64, "approvalDigestAlgorithm": "SHA-256"})
