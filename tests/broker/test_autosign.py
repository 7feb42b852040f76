"""Auto-tier requests signed in batches (custody/autosign.py): each request gets the
answer it would have had alone, nothing is signed twice, and the HSM decides every time.
"""

from __future__ import annotations

import base64
import concurrent.futures
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from approvals_app.main import create_app
from approvals_app.settings import Settings
from custody.autosign import AutoSigner
from custody.broker import Broker, Call, Principal
from custody.db import Status, make_engine, make_sessions
from custody.errors import NotFound
from hsm_emulator import Hsm
from hsm_emulator.decoders import transfer_payload
from hsm_emulator.errors import KeyBlocked, TransportError
from hsm_emulator.model import Action
from hsm_emulator.results import Execution
from tests.api.test_api_tutorial import SECRET, bearer
from tests.helpers import Approver, tiered_policy

DESK = Principal("desk-user", "desk", frozenset({"business"}))


class LosesAnswers:
    """The HSM signs the batch, then the connection drops: the answer never arrives."""

    def __init__(self, hsm: Hsm) -> None:
        self.hsm = hsm
        self.calls = 0

    def sign_batch(self, label: str, payloads: Sequence[bytes], payload_type: str = "",
                   scheme: Any = None) -> list[Execution]:
        self.calls += 1
        self.hsm.sign_batch(label, payloads, payload_type, scheme)
        raise TransportError("connection reset")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.hsm, name)


@pytest.fixture
def broker(hsm: Hsm, tmp_path: Path, people: dict[str, Approver]) -> Iterator[Broker]:
    b = Broker(hsm, make_sessions(make_engine(f"sqlite:///{tmp_path / 'broker.sqlite'}")))
    policy = tiered_policy([people["t1"], people["t2"], people["t3"]], [people["c1"]])
    b.intake.create_key("desk", "treasury", "SECP256K1", policy=policy)
    yield b
    b.close()


def transfer(amount: int, nonce: int) -> Call:
    return Call(DESK, "treasury", Action.USE, transfer_payload("TST", amount, "bob", 1, nonce),
                "TEST_TRANSFER", None, {"ref": nonce})


def signed_now(hsm: Hsm) -> list[dict[str, Any]]:
    """The HSM's own record of auto-tier signatures (refusals are audited too)."""
    return [e.event for e in hsm.audit_entries(limit=10_000)
            if e.event.get("op") == "sign.now" and e.event.get("result") == "ok"]


def test_a_batch_is_signed_in_one_hsm_call_and_recorded_as_executed(
        broker: Broker, hsm: Hsm) -> None:
    sizes: list[int] = []
    futures = AutoSigner(broker, on_batch=sizes.append).sign_together(
        [transfer(10 + i, i) for i in range(5)])
    ids = [f.result() for f in futures]
    assert sizes == [5] and len(set(ids)) == 5
    batch = [e.event for e in hsm.audit_entries(limit=10_000)
             if e.event.get("op") == "sign.batch"]
    assert [e["size"] for e in batch] == [5]
    events = signed_now(hsm)
    assert [e["batchIndex"] for e in events] == list(range(5))
    assert [e["requestId"] for e in events] == ids  # the HSM's ids, each answered in order
    for i, request_id in enumerate(ids):
        row = broker.get(request_id, "desk")
        assert row.status == Status.EXECUTED and row.meta_data == {"ref": i}
        assert row.result and len(base64.b64decode(row.result[0])) > 60  # a DER signature


def test_one_request_needing_approvals_sends_each_its_own_way(
        broker: Broker, hsm: Hsm) -> None:
    """sign_batch is all or nothing: a large transfer among small ones makes the HSM
    refuse the batch, and then each is submitted alone - small ones signed at once, the
    large one waits for approvals, exactly as without batching."""
    calls = [transfer(10, 0), transfer(9000, 1), transfer(20, 2)]
    ids = [f.result() for f in AutoSigner(broker).sign_together(calls)]
    statuses = [broker.get(i).status for i in ids]
    assert statuses == [Status.EXECUTED, Status.PENDING, Status.EXECUTED]
    assert len(signed_now(hsm)) == 2  # and none from the refused batch
    assert not any("batchIndex" in e for e in signed_now(hsm))


