"""Crashes in the middle of a transfer: a new process resumes without a second signature
or broadcast, and without reusing or skipping an Ethereum nonce.

Each case lets a real transfer run on anvil until a chosen point, makes the process
"die" there (an exception nothing catches, then every object is dropped and the HSM
store and database are reopened by a fresh app, as after a restart), and checks:
the HSM executed the request exactly once (its audit log), the chain holds exactly one
transaction per transfer (the account's nonce), and the money arrived once.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from approvals_app.main import create_app
from approvals_app.settings import Settings
from chains.ethereum.client import EthClient
from chains.ethereum.encoding import checksum
from custody.broker import Broker
from custody.localnets import LocalNets, find_anvil
from custody.treasury.transfers import Treasury
from tests.api.test_api_tutorial import SECRET
from tests.helpers import Approver
from tests.treasury_kit import DESK, answer, create_wallet, get, policy_config, transfer

pytestmark = [pytest.mark.slow, pytest.mark.node]
WEI = 10**18


class Crash(BaseException):
    """The process dies here (BaseException: no handler in the code under test sees it)."""


@pytest.fixture(scope="module")
def nets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNets]:
    if find_anvil() is None and not os.environ.get("CI"):
        pytest.skip("anvil not installed")
    with LocalNets(tmp_path_factory.mktemp("nets"), chains=("ethereum",)) as n:
        yield n


class Service:
    """The API process: opened, crashed, reopened on the same files."""

    def __init__(self, tmp: Path, nets: LocalNets) -> None:
        self.settings = Settings(database_url=f"sqlite:///{tmp / 'broker.sqlite'}",
                                 hsm_store=tmp / "hsm.sqlite", hsm_passphrase="resume test",
                                 hsm_so_passphrase="resume so", jwt_secret=SECRET)
        self.nets = nets
        self.client: TestClient | None = None
        self.start()

    def start(self) -> TestClient:
        # no background workers: the test decides when each step runs
        app = create_app(self.settings, chains=self.nets.endpoints(), scheduler=False)
        self.client = TestClient(app)
        self.client.__enter__()
        return self.client

    @property
    def treasury(self) -> Treasury:
        assert self.client is not None
        treasury: Treasury = self.client.app.state.treasury  # type: ignore[attr-defined]
        return treasury

    @property
    def broker(self) -> Broker:
        assert self.client is not None
        broker: Broker = self.client.app.state.broker  # type: ignore[attr-defined]
        return broker

    def restart(self) -> TestClient:
        assert self.client is not None
        hsm = self.client.app.state.hsm  # type: ignore[attr-defined]
        # It died: no orderly shutdown (kill -9). A crash inside a request leaves the
        # client's event-loop portal cancelled, so closing it may raise either error.
        with contextlib.suppress(RuntimeError, concurrent.futures.CancelledError):
            self.client.__exit__(None, None, None)
        hsm.close()
        return self.start()

    def executions(self, request_id: str) -> int:
        assert self.client is not None
        hsm = self.client.app.state.hsm  # type: ignore[attr-defined]
        return sum(1 for e in hsm.audit_entries(1, 100_000)
                   if e.event.get("op") == "request.execute"
                   and e.event.get("requestId") == request_id and e.event.get("result") == "ok")


@pytest.fixture
def service(tmp_path: Path, nets: LocalNets) -> Iterator[Service]:
    s = Service(tmp_path, nets)
    yield s
    s.restart()
    assert s.client is not None
    s.client.__exit__(None, None, None)


def _wallet(service: Service, people: dict[str, Approver]) -> dict[str, Any]:
    assert service.client is not None
    w = create_wallet(service.client, f"eth-{os.urandom(3).hex()}", "ethereum", "31337",
                      policy_config([people["t1"], people["t2"], people["t3"]],
                                    [people["c1"]],
                                    {"ETH": {"small": "1", "medium": "10"}}))
    service.nets.fund_ether(w["address"], 50 * WEI)
    return w


def _funded(service: Service, people: dict[str, Approver],
            ) -> tuple[dict[str, Any], EthClient, str, int]:
    """A funded wallet, its node, a fresh destination and the wallet's next nonce."""
    assert service.client is not None
    w = _wallet(service, people)
    eth = service.nets.eth
    assert eth is not None
    return w, eth, checksum(os.urandom(20)), eth.pending_nonce(w["address"])


def _died(value: BaseException) -> bool:
    """The call ended in the armed crash. Through the test client it arrives as itself,
    wrapped in an exception group, or - when the uncaught BaseException tears the client's
    event-loop portal down first (about 1 run in 8) - as that portal's cancellation."""
    return "Crash" in repr(value) or isinstance(value, concurrent.futures.CancelledError)


