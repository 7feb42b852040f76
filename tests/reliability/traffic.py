"""A treasury desk and its approvers driving mixed sign-request traffic over HTTP.

Five scenarios on one key with the design card's tiers (tests/helpers.py), the large
tier on a short hold: ``auto`` (signed at once), ``medium`` (2-of-3 traders),
``reject`` (two traders refuse), ``cancel`` (one approval, then cancelled) and ``hold``
(2 traders + compliance, released by the worker when the hold ends).

The client survives outages the way a careful client would: a refused connection, a
503 or a "retry" 409 is retried (same Idempotency-Key) against any replica until a
deadline. What the API *acknowledged* (a 2xx) is written to a :class:`Ledger`, which
the invariant checker holds the system to.
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from approvals_app.auth import issue_token
from custody.broker import REJECT_PREFIX
from hsm_emulator.decoders import transfer_payload
from tests.helpers import Approver, tiered_policy

from .cluster import SECRET

KEY = "treasury"
#: Amounts per scenario, in the tiers of ``tiered_policy(small=100, medium=5000)``.
AMOUNT = {"auto": 50, "medium": 1000, "reject": 1000, "cancel": 1000, "hold": 10_000}
EXPECTED = {"auto": "EXECUTED", "medium": "EXECUTED", "reject": "REJECTED",
            "cancel": "CANCELLED", "hold": "EXECUTED"}
STEPS = {"auto": (), "medium": ("approve:t1", "approve:t2"),
         "reject": ("reject:t1", "reject:t2"), "cancel": ("approve:t3", "cancel"),
         "hold": ("approve:t1", "approve:t2", "approve:c1")}
HOLD_SECONDS = 2
_RETRY = ("retry", "in progress")
#: A key "still in progress" this many retries in a row was left by a killed process.
STUCK_RETRIES = 10


class GaveUp(Exception):
    """A call kept failing past its deadline (the outage outlasted the client)."""


@dataclass
class Scenario:
    kind: str
    key: str  #: Idempotency-Key of the create
    body: dict[str, Any]
    request_id: str | None = None
    done: set[str] = field(default_factory=set)

    @property
    def complete(self) -> bool:
        return self.request_id is not None and self.done >= set(STEPS[self.kind])


@dataclass
class Ledger:
    """What the API acknowledged with a 2xx: the system must never lose any of it."""

    scenarios: list[Scenario] = field(default_factory=list)
    acked_answers: list[tuple[str, str, bool]] = field(default_factory=list)  #: id, spki, rej
    calls: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, what: str) -> None:
        with self.lock:
            self.errors[what] = self.errors.get(what, 0) + 1


class Desk:
    def __init__(self, urls: list[str], ledger: Ledger, deadline: float = 60.0) -> None:
        self.urls = urls
        self.ledger = ledger
        self.deadline = deadline
        self.people = {n: Approver.new(n) for n in ("t1", "t2", "t3", "c1")}
        self.http = httpx.Client(timeout=30)
        self._seq = itertools.count()
        self._rng = random.Random()

    def headers(self, *roles: str) -> dict[str, str]:
        return {"Authorization": "Bearer " + issue_token(SECRET, "desk", "desk-1", list(roles))}

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None
             = None) -> httpx.Response:
        """One logical call, retried across outages; returns the first non-retryable reply."""
        end, stuck = time.time() + self.deadline, 0
        while True:
            url = self._rng.choice(self.urls)
            try:
                r = self.http.request(method, url + path, json=body, headers=headers)
                self.ledger.calls += 1
                retry = r.status_code in (502, 503) or (
                    r.status_code == 409 and any(w in r.text for w in _RETRY))
                if not retry:
                    return r
                self.ledger.note(f"{r.status_code} {_code(r)}")
                stuck = stuck + 1 if "in progress" in r.text else 0
                if stuck > STUCK_RETRIES:  # its first call died mid-way: never answered
                    raise GaveUp(f"{method} {path}: Idempotency-Key stuck in progress")
            except httpx.TransportError as exc:
                self.ledger.note(type(exc).__name__)
            if time.time() > end:
                raise GaveUp(f"{method} {path}")
            time.sleep(0.2)

    def setup(self) -> None:
        traders = [self.people[n] for n in ("t1", "t2", "t3")]
        policy = tiered_policy(traders, [self.people["c1"]], hold=HOLD_SECONDS, timeout=3600)
        r = self.call("POST", "/v1/key", {"label": KEY, "algorithm": "SECP256K1",
                                          "policy": policy}, self.headers("key_admin"))
        assert r.status_code in (201, 409), r.text

    def new(self, kind: str) -> Scenario:
        n = next(self._seq)
        nonce = self._rng.getrandbits(48)
        payload = transfer_payload("TST", AMOUNT[kind], f"dest-{nonce:x}", nonce=nonce)
        body = {"signRequest": {"payload": base64.b64encode(payload).decode(),
                                "payloadType": "TEST_TRANSFER", "signKeyName": KEY}}
        s = Scenario(kind, f"k-{nonce:x}-{n}", body)
        with self.ledger.lock:
            self.ledger.scenarios.append(s)
        return s

    def create(self, s: Scenario) -> str:
        hdr = self.headers("business") | {"Idempotency-Key": s.key}
        r = self.call("POST", "/v1/sign", s.body, hdr)
        if r.status_code != 201:
            raise AssertionError(f"create {s.kind}: {r.status_code} {r.text[:200]}")
        return str(r.json()["signRequestId"])

    def drive(self, s: Scenario) -> None:
        """Run (or resume) a scenario's remaining steps; each step is done at most once
        from the client's point of view (a lost reply is retried, never re-planned)."""
        if s.request_id is None:
            s.request_id = self.create(s)
        for step in STEPS[s.kind]:
            if step in s.done:
                continue
            if step == "cancel":
                r = self.call("DELETE", f"/v1/request/{s.request_id}", None,
                              self.headers("business"))
                assert r.status_code in (200, 409), r.text
            else:
                verb, who = step.split(":")
                self.answer(s.request_id, self.people[who], verb == "reject")
            s.done.add(step)

    def answer(self, request_id: str, who: Approver, rejected: bool) -> None:
        challenge = self.challenge(request_id, who)
        if challenge is None:
            return  # already answered (before a crash) or no longer pending
        message = base64.b64decode(challenge)
        sig = who.sign(REJECT_PREFIX + message if rejected else message)
        r = self.call("POST", "/v1/rejection" if rejected else "/v1/approval", {
            "id": request_id, "approvalToBeSigned": challenge,
            "signature": base64.b64encode(sig).decode(), "approverCertificate": who.spki_b64})
        if r.status_code == 200:
            with self.ledger.lock:
                self.ledger.acked_answers.append((request_id, who.spki_b64, rejected))
        elif r.status_code != 409:  # 409: answered already, or the request is final
            raise AssertionError(f"answer: {r.status_code} {r.text[:200]}")

    def challenge(self, request_id: str, who: Approver) -> str | None:
        """The approver's own path to a challenge: list its tasks with a signed timestamp."""
        for _ in range(3):
            ts = dt.datetime.now(dt.UTC).isoformat()
            r = self.call("POST", "/v1/filteredSignApprovalTask", {
                "timestamp": ts, "timestampSignature": base64.b64encode(
                    who.sign(ts.encode())).decode(), "approverCertificate": who.spki_b64,
                "paging": {"pageNumber": 0, "pageSize": 100, "sortOrder": "CREATION_DATE_DESC"}})
            if r.status_code == 200:
                tasks = {t["id"]: t["approvalToBeSigned"] for t in r.json()["tasks"]}
                return tasks.get(request_id)
            time.sleep(0.05)  # a replayed timestamp after a lost reply: sign a fresh one
        raise AssertionError(f"tasks: {r.status_code} {r.text[:200]}")

    def status(self, request_id: str) -> dict[str, Any]:
        r = self.call("GET", f"/v1/request/{request_id}", None, self.headers("business"))
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out

    def replay_create(self, s: Scenario) -> str:
        """The same create again, same Idempotency-Key: must answer the first result."""
        return self.create(s)

    def close(self) -> None:
        self.http.close()


def _code(r: httpx.Response) -> str:
    try:
        return str(r.json().get("code", ""))
    except ValueError:
        return "(not json)"


def run_traffic(desk: Desk, stop: threading.Event, seed: int) -> None:
    """Scenarios one after another until ``stop``; an abandoned one is resumed later."""
    rng = random.Random(seed)
    kinds = ["auto"] * 4 + ["medium"] * 2 + ["reject", "cancel", "hold"]
    while not stop.is_set():
        s = desk.new(rng.choice(kinds))
        try:
            desk.drive(s)
        except GaveUp:
            desk.ledger.note("gave up (resumed later)")
        except AssertionError as exc:  # an unexpected answer: counted, resumed later
            desk.ledger.note(f"unexpected: {str(exc)[:80]}")
