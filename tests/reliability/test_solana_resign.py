"""Issue 16: a Solana transfer whose signed transaction expired before it landed is signed
again - under a new sign request, under the key's policy again - and lands once.

The dev node (LiteSVM behind JSON-RPC) takes a transaction over its latest blockhash only;
moving the blockhash on (``expire_blockhash``) stands for a crash, an outage or load that
held the broadcast back past the blockhash's life. The worker is driven by hand (no
background threads), so every step is one the test made; a crash is an exception nothing
in the code under test catches, raised right after (or before) the step it interrupts,
after which the next pass runs from what the database and the HSM hold.

Each case checks the money on the node (the destination holds the amount once; the wallet
paid it and one signature fee: an expired transaction costs nothing) and the HSM's audit
log (one signature per attempt, never two for one request).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from solders.keypair import Keypair

from chains.solana.tx import LAMPORTS_PER_SIGNATURE
from custody.treasury.intake import hsm_request_id
from custody.treasury.ledger import MAX_RESIGNS, SUBMIT_LEASE_SECONDS
from custody.treasury.transfers import Treasury
from tests.helpers import Approver
from tests.treasury_kit import answer, get

from .test_node_outage import (
    _created,
    _executions,
    _post_transfer,
    _service,
    _signings,
    _treasury,
)
from .test_solana_outage import SOL, SolanaNode, _sol_wallet

pytestmark = [pytest.mark.slow, pytest.mark.node]


@pytest.fixture(name="sol")
def _sol_node() -> Iterator[SolanaNode]:
    node = SolanaNode()
    yield node
    node.close()


class Crash(BaseException):
    """The process dies here (BaseException: no handler in the code under test sees it)."""


def _crash(obj: Any, name: str, *, after: bool) -> Callable[[], None]:
    """Make ``obj.name`` die before or after doing its work, once; returns the undo."""
    real = getattr(obj, name)

    def dying(*args: Any, **kwargs: Any) -> Any:
        setattr(obj, name, real)
        if not after:
            raise Crash(name)
        real(*args, **kwargs)
        raise Crash(name)

    setattr(obj, name, dying)
    return lambda: setattr(obj, name, real)


def _drive(treasury: Treasury, transfer_id: str, passes: int = 10) -> None:
    for _ in range(passes):
        t = treasury.advance(transfer_id)
        if t.state in ("confirmed", "failed", "pending_approval"):
            return


def _resigned(t: dict[str, Any]) -> list[dict[str, Any]]:
    return [h["resigned"] for h in t["history"] if "resigned" in h]


def _landed_once(sol: SolanaNode, w: dict[str, Any], start: int, dest: str,
                 amount: int) -> None:
    assert sol.client.balance(dest) == amount  # arrived once
    assert start - sol.client.balance(w["address"]) == amount + LAMPORTS_PER_SIGNATURE


def test_expired_before_broadcast_is_signed_again_and_lands_once(
        tmp_path: Path, sol: SolanaNode, people: dict[str, Approver]) -> None:
    """Auto tier: signed at its create, its blockhash gone before the worker broadcasts.
    The node refuses it, proves it can never land; a new request (sign_now again, counted
    again in the HSM's velocity ledger) signs it over a fresh blockhash; it lands once.
    The history keeps the dead transaction's id and why it was signed again."""
    with _service(tmp_path, solana=sol.url, workers=False) as api:
        w = _sol_wallet(api, people, sol)
        start, dest = sol.client.balance(w["address"]), str(Keypair().pubkey())
        t = _created(_post_transfer(api, w["id"], "SOL", "0.5", dest, "resign-small"))
        assert get(api, t["id"])["state"] == "signed"
        first = get(api, t["id"])
        sol.expire_blockhash()
        treasury = _treasury(api)
        _drive(treasury, t["id"])
        done = get(api, t["id"])
        assert done["state"] == "confirmed" and done["error"] is None, done
        (resign,) = _resigned(done)
        assert resign["txid"] == first["txid"] != done["txid"]
        assert resign["signRequestId"] == first["signRequestId"] == hsm_request_id(t["id"])
        assert "BlockhashNotFound" in str(resign["reason"])
        assert done["signRequestId"] == hsm_request_id(t["id"], 2)
        assert _signings(api, w["keyLabel"]) == 2  # one per attempt
        assert sol.client.signature_statuses([first["txid"]]) == [None]  # never landed
        _landed_once(sol, w, start, dest, SOL // 2)
        states = [h["state"] for h in done["history"]]
        assert states == ["requested", "signed", "requested", "signed", "broadcast",
                          "confirmed"], states


@pytest.mark.parametrize(("where", "after"), [
    ("resign", False),  # proven dead, the re-sign not committed
    ("resign", True),  # the re-sign committed, no new request raised
    ("submit", True),  # the HSM signed the new request, the transfer never heard
])
def test_a_crash_around_the_resign_signs_each_attempt_once(
        tmp_path: Path, sol: SolanaNode, people: dict[str, Approver],
        where: str, after: bool) -> None:
    """The process dies at a chosen point of the re-sign; the next pass carries on from
    the database and the HSM: the old transaction proven dead again (still dead), or the
    committed re-sign submitted, or the HSM's signature adopted - never a third."""
    with _service(tmp_path, solana=sol.url, workers=False) as api:
        w = _sol_wallet(api, people, sol)
        start, dest = sol.client.balance(w["address"]), str(Keypair().pubkey())
        t = _created(_post_transfer(api, w["id"], "SOL", "0.5", dest, f"crash-{where}"))
        sol.expire_blockhash()
        treasury = _treasury(api)
        target = treasury.ledger if where == "resign" else treasury.broker
        undo = _crash(target, where, after=after)
        try:
            with pytest.raises(Crash):
                _drive(treasury, t["id"])
        finally:
            undo()
        crashed = get(api, t["id"])
        assert crashed["state"] == ("signed" if not after else "requested"), crashed
        assert _signings(api, w["keyLabel"]) == (2 if where == "submit" else 1)
        if where == "submit":  # the dead submitter's lease runs out first
            treasury.ledger.clock = lambda: time.time() + SUBMIT_LEASE_SECONDS + 1
        assert treasury.step() == 1  # the worker's next pass
        _drive(treasury, t["id"])
        done = get(api, t["id"])
        assert done["state"] == "confirmed", done
        assert len(_resigned(done)) == 1
        assert _signings(api, w["keyLabel"]) == 2
        assert _executions(api, hsm_request_id(t["id"], 2)) == 0  # auto tier: sign.now
        _landed_once(sol, w, start, dest, SOL // 2)


def test_landed_before_the_crash_ends_confirmed_without_a_second_signature(
        tmp_path: Path, sol: SolanaNode, people: dict[str, Approver]) -> None:
    """The first broadcast landed, then the process died before recording it; by the
    retry the blockhash is gone, so the node refuses the same bytes. Its signature's
    status says it landed: confirmed, one transaction, nothing signed again."""
    with _service(tmp_path, solana=sol.url, workers=False) as api:
        w = _sol_wallet(api, people, sol)
        start, dest = sol.client.balance(w["address"]), str(Keypair().pubkey())
        t = _created(_post_transfer(api, w["id"], "SOL", "0.5", dest, "landed"))
        signed = get(api, t["id"])
        treasury = _treasury(api)
        planner = treasury.networks.planner("solana")
        record = treasury.ledger.load(t["id"])
        planner.broadcast(base64.b64decode(record.raw_b64 or ""))  # the lost broadcast
        sol.expire_blockhash()
        assert not planner.expired(record)  # landed: not dead, whatever the blockhash
        _drive(treasury, t["id"])
        done = get(api, t["id"])
        assert done["state"] == "confirmed" and done["txid"] == signed["txid"], done
        assert _resigned(done) == []
        assert _signings(api, w["keyLabel"]) == 1
        _landed_once(sol, w, start, dest, SOL // 2)


def test_a_medium_transfer_needs_its_approvals_again(
        tmp_path: Path, sol: SolanaNode, people: dict[str, Approver]) -> None:
    """Medium tier: the approved request is spent once executed, and the HSM never
    re-signs an executed request. The new request waits for two traders again - one is not
    enough - and its transaction lands once."""
    with _service(tmp_path, solana=sol.url, workers=False) as api:
        w = _sol_wallet(api, people, sol)
        start, dest = sol.client.balance(w["address"]), str(Keypair().pubkey())
        t = _created(_post_transfer(api, w["id"], "SOL", "5", dest, "resign-medium"))
        assert _treasury(api).ledger.earlier_attempts([t["signRequestId"]]) == {}
        answer(api, people["t1"], t["signRequestId"])
        answer(api, people["t2"], t["signRequestId"])
        assert get(api, t["id"])["state"] == "signed"
        sol.expire_blockhash()
        treasury = _treasury(api)
        _drive(treasury, t["id"])
        again = get(api, t["id"])
        assert again["state"] == "pending_approval", again
        assert again["signRequestId"] == hsm_request_id(t["id"], 2)
        assert _executions(api, t["signRequestId"]) == 1
        # what the approvers' page shows of why the same transfer asks again: the
        # broker's record of the transfer (its dead transaction), never caller-set metadata
        shown = treasury.ledger.earlier_attempts([again["signRequestId"]])[
            again["signRequestId"]]
        assert [a["txid"] for a in shown] == [r["txid"] for r in _resigned(again)]
        assert shown[0]["txid"] and shown[0]["reason"]
        answer(api, people["t1"], again["signRequestId"])
        _drive(treasury, t["id"])
        assert get(api, t["id"])["state"] == "pending_approval"  # one trader: not enough
        answer(api, people["t3"], again["signRequestId"])
        _drive(treasury, t["id"])
        done = get(api, t["id"])
        assert done["state"] == "confirmed", done
        assert _executions(api, again["signRequestId"]) == 1
        assert _signings(api, w["keyLabel"]) == 2
        _landed_once(sol, w, start, dest, 5 * SOL)


def test_the_resigns_are_bounded(tmp_path: Path, sol: SolanaNode,
                                 people: dict[str, Approver]) -> None:
    """Every attempt expires before its broadcast: after MAX_RESIGNS re-signs the transfer
    fails with a clear error; nothing moved, no fee paid."""
    with _service(tmp_path, solana=sol.url, workers=False) as api:
        w = _sol_wallet(api, people, sol)
        start, dest = sol.client.balance(w["address"]), str(Keypair().pubkey())
        t = _created(_post_transfer(api, w["id"], "SOL", "0.5", dest, "resign-bound"))
        treasury = _treasury(api)
        for _ in range(MAX_RESIGNS + 1):
            assert get(api, t["id"])["state"] == "signed"
            sol.expire_blockhash()
            treasury.advance(t["id"])
        done = get(api, t["id"])
        assert done["state"] == "failed", done
        assert f"signed {MAX_RESIGNS + 1} times" in done["error"], done
        assert len(_resigned(done)) == MAX_RESIGNS
        assert _signings(api, w["keyLabel"]) == MAX_RESIGNS + 1
        assert sol.client.balance(dest) == 0
        assert sol.client.balance(w["address"]) == start


def test_not_signed_again_until_the_node_proves_it(tmp_path: Path, sol: SolanaNode,
                                                  people: dict[str, Approver]) -> None:
    """The node refuses the transaction for its blockhash, but its block height is not
    past the one recorded (a node behind the one that gave the blockhash): not proven, so
    the transfer stays signed with the reason noted and nothing is signed again; once the
    height passes, it is."""
    with _service(tmp_path, solana=sol.url, workers=False) as api:
        w = _sol_wallet(api, people, sol)
        start, dest = sol.client.balance(w["address"]), str(Keypair().pubkey())
        t = _created(_post_transfer(api, w["id"], "SOL", "0.5", dest, "not-proven"))
        height = sol.client.block_height()
        sol.expire_blockhash()
        node, treasury = sol.last, _treasury(api)
        real = node.methods["getBlockHeight"]
        node.methods["getBlockHeight"] = lambda _p: height  # the lagging node's answer
        for _ in range(3):
            treasury.advance(t["id"])
        waiting = get(api, t["id"])
        assert waiting["state"] == "signed", waiting
        assert "not yet provably expired" in waiting["error"], waiting
        assert _signings(api, w["keyLabel"]) == 1 and _resigned(waiting) == []
        node.methods["getBlockHeight"] = real
        _drive(treasury, t["id"])
        done = get(api, t["id"])
        assert done["state"] == "confirmed" and len(_resigned(done)) == 1, done
        _landed_once(sol, w, start, dest, SOL // 2)


def test_a_stale_follow_of_the_earlier_attempt_signs_nothing(
        tmp_path: Path, sol: SolanaNode, people: dict[str, Approver]) -> None:
    """Found by the long kill loop (PostgreSQL, two workers): a worker that read the
    transfer while its first request waited for approvals follows that request after the
    transfer was signed, expired unlanded and raised its second request. The first
    request is executed; mirrored now, it would make the transfer signed again with the
    dead transaction (a signed attempt the HSM never signed). It is not mirrored: the
    transfer waits for its second request, and lands once with one signature per attempt."""
    with _service(tmp_path, solana=sol.url, workers=False) as api:
        w = _sol_wallet(api, people, sol)
        start, dest = sol.client.balance(w["address"]), str(Keypair().pubkey())
        t = _created(_post_transfer(api, w["id"], "SOL", "5", dest, "resign-stale"))
        treasury = _treasury(api)
        stale = treasury.ledger.load(t["id"])  # a worker's read, before the approvals
        assert stale.state == "pending_approval"
        answer(api, people["t1"], t["signRequestId"])
        answer(api, people["t2"], t["signRequestId"])
        first = get(api, t["id"])
        assert first["state"] == "signed"
        sol.expire_blockhash()
        _drive(treasury, t["id"])
        again = get(api, t["id"])
        assert again["state"] == "pending_approval", again
        assert again["signRequestId"] == hsm_request_id(t["id"], 2)

        old = treasury.broker.get(t["signRequestId"])
        assert old.status == "EXECUTED"
        treasury.signing.follow(stale, old)  # the stale worker's step
        after = get(api, t["id"])
        assert after["state"] == "pending_approval", after
        assert after["txid"] is None and len(_resigned(after)) == 1

        answer(api, people["t1"], again["signRequestId"])
        answer(api, people["t3"], again["signRequestId"])
        _drive(treasury, t["id"])
        done = get(api, t["id"])
        assert done["state"] == "confirmed", done
        assert len(_resigned(done)) == 1
        assert _signings(api, w["keyLabel"]) == 2  # one per attempt
        _landed_once(sol, w, start, dest, 5 * SOL)