def _crash_once(target: Any, name: str, when: Callable[..., bool]) -> None:
    original = getattr(target, name)
    fired: list[bool] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not fired and when(*args, **kwargs):
            fired.append(True)
            raise Crash(name)
        return original(*args, **kwargs)

    setattr(target, name, wrapper)


def _finish(service: Service, transfer_id: str) -> dict[str, Any]:
    assert service.client is not None
    for _ in range(50):
        service.treasury.advance(transfer_id)
        t = get(service.client, transfer_id)
        if t["state"] == "confirmed":
            return t
    raise AssertionError(f"did not confirm: {t}")


@pytest.mark.parametrize("point", ["hsm-executed-not-recorded", "after-nonce-before-execute",
                                   "broadcast-not-recorded"])
def test_a_crash_resumes_without_repeating(service: Service, people: dict[str, Approver],
                                           point: str) -> None:
    w, eth, dest, before = _funded(service, people)
    t = transfer(service.client, w["id"], "ETH", "5", dest)  # medium: two traders
    answer(service.client, people["t1"], t["signRequestId"])
    if point == "hsm-executed-not-recorded":
        _crash_once(service.broker.store, "finish", lambda rid, status, **_: status == "EXECUTED")
    elif point == "after-nonce-before-execute":  # the last approval's one HSM call
        _crash_once(service.broker.hsm, "approve", lambda *_a, **_k: True)
    with pytest.raises(BaseException) as died:  # through HTTP it arrives wrapped in a group
        if point == "broadcast-not-recorded":
            answer(service.client, people["t2"], t["signRequestId"])
            planner = service.treasury.networks.planner("ethereum")
            original = planner.broadcast

            def sent_then_died(raw: bytes) -> str:
                original(raw)  # the node has it
                raise Crash("after broadcast")

            planner.broadcast = sent_then_died  # type: ignore[method-assign]
            service.treasury.advance(t["id"])
        else:
            answer(service.client, people["t2"], t["signRequestId"])
    assert _died(died.value)
    service.restart()
    if point == "after-nonce-before-execute":  # the HSM never saw the approval, nor
        answer(service.client, people["t2"], t["signRequestId"])  # answered it: retried
    done = _finish(service, t["id"])
    assert service.executions(t["signRequestId"]) == 1  # signed once
    assert eth.pending_nonce(w["address"]) == before + 1  # one transaction on chain
    assert done["nonce"] == before
    assert eth.balance(dest) == 5 * WEI  # arrived once
    # the next transfer takes the next nonce: none reused, none skipped
    nxt = transfer(service.client, w["id"], "ETH", "0.5", dest)
    assert _finish(service, nxt["id"])["nonce"] == before + 1


def test_a_transfer_create_cut_short_is_answered_by_its_retry(
        service: Service, people: dict[str, Approver], monkeypatch: pytest.MonkeyPatch) -> None:
    """The process dies after the transfer was recorded, before the call answered: the
    client's retry with the same Idempotency-Key (once the dead attempt's lease ran out)
    gets that transfer - not a second one, not 'in progress' for ever - and it moves once."""
    from custody import idempotency
    from custody.treasury import ledger

    monkeypatch.setattr(idempotency, "LEASE_SECONDS", 0.3)
    monkeypatch.setattr(ledger, "SUBMIT_LEASE_SECONDS", 0.3)
    w, eth, dest, before = _funded(service, people)
    _crash_once(service.treasury.intake, "submit", lambda *_a, **_k: True)
    body = {"wallet": w["id"], "asset": "ETH", "amount": "0.5", "destination": dest}
    headers = {**DESK, "Idempotency-Key": "desk-run-7"}
    with pytest.raises(BaseException) as died:
        service.client.post("/v1/transfers", json=body, headers=headers)
    assert _died(died.value)
    service.restart()
    assert service.client is not None
    time.sleep(0.4)
    first = service.client.post("/v1/transfers", json=body, headers=headers)
    assert first.status_code == 201, first.text
    again = service.client.post("/v1/transfers", json=body, headers=headers)
    assert again.json()["id"] == first.json()["id"]
    listed = service.client.get("/v1/transfers", params={"wallet": w["id"]}, headers=DESK)
    assert [t["id"] for t in listed.json()] == [first.json()["id"]]
    done = _finish(service, first.json()["id"])
    assert done["nonce"] == before and eth.pending_nonce(w["address"]) == before + 1
    assert eth.balance(dest) == WEI // 2  # arrived once
