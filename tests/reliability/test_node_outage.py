"""Faults injected into the chain nodes: anvil stopped (SIGTERM, its chain kept in a state
file) or frozen (SIGSTOP), the Bitcoin regtest node SIGKILLed (its mempool lost, like a
bitcoind with ``-persistmempool=0``) - each a real process, started again on the same
port and state while the treasury runs through HTTP.

While a node is down, calls that need it are refused clearly - 503 problem+json
``chain.node_unavailable`` with Retry-After - and create nothing (no transfer row, no sign
request, nothing asked of the HSM); ``/readyz`` stays ready (a node serves one chain, and
approvals and other chains go on: see ``approvals_app/routes/health.py``). Nothing
acknowledged is lost: a transfer approved or signed during the outage waits in its state
with the reason noted, and the worker signs and broadcasts it exactly once when the node
is back, with no client action.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from approvals_app.main import create_app
from approvals_app.settings import Settings
from chains.base import Chain
from chains.bitcoin.rpc import BitcoinRpc
from chains.errors import NodeUnavailable
from chains.ethereum.client import EthClient
from chains.ethereum.encoding import checksum
from custody.db import SignRequest
from custody.localnets import BURN, ETH_CHAIN_ID, LocalNets, find_anvil, free_port
from custody.treasury.models import TransferRecord
from custody.treasury.networks import ChainEndpoints
from custody.treasury.transfers import Treasury
from tests.api.test_api_tutorial import SECRET
from tests.helpers import Approver
from tests.treasury_kit import (
    ADMIN,
    DESK,
    answer,
    create_wallet,
    get,
    policy_config,
    wait_state,
)

pytestmark = [pytest.mark.slow, pytest.mark.node]
WEI = 10**18
ROOT = Path(__file__).resolve().parents[2]


# -- the nodes, as processes ------------------------------------------------------------


class Anvil:
    """anvil on a fixed port; its chain is dumped to a state file when it stops (SIGTERM)
    and loaded when it starts, so a stop and a start is the same chain coming back."""

    def __init__(self, data: Path) -> None:
        self.port = free_port()
        self.state = data / "anvil-state.json"
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = find_anvil()
        assert binary is not None
        self.proc = subprocess.Popen(  # the local binary, fixed arguments
            [binary, "--host", "127.0.0.1", "--port", str(self.port), "--quiet",
             "--chain-id", str(ETH_CHAIN_ID), "--state", str(self.state)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        probe = EthClient(self.url, timeout=2)
        deadline = time.monotonic() + 30
        while True:
            try:
                probe.chain_id()
                return
            except NodeUnavailable:
                assert self.proc.poll() is None and time.monotonic() < deadline, "no anvil"
                time.sleep(0.1)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=20)
        self.proc = None

    def running(self) -> Anvil:
        """Up, whatever the last test left (a failed one may have stopped or frozen it)."""
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGCONT)
        else:
            self.start()
        return self

    def close(self) -> None:
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGCONT)  # in case a test froze it
            self.stop()


class BitcoinNode:
    """``python -m chains.bitcoin.node`` on a fixed port; SIGKILL and start again on the
    same datadir (the node replays its block journal; the mempool is gone)."""

    def __init__(self, data: Path) -> None:
        self.port = free_port()
        self.datadir = data / "regtest"
        self.password = secrets.token_hex(16)
        self.url = f"http://custody:{self.password}@127.0.0.1:{self.port}"
        self.rpc = BitcoinRpc(f"http://127.0.0.1:{self.port}", "custody", self.password,
                              timeout=60)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(  # this interpreter, fixed arguments
            [sys.executable, "-m", "chains.bitcoin.node", "--datadir", str(self.datadir),
             "--rpcport", str(self.port), "--rpcuser", "custody",
             "--rpcpassword", self.password], cwd=ROOT, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # printed once it serves
        assert json.loads(line)["rpcport"] == self.port, line

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=20)
        self.proc = None

    def running(self) -> BitcoinNode:
        if self.proc is None:
            self.start()
        return self

    def close(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None


@pytest.fixture(scope="module")
def anvil_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anvil]:
    if find_anvil() is None and not os.environ.get("CI"):
        pytest.skip("anvil not installed")
    node = Anvil(tmp_path_factory.mktemp("anvil"))
    node.start()
    yield node
    node.close()


@pytest.fixture(scope="module")
def bitcoind_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BitcoinNode]:
    node = BitcoinNode(tmp_path_factory.mktemp("bitcoin"))
    node.start()
    yield node
    node.close()


@pytest.fixture
def anvil(anvil_process: Anvil) -> Anvil:
    return anvil_process.running()


@pytest.fixture
def bitcoind(bitcoind_process: BitcoinNode) -> BitcoinNode:
    return bitcoind_process.running()


def _faucet(anvil: Anvil | None = None, bitcoind: BitcoinNode | None = None) -> LocalNets:
    """The local networks' faucets, pointed at these node processes."""
    nets = LocalNets(Path("/nonexistent"), chains=())
    if anvil is not None:
        nets.eth = EthClient(anvil.url, expected_chain_id=ETH_CHAIN_ID)
    if bitcoind is not None:
        nets.btc_rpc = bitcoind.rpc
    return nets