def test_errors_stay_with_their_own_request(broker: Broker, hsm: Hsm) -> None:
    other = Call(Principal("x", "other-desk", frozenset({"business"})), "treasury", Action.USE,
                 transfer_payload("TST", 5, "bob", 1, 9), "TEST_TRANSFER", None, None)
    futures = AutoSigner(broker).sign_together([transfer(10, 0), other, transfer(11, 1)])
    with pytest.raises(NotFound):
        futures[1].result()
    assert broker.get(futures[0].result()).status == Status.EXECUTED
    assert broker.get(futures[2].result()).status == Status.EXECUTED


def test_a_blocked_key_refuses_every_request(broker: Broker, hsm: Hsm,
                                             people: dict[str, Approver]) -> None:
    block = hsm.begin("treasury", Action.BLOCK)
    hsm.execute(block.request_id, [people["t1"].approve(block.envelope)])
    futures = AutoSigner(broker).sign_together([transfer(10, 0), transfer(11, 1)])
    for f in futures:
        with pytest.raises(KeyBlocked):
            f.result()
    assert signed_now(hsm) == []


def test_a_lost_answer_is_never_signed_again(broker: Broker, hsm: Hsm) -> None:
    """The HSM signed, the reply was lost: the outcome is unknown to the broker, so each
    request fails (503) and none is tried again - the HSM's audit holds one signature
    per payload, and no broker row claims a result it never received."""
    flaky = LosesAnswers(hsm)
    broker.hsm = flaky
    futures = AutoSigner(broker).sign_together([transfer(10, 0), transfer(11, 1)])
    for f in futures:
        with pytest.raises(TransportError):
            f.result()
    assert flaky.calls == 1 and len(signed_now(hsm)) == 2


def test_a_caller_that_gave_up_is_not_signed_for(broker: Broker, hsm: Hsm) -> None:
    signer = AutoSigner(broker)
    gone = signer.submit(transfer(10, 0))
    gone.cancel()  # may lose the race with the worker; then it is simply signed
    kept = signer.submit(transfer(11, 1))
    assert broker.get(kept.result(timeout=10)).status == Status.EXECUTED
    assert len(signed_now(hsm)) == (1 if gone.cancelled() else 2)
    signer.close()


def test_the_worker_survives_a_failing_batch(broker: Broker, hsm: Hsm) -> None:
    def broken(_size: int) -> None:
        raise RuntimeError("metrics backend down")

    signer = AutoSigner(broker, on_batch=broken)
    with pytest.raises(RuntimeError):
        signer.submit(transfer(10, 0)).result(timeout=10)
    signer.on_batch = lambda _size: None
    assert broker.get(signer.submit(transfer(11, 1)).result(timeout=10)).status == (
        Status.EXECUTED)
    signer.close()


def test_concurrent_http_requests_are_batched_and_each_answered(
        tmp_path: Path, people: dict[str, Approver]) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'b.sqlite'}",
                        hsm_store=tmp_path / "hsm.sqlite", hsm_passphrase="autosign test",
                        hsm_so_passphrase="autosign officer", jwt_secret=SECRET)
    app = create_app(settings, scheduler=False)
    sizes: list[int] = []
    with TestClient(app) as api:
        app.state.autosigner.on_batch = sizes.append
        policy = tiered_policy([people["t1"], people["t2"], people["t3"]], [people["c1"]])
        r = api.post("/v1/key", json={"label": "treasury", "algorithm": "EC",
                                      "curveOid": "1.3.132.0.10", "policy": policy},
                     headers=bearer("key_admin"))
        assert r.status_code == 201, r.text

        def sign(i: int, amount: int) -> str:
            payload = base64.b64encode(transfer_payload("TST", amount, "bob", 1, i)).decode()
            r = api.post("/v1/sign", json={"signRequest": {
                "payload": payload, "payloadType": "TEST_TRANSFER",
                "signKeyName": "treasury"}}, headers=bearer("business"))
            assert r.status_code == 201, r.text
            status = api.get(f"/v1/request/{r.json()['signRequestId']}",
                             headers=bearer("business")).json()["status"]
            return str(status)

        assert sign(0, 10) == "EXECUTED"  # the first one teaches the broker: signs at once
        assert sign(100, 10) == "EXECUTED" and sizes == [1]  # so the next one is batched
        amounts = [10 + (i % 50) if i % 10 else 9000 for i in range(1, 81)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(sign, range(1, 81), amounts))
    assert statuses == ["PENDING" if a == 9000 else "EXECUTED" for a in amounts]
    assert len(sizes) > 1
