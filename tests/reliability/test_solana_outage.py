"""The Solana node's outage, injected like anvil's and the regtest node's
(:mod:`.test_node_outage`): the dev node (LiteSVM behind JSON-RPC) stops serving - its
port refuses connections - and starts again on the same port and ledger, as a validator
restarting on its ledger. A real outage outlives a blockhash (about a minute), so the
node moves to a new one while it is down.

While it is down, calls that need it are refused with 503 ``chain.node_unavailable`` and
store nothing; an approval is kept, and the transfer waits with the outage noted.
After it returns, the waiting transfers are signed (over a fresh blockhash) and land
once each, with no client action; a refused create succeeds with its Idempotency-Key.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from solders.keypair import Keypair

from chains.errors import NodeUnavailable
from chains.solana.client import SolanaRpcClient
from chains.solana.devnode import DevNode
from chains.solana.tx import LAMPORTS_PER_SIGNATURE
from custody.localnets import LocalNets
from tests.helpers import Approver
from tests.treasury_kit import DESK, answer, create_wallet, get, policy_config, wait_state

from .test_node_outage import (
    _created,
    _executions,
    _footprint,
    _post_transfer,
    _refused,
    _service,
    _signings,
    _treasury,
    _wait,
)

pytestmark = [pytest.mark.slow, pytest.mark.node]
SOL = 10**9


class SolanaNode:
    """The dev node, stopped (its port closed) and started again on the same ledger."""

    def __init__(self) -> None:
        self.node: DevNode | None = DevNode().start()
        self.url = self.node.url
        self.last = self.node
        self.client = SolanaRpcClient(self.url, timeout=5)

    def stop(self) -> None:
        assert self.node is not None
        self.node.stop()
        self.node = None

    def start(self) -> None:
        self.node = self.last = self.last.restarted().start()

    def expire_blockhash(self) -> None:
        """The blockhash moves on (while down too: the ledger is the node's, not the port's)."""
        with self.last.lock:
            self.last.svm.expire_blockhash()

    def close(self) -> None:
        if self.node is not None:
            self.stop()


@pytest.fixture
def sol() -> Iterator[SolanaNode]:
    node = SolanaNode()
    yield node
    node.close()


def _sol_wallet(api: TestClient, people: dict[str, Approver], sol: SolanaNode,
                ) -> dict[str, Any]:
    w = create_wallet(api, "sol-outage", "solana", "localnet", policy_config(
        [people["t1"], people["t2"], people["t3"]], [people["c1"]],
        {"SOL": {"small": "1", "medium": "10"}}))
    faucet = LocalNets(Path("/nonexistent"), chains=())
    faucet.sol = sol.last
    faucet.fund_sol(w["address"], 100 * SOL)
    return w


def test_solana_node_down_queues_transfers_and_each_lands_once(
        tmp_path: Path, sol: SolanaNode, people: dict[str, Approver]) -> None:
    """With the worker running: the last approval arrives during the outage; the
    transfer is signed only once the node is back (a Solana payload is rebuilt over a
    fresh blockhash right before the HSM signs), and lands once."""
    with _service(tmp_path, solana=sol.url) as api:
        w = _sol_wallet(api, people, sol)
        start = sol.client.balance(w["address"])
        medium_to, small_to = str(Keypair().pubkey()), str(Keypair().pubkey())
        m = _created(_post_transfer(api, w["id"], "SOL", "5", medium_to, "sol-medium"))
        answer(api, people["t1"], m["signRequestId"])

        sol.stop()
        down = time.monotonic()
        before = _footprint(api)
        _refused(_post_transfer(api, w["id"], "SOL", "0.5", small_to, "sol-during"))
        _refused(api.get(f"/v1/wallets/{w['id']}/balances", headers=DESK))
        assert _footprint(api) == before  # nothing stored, nothing asked of the HSM
        assert api.get("/readyz").status_code == 200
        answer(api, people["t2"], m["signRequestId"])  # 200: accepted and recorded
        _wait(lambda: "chain.node_unavailable" in (get(api, m["id"])["error"] or ""), 10,
              "the outage noted on the transfer", lambda: get(api, m["id"]))
        time.sleep(3)  # longer than a retry interval: still waiting, nothing signed
        assert get(api, m["id"])["state"] == "pending_approval"
        assert _executions(api, m["signRequestId"]) == 0
        sol.expire_blockhash()  # the outage outlived the blockhash of the draft

        sol.start()
        outage = time.monotonic() - down
        again = _created(_post_transfer(api, w["id"], "SOL", "0.5", small_to, "sol-during"))
        took = _wait(lambda: get(api, m["id"])["state"] == "confirmed", 30,
                     "the approved transfer confirmed after the node returned",
                     lambda: get(api, m["id"]))
        assert wait_state(api, again["id"], "confirmed")["error"] is None
        done = get(api, m["id"])
        assert done["error"] is None, done
        assert _executions(api, m["signRequestId"]) == 1
        assert _signings(api, w["keyLabel"]) == 2  # the medium and the small, once each
        assert sol.client.balance(medium_to) == 5 * SOL  # each landed once
        assert sol.client.balance(small_to) == SOL // 2
        spent = start - sol.client.balance(w["address"])
        assert spent == 5 * SOL + SOL // 2 + 2 * LAMPORTS_PER_SIGNATURE
        print(f"\nSolana node down {outage:.1f} s during the last approval; confirmed "
              f"{took:.1f} s after it returned")


@pytest.mark.parametrize("blockhash_moved", [False, True])
def test_solana_node_down_after_signing(tmp_path: Path, sol: SolanaNode,
                                        people: dict[str, Approver],
                                        blockhash_moved: bool) -> None:
    """Signed before the outage, its broadcast fails while the node is down and is kept;
    the worker is driven by hand, so every attempt is one the test made.

    If the blockhash it was signed over is still the node's, it lands once. If it moved on
    (an outage longer than a blockhash's life), the signed transaction can never land: the
    node proves it (blockhash gone, signature unknown), and the transfer gets a new sign
    request - the approved one is spent - which two traders approve again; signed over a
    fresh blockhash, it lands once (:mod:`.test_solana_resign` has the other cases)."""
    with _service(tmp_path, solana=sol.url, workers=False) as api:
        w = _sol_wallet(api, people, sol)
        start = sol.client.balance(w["address"])
        dest = str(Keypair().pubkey())
        t = _created(_post_transfer(api, w["id"], "SOL", "5", dest, "sol-signed"))
        answer(api, people["t1"], t["signRequestId"])
        answer(api, people["t2"], t["signRequestId"])  # released inside the call: signed
        assert get(api, t["id"])["state"] == "signed"

        sol.stop()
        treasury = _treasury(api)
        assert treasury.step() == 1  # the worker's pass: the broadcast fails, is kept
        waiting = get(api, t["id"])
        assert waiting["state"] == "signed", waiting
        assert "chain.node_unavailable" in (waiting["error"] or ""), waiting
        with pytest.raises(NodeUnavailable):
            treasury.advance(t["id"])
        if blockhash_moved:
            sol.expire_blockhash()

        sol.start()
        for _ in range(20):
            again = treasury.advance(t["id"])
            if again.state == "pending_approval":  # signed again: approved again
                answer(api, people["t1"], str(again.sign_request_id))
                answer(api, people["t2"], str(again.sign_request_id))
            if get(api, t["id"])["state"] in ("confirmed", "failed"):
                break
        done = get(api, t["id"])
        assert _executions(api, t["signRequestId"]) == 1  # never signed twice
        spent = start - sol.client.balance(w["address"])
        assert done["state"] == "confirmed" and done["error"] is None, done
        assert [h["state"] for h in done["history"]].count("broadcast") == 1
        assert sol.client.balance(dest) == 5 * SOL  # landed once
        assert spent == 5 * SOL + LAMPORTS_PER_SIGNATURE
        resigned = [h["resigned"] for h in done["history"] if "resigned" in h]
        assert len(resigned) == (1 if blockhash_moved else 0), done["history"]
        assert _signings(api, w["keyLabel"]) == 1 + len(resigned)
        print(f"\nsigned, then the node went down (blockhash moved: {blockhash_moved}): "
              f"{done['state']} ({done['error']})")


def test_solana_node_frozen_answers_503_within_the_client_timeout(
        tmp_path: Path, sol: SolanaNode, people: dict[str, Approver]) -> None:
    """The node accepts connections and never answers (its ledger lock held, like a
    SIGSTOPped validator): a create waits the RPC client's timeout (10 s) once, then 503,
    and stores nothing; created normally once the node answers again."""
    with _service(tmp_path, solana=sol.url, workers=False) as api:
        w = _sol_wallet(api, people, sol)
        dest = str(Keypair().pubkey())
        with sol.last.lock:
            begin = time.monotonic()
            r = _post_transfer(api, w["id"], "SOL", "0.5", dest, "sol-frozen")
            took = time.monotonic() - begin
        _refused(r)
        assert took < 15, took
        assert _footprint(api)["transfers"] == 0
        _created(_post_transfer(api, w["id"], "SOL", "0.5", dest, "sol-frozen"))
        print(f"\nSolana node frozen: refused with 503 after {took:.1f} s")