# -- the service --------------------------------------------------------------------------


@contextmanager
def _service(tmp: Path, *, ethereum: str = "", bitcoin: str = "", solana: str = "",
             workers: bool = True) -> Iterator[TestClient]:
    settings = Settings(database_url=f"sqlite:///{tmp / 'broker.sqlite'}",
                        hsm_store=tmp / "hsm.sqlite", hsm_passphrase="node outage test",
                        hsm_so_passphrase="node outage so", jwt_secret=SECRET)
    chains = ChainEndpoints({Chain.BITCOIN: bitcoin, Chain.ETHEREUM: ethereum,
                             Chain.SOLANA: solana},
                            {Chain.BITCOIN: "regtest", Chain.ETHEREUM: str(ETH_CHAIN_ID),
                             Chain.SOLANA: "localnet"},
                            {"bitcoin": 1, "ethereum": 1, "solana": 1})
    with TestClient(create_app(settings, chains=chains, scheduler=workers)) as client:
        yield client


def _treasury(api: TestClient) -> Treasury:
    treasury: Treasury = api.app.state.treasury  # type: ignore[attr-defined]
    return treasury


def _footprint(api: TestClient) -> dict[str, int]:
    """What a call can leave behind: transfer rows, sign requests, HSM requests/signing."""
    with _treasury(api).sessions() as s:
        transfers = s.scalar(select(func.count()).select_from(TransferRecord)) or 0
        requests = s.scalar(select(func.count()).select_from(SignRequest)) or 0
    hsm = api.app.state.hsm  # type: ignore[attr-defined]
    hsm_ops = sum(1 for e in hsm.audit_entries(1, 100_000)
                  if e.event.get("op") in ("request.begin", "request.execute", "sign.now"))
    return {"transfers": transfers, "signRequests": requests, "hsmOps": hsm_ops}


def _executions(api: TestClient, request_id: str) -> int:
    hsm = api.app.state.hsm  # type: ignore[attr-defined]
    return sum(1 for e in hsm.audit_entries(1, 100_000)
               if e.event.get("op") == "request.execute"
               and e.event.get("requestId") == request_id and e.event.get("result") == "ok")


def _signings(api: TestClient, key_label: str) -> int:
    """Signatures the HSM made with a wallet's key (approved or auto tier)."""
    hsm = api.app.state.hsm  # type: ignore[attr-defined]
    return sum(1 for e in hsm.audit_entries(1, 100_000)
               if e.event.get("op") in ("request.execute", "sign.now")
               and e.event.get("label") == key_label and e.event.get("result") == "ok")


