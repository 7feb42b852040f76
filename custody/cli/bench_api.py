"""``custody bench api``: sign requests end to end through HTTP, per database.

Starts one real server process (``custody serve``) per database - a SQLite file, and a
throwaway PostgreSQL - and drives it from this process with ``concurrency`` client
threads on loopback:

* ``auto``: ``POST /v1/sign`` for a key whose policy auto-signs; the response comes
  after the HSM signed and the broker recorded it, so this is end to end. Requests/s,
  p50 and p99 latency, and how many requests the server signed per HSM batch
  (``auto_mean_batch``, from its /metrics: requests that arrive together are batched).
* ``approved``: 2-of-3 requests; both approvers list their tasks once (signed
  timestamps), then approve; ``release_ms`` is the latency of the last approval, whose
  response already carries the EXECUTED status (the release happens inside it).

One JSON object per line; the last holds the headline figures per database.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client.parser import text_string_to_metric_families

from approvals_app.auth import issue_token

from ..pgserver import PostgresServer, PostgresUnavailable, free_port

SECRET = "bench-secret-0123456789abcdef-0123456789"  # noqa: S105 - a throwaway server


class _Approver:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.spki = base64.b64encode(der).decode()

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self.key.sign(data, ec.ECDSA(hashes.SHA256()))).decode()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _Server:
    def __init__(self, database_url: str, workdir: Path) -> None:
        self.port = free_port()
        env = os.environ | {
            "CUSTODY_DATABASE_URL": database_url, "CUSTODY_HSM_STORE": str(workdir / "hsm.db"),
            "CUSTODY_HSM_PASSPHRASE": "bench passphrase", "CUSTODY_JWT_SECRET": SECRET,
            "CUSTODY_HSM_SO_PASSPHRASE": "bench officer passphrase"}
        self.proc = subprocess.Popen(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "custody.cli", "serve", "--port", str(self.port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("server did not become ready")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _headers(*roles: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + issue_token(SECRET, "bench-desk", "bench",
                                                     list(roles))}


def _setup(url: str, approvers: list[_Approver]) -> None:
    admin = _headers("key_admin")
    with httpx.Client(base_url=url, timeout=30) as c:
        for body in (
            {"label": "auto", "algorithm": "SECP256K1",
             "policy": {"ruleUse": {"tokens": [{"name": "auto", "groups": []}]}}},
            {"label": "quorum", "algorithm": "SECP256K1", "policy": {"ruleUse": {"tokens": [
                {"name": "2of3", "timeout": 3600, "groups": [{"name": "traders", "quorum": 2,
                 "approvals": [{"type": "public_key", "value": a.spki} for a in approvers]}]}]}}},
        ):
            c.post("/v1/key", json=body, headers=admin).raise_for_status()


def _sign_body(label: str, i: int) -> dict[str, Any]:
    payload = base64.b64encode(f"bench payload {i} {time.time_ns()}".encode()).decode()
    return {"signRequest": {"payload": payload, "payloadType": "UNSPECIFIED",
                            "signKeyName": label, "signatureAlgorithm": "SHA256_WITH_ECDSA"}}


class _Conn:
    """A keep-alive connection with the standard library's http.client: a light load
    generator, so the client's own CPU does not eat the server's share of the cores."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)

    def post(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        self.conn.request("POST", path, json.dumps(body),
                          {**headers, "Content-Type": "application/json"})
        response = self.conn.getresponse()
        data = response.read()
        if response.status >= 400:
            raise RuntimeError(f"{path}: {response.status} {data[:200]!r}")
        out: dict[str, Any] = json.loads(data)
        return out


def _auto(url: str, n: int, concurrency: int) -> dict[str, Any]:
    headers = _headers("business")
    local = threading.local()
    latencies: list[float] = []

    def one(i: int) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = _Conn(url)
        t0 = time.perf_counter()
        conn.post("/v1/sign", _sign_body("auto", i), headers)
        latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(n)))
    elapsed = time.perf_counter() - start
    return {"auto_rps": round(n / elapsed, 1),
            "auto_p50_ms": round(statistics.median(latencies) * 1000, 2),
            "auto_p99_ms": round(_percentile(latencies, 0.99) * 1000, 2)}


