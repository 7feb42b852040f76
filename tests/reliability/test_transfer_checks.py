"""The kill loop's transfer invariants catch what they claim to: each check fed the
record of a broken run (built by hand, no node or process), and a sound one. Fast; the
loop itself is in test_crash_and_soak.py."""

from __future__ import annotations

import base64
import hashlib
import threading
from collections import Counter
from types import SimpleNamespace
from typing import Any

from tests.helpers import Approver

from .chain_btc import BlockView, BtcChecks
from .chain_eth import paid
from .chain_sol import SolChecks
from .lanes import HOLD_SECONDS, LANES, Funding, wallet_request
from .transfer_checks import Snapshot, TransferChecks, _transfer_of
from .transfers import Transfer

BTC = LANES["btc"]
WALLET = {"id": "w-btc", "address": "bcrt1q-wallet", "keyLabel": "key-btc"}


def _fp(who: Approver) -> str:
    return hashlib.sha256(base64.b64decode(who.spki_b64)).hexdigest()


def _checks(people: dict[str, Approver], items: list[Transfer]) -> TransferChecks:
    desk = SimpleNamespace(desk=SimpleNamespace(people=people), nets=None, lanes=[BTC],
                           wallets={"bitcoin": Funding(WALLET, {"BTC": 0})},
                           lock=threading.Lock(), transfers=items)
    return TransferChecks(desk, {})  # type: ignore[arg-type]


def _row(tid: str, units: int, state: str = "confirmed", **more: Any) -> dict[str, Any]:
    return {"id": tid, "wallet_id": "w-btc", "symbol": "BTC", "state": state, "error": None,
            "destination": f"dest-{tid}", "amount": str(units), "nonce": None,
            "inputs": [], "raw_b64": None, "txid": f"tx-{tid}", "sign_request_id": tid,
            "details": {}} | more


def _resigned(*txids: str) -> dict[str, Any]:
    """A transfer's details after its expired transactions ``txids`` were signed again."""
    return {"resigns": [{"txid": t, "reason": "BlockhashNotFound"} for t in txids]}


def _signing(tid: str, token: str, approvers: list[str], at: float) -> dict[str, Any]:
    return {"op": "request.execute", "requestId": tid, "transfer": tid, "label": "key-btc",
            "token": token, "approvers": approvers, "at": at}


def test_the_policy_check_finds_signatures_outside_the_policy(
        people: dict[str, Approver]) -> None:
    t1, t2, c1 = (_fp(people[n]) for n in ("t1", "t2", "c1"))
    medium, large = 5 * 10**7, 2 * 10**8  # 0.5 and 2 BTC: medium and large tiers
    rows = [_row("ok-large", large), _row("early", large), _row("one-trader", medium),
            _row("wrong-tier", large), _row("rejected", medium, "rejected")]
    requests = {r["id"]: {"hsm_time": 1000.0, "meta_data": {"transferId": r["id"]}}
                for r in rows}
    snap = Snapshot(rows, [], requests, signings=[
        _signing("ok-large", "large-BTC", [t1, t2, c1], 1000.0 + HOLD_SECONDS),
        _signing("early", "large-BTC", [t1, t2, c1], 1000.0 + HOLD_SECONDS - 60),
        _signing("one-trader", "medium-BTC", [t1], 1001.0),
        _signing("wrong-tier", "medium-BTC", [t1, t2], 1001.0),
        _signing("rejected", "medium-BTC", [t1, t2], 1001.0),
        _signing("nobody", "small-BTC", [], 1001.0) | {"transfer": None}])
    items = [Transfer(BTC, "large", "k", "d", large)]
    v = _checks(people, items).policy(snap, items)
    assert not [x for x in v if "ok-large" in x], v
    assert any("early" in x and "before the 86400 s hold" in x for x in v), v
    assert any("one-trader" in x and "medium signed with 1 traders" in x for x in v), v
    assert any("wrong-tier" in x and "needs large-BTC" in x for x in v), v
    assert any("transfer rejected" in x and "ended rejected" in x for x in v), v
    assert any("nobody" in x and "signed no transfer" in x for x in v), v
    assert len(v) == 5, v


