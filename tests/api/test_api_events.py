"""Approvers see new tasks pushed over Server-Sent Events, through a real server."""

from __future__ import annotations

import base64
import datetime as dt
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from approvals_app.main import create_app
from approvals_app.settings import Settings
from hsm_emulator import Hsm
from hsm_emulator.decoders import transfer_payload
from tests.api.test_api_tutorial import SECRET, bearer
from tests.api.test_serve import free_port
from tests.conftest import SO, TEST_PASSPHRASE
from tests.helpers import Approver, tiered_policy


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    hsm = Hsm.open(tmp_path / "hsm.sqlite", TEST_PASSPHRASE, so_passphrase=SO)
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'b.sqlite'}",
                              jwt_secret=SECRET), hsm)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)
    hsm.close()


def test_new_task_is_pushed(server: str, people: dict[str, Approver]) -> None:
    t1 = people["t1"]
    policy = tiered_policy([t1, people["t2"]], [people["c1"]])
    with httpx.Client(base_url=server, timeout=10) as c:
        assert c.post("/v1/key", json={"label": "treasury", "algorithm": "SECP256K1",
                                       "policy": policy},
                      headers=bearer("key_admin")).status_code == 201
        ts = dt.datetime.now(dt.UTC).isoformat()
        params = {"timestamp": ts, "signature": base64.b64encode(t1.sign(ts.encode())).decode(),
                  "certificate": t1.spki_b64}
        events: list[str] = []
        got_task = threading.Event()

        def listen() -> None:
            with httpx.Client(base_url=server, timeout=10) as sc, sc.stream(
                    "GET", "/v1/approver/events", params=params) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    if line.startswith("data:") and events and events[-1] == "event: task":
                        events.append(line)
                        got_task.set()
                        return
                    events.append(line)

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        deadline = time.time() + 10
        while not any(e.startswith("event: tasks") for e in events) and time.time() < deadline:
            time.sleep(0.02)
        payload = base64.b64encode(transfer_payload("TST", 1000, "bob", 1)).decode()
        r = c.post("/v1/sign", json={"signRequest": {"payload": payload,
                                                     "payloadType": "TEST_TRANSFER",
                                                     "signKeyName": "treasury"}},
                   headers=bearer("business"))
        request_id = r.json()["signRequestId"]
        assert got_task.wait(10), events
        assert any(request_id in e for e in events if e.startswith("data:"))
        replay = c.get("/v1/approver/events", params=params)  # one use per timestamp
        assert replay.status_code == 403
        metrics = c.get("/metrics").text
        assert 'custody_sign_requests_total{status="PENDING"}' in metrics
        assert "custody_refusals_total" in metrics
