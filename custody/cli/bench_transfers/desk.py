"""The desk's side of ``custody bench transfers``: a wallet per chain whose small tier
covers every transfer of the run (auto-signed inside ``POST /v1/transfers``), the
transfers posted from a few client threads, and the transfers' own history read back.

The client is the standard library's ``http.client`` on keep-alive connections, as in
``bench api``: light, so the client's CPU does not eat the server's share of the cores.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from approvals_app.auth import issue_token

from .service import SECRET

TENANT = "bench-desk"
#: States a transfer does not leave.
TERMINAL = frozenset({"confirmed", "rejected", "expired", "cancelled", "failed"})


def headers(*roles: str) -> dict[str, str]:
    token = issue_token(SECRET, "bench-desk-app", TENANT, list(roles))
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


class Conn:
    """One keep-alive connection; an error answer raises with its body."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)

    def call(self, method: str, path: str, hdrs: dict[str, str],
             body: dict[str, Any] | None = None) -> Any:
        self.conn.request(method, path, None if body is None else json.dumps(body), hdrs)
        response = self.conn.getresponse()
        data = response.read()
        if response.status >= 400:
            raise RuntimeError(f"{method} {path}: {response.status} {data[:300]!r}")
        return json.loads(data)

    def close(self) -> None:
        self.conn.close()


def _spki() -> str:
    """A fresh approver key's public half: the tiers need named people, whom no transfer
    of the bench asks (every one is in the small tier)."""
    der = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def create_wallet(url: str, chain: str, network: str, symbol: str, count: int,
                  amount: str) -> dict[str, Any]:
    """A wallet whose small (auto) tier and daily total cover ``count`` x ``amount``."""
    total = int(float(amount) * count) + 1
    policy = {"traders": [{"type": "public_key", "value": _spki(), "name": "trader-1"}],
              "compliance": [{"type": "public_key", "value": _spki(), "name": "compliance-1"}],
              "tradersQuorum": 1, "complianceQuorum": 1,
              "tiers": {symbol: {"small": amount, "medium": str(total),
                                 "max": str(2 * total), "dailySmall": str(total)}}}
    conn = Conn(url)
    try:
        wallet: dict[str, Any] = conn.call("POST", "/v1/wallets", headers("key_admin"), {
            "name": f"bench-{chain}", "chain": chain, "network": network, "policy": policy})
    finally:
        conn.close()
    return wallet


def new_address(url: str, wallet_id: str) -> str:
    conn = Conn(url)
    try:
        return str(conn.call("POST", f"/v1/wallets/{wallet_id}/addresses",
                             headers("business"), {"label": "bench funding"})["address"])
    finally:
        conn.close()


@dataclass(frozen=True)
class Posted:
    """One transfer as the desk saw it: when its POST began, how long it took."""

    id: str
    destination: str
    started: float  #: wall clock (the server's history uses the same machine's clock)
    post_seconds: float
    state: str


def post_transfers(url: str, wallet: dict[str, Any], symbol: str, amount: str,
                   destinations: list[str], concurrency: int) -> list[Posted]:
    hdrs, local = headers("business"), threading.local()

    def one(destination: str) -> Posted:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = Conn(url)
        started, t0 = time.time(), time.perf_counter()
        t = conn.call("POST", "/v1/transfers", hdrs, {
            "wallet": wallet["id"], "asset": symbol, "amount": amount,
            "destination": destination, "memo": "bench"})
        return Posted(t["id"], destination, started, time.perf_counter() - t0, t["state"])

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, destinations))


def wait_until(url: str, wallet_id: str, count: int, states: frozenset[str],
               timeout: float) -> dict[str, dict[str, Any]]:
    """The wallet's transfers by id once all ``count`` are in ``states`` (or ended), or
    whatever they are when ``timeout`` seconds have passed."""
    conn, hdrs = Conn(url), headers("business")
    deadline = time.monotonic() + timeout
    try:
        while True:
            seen = _list(conn, hdrs, wallet_id)
            done = [t for t in seen.values() if t["state"] in states | TERMINAL]
            if len(done) >= count or time.monotonic() > deadline:
                return seen
            time.sleep(0.2)
    finally:
        conn.close()


def _list(conn: Conn, hdrs: dict[str, str], wallet_id: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    while True:
        page = conn.call("GET", f"/v1/transfers?wallet={wallet_id}&limit=500&offset={len(out)}",
                         hdrs)
        out.update({t["id"]: t for t in page})
        if len(page) < 500:
            return out


def reached(transfer: dict[str, Any], state: str) -> float | None:
    """When the transfer entered ``state``, as a wall-clock timestamp (its history)."""
    for h in transfer.get("history", []):
        if h["state"] == state:
            return dt.datetime.fromisoformat(h["at"]).timestamp()
    return None