def test_the_intent_check_finds_double_transfers_and_signatures(
        people: dict[str, Approver]) -> None:
    a = Transfer(BTC, "small", "k1", "dest-a", 10**6, "a", "a", acked=True)
    b = Transfer(BTC, "medium", "k2", "dest-b", 5 * 10**7, "b", "b", acked=True)
    lost = Transfer(BTC, "small", "k3", "dest-lost", 10**6, "lost", "lost", acked=True)
    rows = [_row("a", 10**6, destination="dest-a"), _row("a2", 10**6, destination="dest-a"),
            _row("b", 5 * 10**7, "pending_approval", destination="dest-b")]
    snap = Snapshot(rows, [], {}, executed=Counter({"a": 1, "a2": 2}))
    v = _checks(people, [a, b, lost]).intents(snap, [a, b, lost])
    assert any("2 transfers for one intent" in x for x in v), v
    assert any("lost: acknowledged but not in the database" in x for x in v), v
    assert any("medium b: pending_approval" in x for x in v), v
    assert any("a2 (confirmed): the HSM signed for it 2 times" in x for x in v), v
    assert any("b stuck in pending_approval" in x for x in v), v


def test_the_intent_check_counts_signatures_per_attempt(people: dict[str, Approver]) -> None:
    """A transfer signed again after its transaction expired unlanded: one signature per
    recorded attempt is sound; one more than its attempts, or a signed attempt that ended
    without landing or being signed again, is not."""
    rows = [_row("again", 10**6, details=_resigned("tx-old")),
            _row("extra", 10**6, details=_resigned("tx-old2")),
            _row("dropped", 10**6, "failed", error="BlockhashNotFound"),
            _row("waiting", 10**6, "requested", txid=None, details=_resigned("tx-old3"))]
    snap = Snapshot(rows, [], {}, executed=Counter({"again": 2, "extra": 3, "dropped": 1,
                                                    "waiting": 1}))
    v = _checks(people, []).intents(snap, [])
    assert not [x for x in v if "transfer again" in x], v
    assert any("extra (confirmed): the HSM signed for it 3 times in 2 attempts" in x
               for x in v), v
    assert any("dropped (failed, BlockhashNotFound): its signed attempt 1 neither landed"
               in x for x in v), v
    assert v == [x for x in v if "extra" in x or "dropped" in x or "stuck" in x], v
    assert _transfer_of("transfer-abc-r3", {}) == "abc" == _transfer_of("transfer-abc", {})


class _Rpc:
    """Blocks as a regtest node's getblock(verbosity 2) shows them."""

    def __init__(self, blocks: list[list[dict[str, Any]]], mempool: tuple[str, ...] = ()) -> None:
        self.blocks, self.mempool = blocks, list(mempool)

    def getblockcount(self) -> int:
        return len(self.blocks) - 1

    def call(self, method: str, *params: Any) -> Any:
        if method == "getblockhash":
            return params[0]
        if method == "getblock":
            return {"tx": self.blocks[params[0]]}
        return self.mempool if method == "getrawmempool" else None


def _tx(txid: str, spends: list[str], outs: list[tuple[str, str]], fee: str = "0.0001",
        ) -> dict[str, Any]:
    vin = [{"coinbase": "00"}] if not spends else [
        {"txid": s.split(":")[0], "vout": int(s.split(":")[1])} for s in spends]
    return {"txid": txid, "vin": vin, "fee": fee, "vout": [
        {"value": v, "n": n, "scriptPubKey": {"address": a}} for n, (a, v) in enumerate(outs)]}


def test_the_bitcoin_checks_find_a_coin_signed_twice_and_money_missing() -> None:
    funding = Funding(WALLET, {"BTC": 50 * 10**8})
    blocks = [[_tx("cb", [], [("bcrt1q-wallet", "50")])],
              [_tx("tx-a", ["cb:0"], [("dest-a", "1"), ("change", "48.9999")])]]
    rows = [_row("a", 10**8, inputs=["cb:0"], raw_b64="AA==", destination="dest-a"),
            _row("b", 10**8, "failed", inputs=["cb:0"], raw_b64="AA==", txid="tx-b",
                 destination="dest-b")]
    checks = BtcChecks(_Rpc(blocks), funding)  # type: ignore[arg-type]
    v = checks(Snapshot(rows, [], {}), [])
    assert v == ["btc: coin cb:0 signed into 2 transfers' transactions"], v
    # the change left the wallet unrecorded: the money check sees it
    blocks.append([_tx("tx-x", ["tx-a:1"], [("elsewhere", "48.9998")])])
    v = BtcChecks(_Rpc(blocks), funding)(Snapshot(rows[:1], [], {}), [])  # type: ignore[arg-type]
    assert any("tx-x" in x and "no broadcast transfer's" in x for x in v), v
    assert any(x.startswith("btc: coins spent") for x in v), v