def _refused(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert int(r.headers["retry-after"]) > 0
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "chain.node_unavailable", r.text


def _post_transfer(api: TestClient, wallet: str, asset: str, amount: str, destination: str,
                   key: str) -> httpx.Response:
    r: httpx.Response = api.post("/v1/transfers", json={
        "wallet": wallet, "asset": asset, "amount": amount, "destination": destination},
        headers={**DESK, "Idempotency-Key": key})
    return r


def _created(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 201, r.text
    return dict(r.json())


def _eth_wallet(api: TestClient, people: dict[str, Approver], faucet: LocalNets,
                ) -> dict[str, Any]:
    w = create_wallet(api, f"eth-{os.urandom(3).hex()}", "ethereum", str(ETH_CHAIN_ID),
                      policy_config([people["t1"], people["t2"], people["t3"]], [people["c1"]],
                                    {"ETH": {"small": "1", "medium": "10"}}))
    faucet.fund_ether(w["address"], 50 * WEI)
    return w


def _wait(predicate: Any, timeout: float, what: str, show: Any = None) -> float:
    """Poll until ``predicate()``; returns the seconds it took. ``show()`` says what there
    was instead, when it times out."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} not within {timeout} s: "
                                 f"{show() if show is not None else ''}")
        time.sleep(0.1)
    return time.monotonic() - start


# -- Ethereum ---------------------------------------------------------------------------


def test_anvil_stopped_refuses_new_work_and_keeps_a_signed_transfer(
        tmp_path: Path, anvil: Anvil, people: dict[str, Approver]) -> None:
    """The worker is driven by hand here, so the transfer is signed before the outage and
    every broadcast attempt is one the test made."""
    faucet = _faucet(anvil)
    eth = faucet.eth
    assert eth is not None
    with _service(tmp_path, ethereum=anvil.url, workers=False) as api:
        w = _eth_wallet(api, people, faucet)
        dest = checksum(os.urandom(20))
        nonce_before = eth.pending_nonce(w["address"])
        t = _created(_post_transfer(api, w["id"], "ETH", "5", dest, "medium-1"))
        answer(api, people["t1"], t["signRequestId"])
        answer(api, people["t2"], t["signRequestId"])  # released inside the call: signed
        assert get(api, t["id"])["state"] == "signed"

        anvil.stop()
        down = time.monotonic()
        before = _footprint(api)
        refused = 0
        while time.monotonic() - down < 3:  # a desk retrying: each refused, none stored
            _refused(_post_transfer(api, w["id"], "ETH", "0.5", dest, "during-outage"))
            refused += 1
            assert _footprint(api) == before, refused
            time.sleep(0.25)
        _refused(api.get(f"/v1/wallets/{w['id']}/balances", headers=DESK))
        ready = api.get("/readyz")
        assert ready.status_code == 200, ready.text  # the node is not the API's to be ready

        treasury = _treasury(api)
        assert treasury.step() == 1  # the worker's pass: the broadcast fails, is kept
        waiting = get(api, t["id"])
        assert waiting["state"] == "signed" and waiting["txid"], waiting
        assert "chain.node_unavailable" in (waiting["error"] or ""), waiting
        for _ in range(3):  # more passes change nothing: not failed for ever
            with pytest.raises(NodeUnavailable):
                treasury.advance(t["id"])
        assert get(api, t["id"])["state"] == "signed"

        anvil.start()
        outage = time.monotonic() - down
        # the refused create succeeds now with the same key (small: signed at once)
        again = _created(_post_transfer(api, w["id"], "ETH", "0.5", dest, "during-outage"))
        for _ in range(20):
            treasury.advance(t["id"])
            treasury.advance(again["id"])
            if {get(api, x)["state"] for x in (t["id"], again["id"])} == {"confirmed"}:
                break
        done = get(api, t["id"])
        assert done["state"] == "confirmed" and done["error"] is None, done
        assert get(api, again["id"])["state"] == "confirmed"
        assert [h["state"] for h in done["history"]].count("broadcast") == 1
        assert _executions(api, t["signRequestId"]) == 1  # signed once
        assert done["nonce"] == nonce_before
        assert eth.pending_nonce(w["address"]) == nonce_before + 2  # two transactions
        assert eth.balance(dest) == 5 * WEI + WEI // 2  # each arrived once
        print(f"\nanvil stopped {outage:.1f} s: {refused} creates and 1 balance read refused "
              "with 503, the signed transfer confirmed after it returned")


def test_anvil_stopped_while_the_last_approval_arrives(
        tmp_path: Path, anvil: Anvil, people: dict[str, Approver]) -> None:
    """The approval is kept; Ethereum takes its nonce and fees at release, which needs the
    node, so the HSM signs only once it is back - by the release scheduler, unasked."""
    faucet = _faucet(anvil)
    eth = faucet.eth
    assert eth is not None
    with _service(tmp_path, ethereum=anvil.url) as api:
        w = _eth_wallet(api, people, faucet)
        dest = checksum(os.urandom(20))
        nonce_before = eth.pending_nonce(w["address"])
        t = _created(_post_transfer(api, w["id"], "ETH", "5", dest, "medium-2"))
        answer(api, people["t1"], t["signRequestId"])

        anvil.stop()
        down = time.monotonic()
        answer(api, people["t2"], t["signRequestId"])  # 200: accepted and recorded
        _wait(lambda: "chain.node_unavailable" in (get(api, t["id"])["error"] or ""), 10,
              "the outage noted on the transfer")
        time.sleep(6)  # longer than a retry interval: still waiting, nothing signed
        waiting = get(api, t["id"])
        assert waiting["state"] == "pending_approval", waiting
        assert _executions(api, t["signRequestId"]) == 0

        anvil.start()
        outage = time.monotonic() - down
        took = _wait(lambda: get(api, t["id"])["state"] == "confirmed", 30,
                     "the approved transfer confirmed after the node returned")
        done = get(api, t["id"])
        assert done["error"] is None and done["nonce"] == nonce_before, done
        assert _executions(api, t["signRequestId"]) == 1
        assert eth.pending_nonce(w["address"]) == nonce_before + 1
        assert eth.balance(dest) == 5 * WEI
        print(f"\nanvil stopped {outage:.1f} s during the last approval; confirmed "
              f"{took:.1f} s after it returned")


def test_anvil_frozen_answers_503_within_the_client_timeout(
        tmp_path: Path, anvil: Anvil, people: dict[str, Approver]) -> None:
    """SIGSTOP: the node accepts connections and never answers. A call waits the client
    timeout (10 s) once - not web3's five retries on top (about a minute) - then 503."""
    faucet = _faucet(anvil)
    with _service(tmp_path, ethereum=anvil.url, workers=False) as api:
        w = _eth_wallet(api, people, faucet)
        dest = checksum(os.urandom(20))
        assert anvil.proc is not None
        os.kill(anvil.proc.pid, signal.SIGSTOP)
        try:
            start = time.monotonic()
            r = _post_transfer(api, w["id"], "ETH", "0.5", dest, "frozen")
            took = time.monotonic() - start
        finally:
            os.kill(anvil.proc.pid, signal.SIGCONT)
        _refused(r)
        assert took < 15, took
        assert "timed out" in r.json()["detail"], r.text
        assert _footprint(api)["transfers"] == 0
        _created(_post_transfer(api, w["id"], "ETH", "0.5", dest, "frozen"))  # back: created
        print(f"\nanvil frozen: refused with 503 after {took:.1f} s")


# -- Bitcoin ----------------------------------------------------------------------------


def _btc_wallet(api: TestClient, people: dict[str, Approver], faucet: LocalNets,
                ) -> dict[str, Any]:
    w = create_wallet(api, f"btc-{os.urandom(3).hex()}", "bitcoin", "regtest", policy_config(
        [people["t1"], people["t2"], people["t3"]], [people["c1"]],
        {"BTC": {"small": "1", "medium": "10"}}))
    for _ in range(2):
        r = api.post(f"/v1/wallets/{w['id']}/addresses", json={"label": "funding"},
                     headers=DESK)
        assert r.status_code == 201, r.text
        faucet.mine(1, r.json()["address"])
    faucet.mine(100)
    return w


def _in_blocks(rpc: BitcoinRpc, txid: str) -> int:
    """How many blocks of the best chain hold ``txid``."""
    count, height = 0, rpc.getblockcount()
    for h in range(max(0, height - 20), height + 1):
        block = rpc.call("getblock", rpc.call("getblockhash", h), 1)
        count += block["tx"].count(txid)
    return count


def test_bitcoin_node_killed_while_a_transfer_is_signed(
        tmp_path: Path, bitcoind: BitcoinNode, people: dict[str, Approver]) -> None:
    """SIGKILL with the worker running: creates, deposit addresses and balances are
    refused; the last approval is accepted and signed (a Bitcoin transfer's coins were
    chosen at request), its broadcast waits and goes out once the node is back."""
    faucet = _faucet(bitcoind=bitcoind)
    with _service(tmp_path, bitcoin=bitcoind.url) as api:
        w = _btc_wallet(api, people, faucet)
        t = _created(_post_transfer(api, w["id"], "BTC", "5", BURN, "btc-medium"))
        answer(api, people["t1"], t["signRequestId"])

        bitcoind.kill()
        down = time.monotonic()
        before = _footprint(api)
        _refused(_post_transfer(api, w["id"], "BTC", "0.5", BURN, "btc-during"))
        _refused(api.post(f"/v1/wallets/{w['id']}/addresses", json={"label": "x"},
                          headers=DESK))
        _refused(api.get(f"/v1/wallets/{w['id']}/balances", headers=DESK))
        assert _footprint(api) == before
        addresses = api.get(f"/v1/wallets/{w['id']}/addresses", headers=ADMIN).json()
        assert [a["label"] for a in addresses].count("x") == 0  # none handed out
        assert api.get("/readyz").status_code == 200

        answer(api, people["t2"], t["signRequestId"])  # signed in the call
        _wait(lambda: "chain.node_unavailable" in (get(api, t["id"])["error"] or ""), 10,
              "the failed broadcast noted")
        waiting = get(api, t["id"])
        assert waiting["state"] == "signed", waiting
        assert _executions(api, t["signRequestId"]) == 1

        bitcoind.start()
        outage = time.monotonic() - down
        took = _wait(lambda: get(api, t["id"])["state"] == "broadcast", 20,
                     "the worker's broadcast after the node returned")
        faucet.mine(1)
        done = wait_state(api, t["id"], "confirmed", timeout=20)
        assert done["error"] is None, done
        assert _in_blocks(bitcoind.rpc, done["txid"]) == 1
        assert _executions(api, t["signRequestId"]) == 1
        _created(_post_transfer(api, w["id"], "BTC", "0.5", BURN, "btc-during"))
        print(f"\nregtest node killed {outage:.1f} s; the signed transfer broadcast "
              f"{took:.1f} s after it returned")


def test_bitcoin_node_killed_after_broadcast_forgets_the_transaction(
        tmp_path: Path, bitcoind: BitcoinNode, people: dict[str, Approver]) -> None:
    """The node acknowledged the broadcast, then died with it only in its mempool. The
    transfer must not wait for ever on a transaction no node has: the worker sends the
    same signed bytes again, and it confirms once."""
    faucet = _faucet(bitcoind=bitcoind)
    with _service(tmp_path, bitcoin=bitcoind.url) as api:
        w = _btc_wallet(api, people, faucet)
        t = _created(_post_transfer(api, w["id"], "BTC", "0.5", BURN, "btc-small"))
        sent = wait_state(api, t["id"], "broadcast", timeout=20)
        assert sent["txid"] in bitcoind.rpc.call("getrawmempool")

        bitcoind.kill()
        bitcoind.start()
        assert sent["txid"] not in bitcoind.rpc.call("getrawmempool")  # forgotten
        took = _wait(lambda: sent["txid"] in bitcoind.rpc.call("getrawmempool"), 20,
                     "the transaction sent again", lambda: get(api, t["id"]))
        faucet.mine(1)
        done = wait_state(api, t["id"], "confirmed", timeout=20)
        assert _in_blocks(bitcoind.rpc, done["txid"]) == 1
        assert _signings(api, w["keyLabel"]) == 1  # signed once (auto tier), sent twice
        print(f"\nregtest node lost its mempool; the transaction was sent again "
              f"{took:.1f} s after it returned")
