"""Faults injected into real processes: PostgreSQL stopped (``-m immediate``) and
restarted in the middle of traffic; the HSM process killed and restarted.

While a part is down, calls are refused clearly - 503 problem+json with Retry-After,
``/readyz`` not ready - nothing acknowledged is lost, and work resumes when the part
returns: the same Idempotency-Key then creates, a held request is released by the
worker, and the invariants of the kill loop hold (nothing signed twice, ...).
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from hsm_emulator.decoders import transfer_payload

from .cluster import Cluster
from .invariants import check, observe
from .killloop import settle
from .traffic import HOLD_SECONDS, KEY, Desk, Ledger, run_traffic

pytestmark = pytest.mark.slow


def _cluster(db: str) -> Iterator[Cluster]:
    cluster = Cluster(db)
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def on_postgres() -> Iterator[Cluster]:
    yield from _cluster("postgres")


@pytest.fixture
def on_sqlite() -> Iterator[Cluster]:
    yield from _cluster("sqlite")


def _refused(r: httpx.Response, code: str) -> None:
    assert r.status_code == 503, r.text
    assert int(r.headers["retry-after"]) > 0
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == code, r.text


def _sign(desk: Desk, amount: int, key: str) -> httpx.Response:
    payload = transfer_payload("TST", amount, f"dest-{key}", nonce=hash(key) & 0xFFFF)
    return desk.http.post(desk.urls[0] + "/v1/sign", json={"signRequest": {
        "payload": base64.b64encode(payload).decode(), "payloadType": "TEST_TRANSFER",
        "signKeyName": KEY}}, headers=desk.headers("business") | {"Idempotency-Key": key})


def _ready(url: str, seconds: float = 30) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if httpx.get(url + "/readyz", timeout=5).status_code == 200:
            return True
        time.sleep(0.2)
    return False


def _traffic(desk: Desk) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=run_traffic, args=(desk, stop, 11))
    thread.start()
    return stop, thread


def test_postgres_stopped_and_restarted_mid_traffic(on_postgres: Cluster) -> None:
    cluster, ledger = on_postgres, Ledger()
    desk = Desk(cluster.urls, ledger, deadline=60)
    desk.setup()
    medium = desk.new("medium")
    medium.request_id = desk.create(medium)
    desk.answer(medium.request_id, desk.people["t1"], rejected=False)
    stop, thread = _traffic(desk)
    time.sleep(1.5)
    cluster.pg_stop()
    try:
        url = cluster.urls[0]
        _refused(_sign(desk, 50, "during-outage"), "custody.database_unavailable")
        _refused(desk.http.get(f"{url}/v1/request/{medium.request_id}",
                               headers=desk.headers("business")), "custody.database_unavailable")
        ready = httpx.get(url + "/readyz", timeout=10)
        assert ready.status_code == 503 and "database" in ready.text
        time.sleep(2)  # the traffic keeps retrying against the outage
    finally:
        cluster.pg_start()
    assert _ready(cluster.urls[0])
    assert _sign(desk, 50, "during-outage").status_code == 201  # the key was not burnt
    time.sleep(1.5)
    stop.set()
    thread.join()
    settle(desk, ledger.scenarios)
    assert cluster.alive("worker") and cluster.alive("api0")  # no process died of it
    obs = observe(cluster, ledger)
    assert check(obs) == []
    assert ledger.errors.get("503 custody.database_unavailable", 0) > 0  # it was felt
    assert obs.rows[medium.request_id]["status"] == "EXECUTED"


def test_hsm_killed_and_restarted_held_request_released_on_return(on_sqlite: Cluster) -> None:
    cluster, ledger = on_sqlite, Ledger()
    desk = Desk(cluster.urls, ledger, deadline=60)
    desk.setup()
    held = desk.new("hold")
    held.request_id = desk.create(held)
    for who in ("t1", "t2", "c1"):
        desk.answer(held.request_id, desk.people[who], rejected=False)
    held.done.update(("approve:t1", "approve:t2", "approve:c1"))
    assert desk.status(held.request_id)["status"] == "APPROVED"  # on hold
    stop, thread = _traffic(desk)
    time.sleep(1.0)
    cluster.kill("hsm")
    try:
        url = cluster.urls[0]
        _refused(_sign(desk, 50, "hsm-down"), "hsm.transport_error")
        ready = httpx.get(url + "/readyz", timeout=10)
        assert ready.status_code == 503 and "hsm" in ready.text
        time.sleep(HOLD_SECONDS + 3)  # the hold ends while the HSM is away
        row = desk.http.get(f"{url}/v1/request/{held.request_id}",
                            headers=desk.headers("business"))
        assert row.status_code in (200, 503)  # its status needs the HSM's key policy
        if row.status_code == 200:
            assert row.json()["status"] == "APPROVED", row.text  # kept, not FAILED
    finally:
        cluster.start("hsm")
    assert _ready(cluster.urls[0])
    deadline = time.time() + 20  # the worker's retry releases it, no client involved
    while desk.status(held.request_id)["status"] != "EXECUTED" and time.time() < deadline:
        time.sleep(0.2)
    assert desk.status(held.request_id)["status"] == "EXECUTED"
    stop.set()
    thread.join()
    settle(desk, ledger.scenarios)
    assert check(observe(cluster, ledger)) == []
    assert ledger.errors.get("503 hsm.transport_error", 0) > 0