def test_the_block_view_follows_change_not_payments() -> None:
    view = BlockView(_Rpc([[_tx("cb", [], [("w", "50")])], [_tx(  # type: ignore[arg-type]
        "t", ["cb:0"], [("dest", "1"), ("chg", "48.9")], fee="0.1")]]), "w")
    view.refresh({"t": "dest"})
    assert view.funded == 50 * 10**8 and view.unspent() == 489 * 10**7
    assert view.paid["dest"] == 10**8 and view.txs["t"]["fee"] == 10**7


class _Sol:
    def __init__(self, landed: set[str], balance: int) -> None:
        self.landed, self.held = landed, balance

    def signature_statuses(self, txids: list[str]) -> list[Any]:
        return [SimpleNamespace(err=None) if t in self.landed else None for t in txids]

    def balance(self, address: str) -> int:
        return self.held


def test_the_solana_checks_find_a_second_landing() -> None:
    funding = Funding({"id": "w-btc", "address": "sol-wallet"}, {"SOL": 10**10})
    rows = [_row("a", 10**9, txid="sig-a"), _row("b", 10**9, "failed", txid="sig-b")]
    once = 10**10 - 10**9 - 5000
    assert SolChecks(_Sol({"sig-a"}, once), funding)(  # type: ignore[arg-type]
        Snapshot(rows, [], {}), []) == []
    twice = once - 10**9 - 5000  # the same transfer landed again, under another signature
    v = SolChecks(_Sol({"sig-a"}, twice), funding)(  # type: ignore[arg-type]
        Snapshot(rows, [], {}), [])
    assert v and v[0].startswith("sol: debited"), v
    v = SolChecks(_Sol({"sig-a", "sig-b"}, once - 10**9 - 5000), funding)(  # type: ignore[arg-type]
        Snapshot(rows, [], {}), [])
    assert any("b is failed, but its signature landed" in x for x in v), v
    # signed again after its first transaction was proven dead - which then landed too
    again = [_row("a", 10**9, txid="sig-a2", details=_resigned("sig-a"))]
    assert SolChecks(_Sol({"sig-a2"}, once), funding)(  # type: ignore[arg-type]
        Snapshot(again, [], {}), []) == []
    v = SolChecks(_Sol({"sig-a", "sig-a2"}, twice), funding)(  # type: ignore[arg-type]
        Snapshot(again, [], {}), [])
    assert any("signed again, but its earlier signature sig-a landed" in x for x in v), v
    assert any(x.startswith("sol: debited") for x in v), v


def test_erc20_calls_are_read_as_payments() -> None:
    token = "0x" + "ab" * 20
    dest = "0x" + "cd" * 20
    data = bytes.fromhex("a9059cbb") + bytes(12) + bytes.fromhex(dest[2:]) + (
        1234).to_bytes(32, "big")
    assert paid({"to": token, "data": data, "value": 0}, token) == ("TUSD", dest, 1234)
    assert paid({"to": dest, "data": b"", "value": 7}, token) == ("ETH", dest, 7)
    assert paid({"to": dest, "data": b"\x01", "value": 7}, token)[2] == -1  # not a payment


def test_a_wallet_has_tiers_for_every_asset_it_holds(people: dict[str, Approver]) -> None:
    """An ERC-20 lane alone still makes an Ethereum wallet, which holds Ether too (the
    first --chain erc20 runs were refused: "policy.tiers must cover exactly the wallet's
    assets")."""
    body = wallet_request("ethereum", [LANES["erc20"]], people, "0x" + "ab" * 20)
    assert set(body["policy"]["tiers"]) == {"ETH", "TUSD"}
    assert body["tokens"][0]["asset"] == "ERC20:0x" + "ab" * 20
    assert set(wallet_request("bitcoin", [LANES["btc"]], people)["policy"]["tiers"]) == {"BTC"}