def _mean_batch(url: str) -> float | None:
    """How many auto-tier requests the server signed per HSM batch (its /metrics)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = {s.name: s.value for family in text_string_to_metric_families(text)
             if family.name == "custody_autosign_batch_size" for s in family.samples}
    count = found.get("custody_autosign_batch_size_count")
    return round(found["custody_autosign_batch_size_sum"] / count, 2) if count else None


def _tasks(c: httpx.Client, who: _Approver) -> dict[str, str]:
    found: dict[str, str] = {}
    for page in range(1000):
        ts = dt.datetime.now(dt.UTC).isoformat()
        r = c.post("/v1/filteredSignApprovalTask", json={
            "timestamp": ts, "timestampSignature": who.sign(ts.encode()),
            "approverCertificate": who.spki,
            "paging": {"pageNumber": page, "pageSize": 100}})
        r.raise_for_status()
        tasks = r.json()["tasks"]
        found.update({t["id"]: t["approvalToBeSigned"] for t in tasks})
        if len(tasks) < 100:
            return found
    return found


def _approved(url: str, n: int, concurrency: int, approvers: list[_Approver]) -> dict[str, Any]:
    headers = _headers("business")
    release: list[float] = []
    with httpx.Client(base_url=url, timeout=30) as c:
        start = time.perf_counter()
        ids = [c.post("/v1/sign", json=_sign_body("quorum", i), headers=headers).json()[
            "signRequestId"] for i in range(n)]
        first, second = _tasks(c, approvers[0]), _tasks(c, approvers[1])

    local = threading.local()

    def approve(request_id: str) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = _Conn(url)
        for who, tasks in ((approvers[0], first), (approvers[1], second)):
            challenge = tasks[request_id]
            signature = who.sign(base64.b64decode(challenge))
            t0 = time.perf_counter()
            answer = conn.post("/v1/approval", {
                "id": request_id, "approvalToBeSigned": challenge, "signature": signature,
                "approverCertificate": who.spki}, {})
        if answer["status"] != "EXECUTED":
            raise RuntimeError(f"request {request_id} not released: {answer}")
        release.append(time.perf_counter() - t0)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(approve, ids))
    elapsed = time.perf_counter() - start
    return {"approved_rps": round(n / elapsed, 1),
            "release_ms": round(statistics.median(release) * 1000, 2),
            "release_p99_ms": round(_percentile(release, 0.99) * 1000, 2)}


def bench_api(requests: int = 2000, approved: int = 200, concurrency: int = 8,
              databases: tuple[str, ...] = ("sqlite", "postgresql")) -> Iterator[dict[str, Any]]:
    headline: dict[str, Any] = {"bench": "api", "headline": True, "requests": requests,
                                "approved": approved, "concurrency": concurrency,
                                "target": {"auto_rps": 1000, "auto_p99_ms": 50}}
    approvers = [_Approver() for _ in range(3)]
    for db in databases:
        with tempfile.TemporaryDirectory() as tmp:
            pg = None
            try:
                if db == "postgresql":
                    pg = PostgresServer()
                    url = pg.create_database()
                else:
                    url = f"sqlite:///{Path(tmp) / 'broker.db'}"
            except PostgresUnavailable as exc:
                yield {"bench": "api", "database": db, "skipped": str(exc)}
                continue
            server = _Server(url, Path(tmp))
            try:
                _setup(server.url, approvers)
                record = {"bench": "api", "database": db,
                          **_auto(server.url, requests, concurrency),
                          "auto_mean_batch": _mean_batch(server.url),
                          **_approved(server.url, approved, concurrency, approvers)}
            finally:
                server.stop()
                if pg is not None:
                    pg.stop()
        headline[db] = {k: v for k, v in record.items() if k not in ("bench", "database")}
        yield record
    yield headline
