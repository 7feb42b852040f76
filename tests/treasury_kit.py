"""Shared pieces of the treasury tests: the app on local networks, approving by API."""

from __future__ import annotations

import base64
import datetime as dt
import time
from typing import Any

from fastapi.testclient import TestClient

from custody.broker import REJECT_PREFIX
from tests.api.test_api_tutorial import bearer
from tests.helpers import Approver

DESK = bearer("business")
ADMIN = bearer("key_admin")


def policy_config(traders: list[Approver], compliance: list[Approver], tiers: dict[str, Any],
                  *, hold: int = 2, medium_timeout: int = 600,
                  large_timeout: int = 600) -> dict[str, Any]:
    return {"traders": [t.entry() for t in traders],
            "compliance": [c.entry() for c in compliance], "tiers": tiers, "hold": hold,
            "mediumTimeout": medium_timeout, "largeTimeout": large_timeout}


def create_wallet(api: TestClient, name: str, chain: str, network: str,
                  policy: dict[str, Any], tokens: list[dict[str, Any]] | None = None,
                  ) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "chain": chain, "network": network,
                            "policy": policy}
    if tokens:
        body["tokens"] = tokens
    r = api.post("/v1/wallets", json=body, headers=ADMIN)
    assert r.status_code == 201, r.text
    return dict(r.json())


def transfer(api: TestClient, wallet: str, asset: str, amount: str, destination: str,
             **headers: str) -> dict[str, Any]:
    r = api.post("/v1/transfers", json={"wallet": wallet, "asset": asset, "amount": amount,
                                        "destination": destination},
                 headers={**DESK, **headers})
    assert r.status_code == 201, r.text
    return dict(r.json())


def get(api: TestClient, transfer_id: str) -> dict[str, Any]:
    r = api.get(f"/v1/transfers/{transfer_id}", headers=DESK)
    assert r.status_code == 200, r.text
    return dict(r.json())


def wait_state(api: TestClient, transfer_id: str, *states: str,
               timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        t = get(api, transfer_id)
        if t["state"] in states:
            return t
        if time.monotonic() > deadline:
            raise AssertionError(f"transfer stayed {t['state']} (wanted {states}): {t}")
        time.sleep(0.1)


def answer(api: TestClient, who: Approver, request_id: str, reject: bool = False) -> Any:
    ts = dt.datetime.now(dt.UTC).isoformat()
    r = api.post("/v1/filteredSignApprovalTask", json={
        "timestamp": ts, "timestampSignature": base64.b64encode(who.sign(ts.encode())).decode(),
        "approverCertificate": who.spki_b64, "detailLevel": "level2"})
    assert r.status_code == 200, r.text
    task = next(t for t in r.json()["tasks"] if t["id"] == request_id)
    challenge = base64.b64decode(task["approvalToBeSigned"])
    sig = who.sign(REJECT_PREFIX + challenge if reject else challenge)
    r = api.post("/v1/rejection" if reject else "/v1/approval", json={
        "id": request_id, "approvalToBeSigned": task["approvalToBeSigned"],
        "signature": base64.b64encode(sig).decode(), "approverCertificate": who.spki_b64})
    assert r.status_code == 200, r.text
    return r.json()
