"""Several replicas, one truth: two API processes and a worker share a real PostgreSQL
and one HSM process; approvals race on the same requests; each is released once.

Every process is real (``custody serve``, ``custody worker``, ``python -m
hsm_emulator.remote``). "Released once" is read from the HSM's own audit log, which the
broker cannot forge: exactly one successful ``request.execute`` per request.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from custody.pgserver import PostgresServer, free_port
from tests.helpers import Approver, group, token

pytestmark = pytest.mark.postgres

SECRET = "replica-test-secret-0123456789abcdef-01234"
ROOT = Path(__file__).resolve().parents[2]


def _wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        assert proc.poll() is None, "process exited early"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} never became ready")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory,
            postgres: PostgresServer) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("replicas")
    secret_file = work / "hsm.secret"
    secret_file.write_bytes(base64.b64encode(os.urandom(32)))
    secret_file.chmod(0o600)
    sock = f"unix:{work / 'hsm.sock'}"
    procs: list[subprocess.Popen[bytes]] = []
    log = (work / "processes.log").open("ab")
    env = os.environ | {"SKA_HSM_PASSPHRASE": "replica hsm passphrase",
                        "SKA_HSM_SO_PASSPHRASE": "replica officer passphrase"}
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "hsm_emulator.remote", "--store", str(work / "hsm.sqlite"),
         "--listen", sock, "--secret-file", str(secret_file), "--scrypt-n", "1024"],
        env=env, cwd=ROOT, stdout=log, stderr=log))
    deadline = time.time() + 30
    while not (work / "hsm.sock").exists() and time.time() < deadline:
        time.sleep(0.1)
    common = os.environ | {"CUSTODY_DATABASE_URL": postgres.create_database(),
                           "CUSTODY_HSM_URL": sock, "CUSTODY_HSM_SECRET_FILE": str(secret_file),
                           "CUSTODY_JWT_SECRET": SECRET}
    urls = []
    for _ in range(2):
        port = free_port()
        procs.append(subprocess.Popen([sys.executable, "-m", "custody.cli", "serve", "--port",
                                       str(port)], env=common, cwd=ROOT, stdout=log, stderr=log))
        urls.append(f"http://127.0.0.1:{port}")
    for url, proc in zip(urls, procs[1:], strict=True):
        _wait_ready(url, proc)
    procs.append(subprocess.Popen([sys.executable, "-m", "custody.cli", "worker"], env=common,
                                  cwd=ROOT, stdout=log, stderr=log))
    yield {"urls": urls, "procs": procs}
    for proc in reversed(procs):
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    log.close()


def _auth(*roles: str) -> dict[str, str]:
    from approvals_app.auth import issue_token

    return {"Authorization": "Bearer " + issue_token(SECRET, "desk", "desk-1", list(roles))}


def _challenges(url: str, who: Approver) -> dict[str, str]:
    ts = dt.datetime.now(dt.UTC).isoformat()
    r = httpx.post(f"{url}/v1/filteredSignApprovalTask", timeout=30, json={
        "timestamp": ts, "timestampSignature": base64.b64encode(who.sign(ts.encode())).decode(),
        "approverCertificate": who.spki_b64, "paging": {"pageNumber": 0, "pageSize": 100}})
    r.raise_for_status()
    return {t["id"]: t["approvalToBeSigned"] for t in r.json()["tasks"]}


def _approve(url: str, who: Approver, request_id: str, challenge: str) -> int:
    r = httpx.post(f"{url}/v1/approval", timeout=60, json={
        "id": request_id, "approvalToBeSigned": challenge,
        "signature": base64.b64encode(who.sign(base64.b64decode(challenge))).decode(),
        "approverCertificate": who.spki_b64})
    return r.status_code


def _executions(url: str) -> Counter[str]:
    r = httpx.get(f"{url}/v1/audit", params={"limit": 10_000}, headers=_auth("auditor"),
                  timeout=60)
    r.raise_for_status()
    return Counter(e["event"]["requestId"] for e in r.json()["entries"]
                   if e["event"].get("op") == "request.execute"
                   and e["event"].get("result") == "ok")


def test_racing_approvals_release_each_request_once(cluster: dict[str, Any],
                                                     people: dict[str, Approver]) -> None:
    a, b = cluster["urls"]
    trio = [people["t1"], people["t2"], people["t3"]]
    policy = {"ruleUse": {"tokens": [token("2of3", [group("traders", 2, trio)], timeout=600)]}}
    r = httpx.post(f"{a}/v1/key", json={"label": "race", "algorithm": "SECP256K1",
                                        "policy": policy}, headers=_auth("key_admin"), timeout=30)
    assert r.status_code == 201, r.text
    ids = []
    for i in range(12):
        body = {"signRequest": {"payload": base64.b64encode(f"race {i}".encode()).decode(),
                                "payloadType": "UNSPECIFIED", "signKeyName": "race",
                                "signatureAlgorithm": "SHA256_WITH_ECDSA"}}
        ids.append(httpx.post(f"{(a, b)[i % 2]}/v1/sign", json=body, headers=_auth("business"),
                              timeout=30).json()["signRequestId"])
    tasks = {who.name: _challenges(a, who) for who in trio}
    jobs = [(url, who, rid) for rid in ids for who, url in zip(trio, (a, b, a), strict=True)]
    with ThreadPoolExecutor(9) as pool:  # all three approvals of each request at once
        codes = list(pool.map(lambda j: _approve(j[0], j[1], j[2], tasks[j[1].name][j[2]]),
                              jobs))
    assert all(c in (200, 409) for c in codes), codes  # 409: already released by a peer
    for rid in ids:
        for url in (a, b):
            status = httpx.get(f"{url}/v1/request/{rid}", headers=_auth("business"),
                               timeout=30).json()
            assert status["status"] == "EXECUTED" and status["result"], status
    executions = _executions(a)
    assert all(executions[rid] == 1 for rid in ids), executions


def test_a_hold_is_released_once_by_whichever_replica_wakes(
        cluster: dict[str, Any], people: dict[str, Approver]) -> None:
    a, b = cluster["urls"]
    t1, t2 = people["t1"], people["t2"]
    policy = {"ruleUse": {"tokens": [token("held", [group("pair", 2, [t1, t2])], timelock=2,
                                           timeout=600)]}}
    httpx.post(f"{a}/v1/key", json={"label": "held", "algorithm": "SECP256K1",
                                    "policy": policy}, headers=_auth("key_admin"), timeout=30)
    body = {"signRequest": {"payload": base64.b64encode(b"held").decode(),
                            "payloadType": "UNSPECIFIED", "signKeyName": "held",
                            "signatureAlgorithm": "SHA256_WITH_ECDSA"}}
    rid = httpx.post(f"{b}/v1/sign", json=body, headers=_auth("business"),
                     timeout=30).json()["signRequestId"]
    for who, url in ((t1, a), (t2, b)):
        assert _approve(url, who, rid, _challenges(url, who)[rid]) == 200
    deadline = time.time() + 20
    while time.time() < deadline:
        status = httpx.get(f"{a}/v1/request/{rid}", headers=_auth("business"), timeout=30).json()
        if status["status"] == "EXECUTED":
            break
        time.sleep(0.1)
    assert status["status"] == "EXECUTED", status
    assert _executions(a)[rid] == 1


def test_deeply_nested_body_is_a_clean_4xx(cluster: dict[str, Any]) -> None:
    a = cluster["urls"][0]
    r = httpx.post(f"{a}/v1/approval", content=b"[" * 200_000,
                   headers={"content-type": "application/json"}, timeout=30)
    assert 400 <= r.status_code < 500
    assert httpx.get(f"{a}/healthz", timeout=10).status_code == 200  # still serving
