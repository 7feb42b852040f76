"""Treasury transfers end to end through HTTP on the three local networks.

Wallets are HSM keys with the design card's tier policy; transfers go from the desk's
request through approvals (and a hold) to a transaction the chain confirms: Bitcoin
blocks accepted by Bitcoin Core's consensus code, Ethereum receipts from anvil, Solana
balances from LiteSVM.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from solders.keypair import Keypair

from approvals_app.main import create_app
from approvals_app.settings import Settings
from chains.ethereum.encoding import checksum
from custody.localnets import BURN, LocalNets, find_anvil
from tests.api.test_api_tutorial import SECRET
from tests.helpers import Approver
from tests.treasury_kit import (
    DESK,
    answer,
    create_wallet,
    get,
    policy_config,
    transfer,
    wait_state,
)

pytestmark = [pytest.mark.slow, pytest.mark.node]
BTC = 100_000_000


@pytest.fixture(scope="module")
def nets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNets]:
    if find_anvil() is None and not os.environ.get("CI"):
        pytest.skip("anvil not installed (npm install --prefix .ci/npm "
                    "@foundry-rs/anvil-linux-amd64)")
    with LocalNets(tmp_path_factory.mktemp("nets")) as n:
        yield n


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api(nets: LocalNets, tmp_path_factory: pytest.TempPathFactory,
        request: pytest.FixtureRequest) -> Iterator[TestClient]:
    """The embedded default, and PostgreSQL as several replicas would share it."""
    tmp = tmp_path_factory.mktemp("treasury")
    url = (request.getfixturevalue("postgres").create_database()
           if request.param == "postgresql" else f"sqlite:///{tmp / 'broker.sqlite'}")
    settings = Settings(database_url=url,
                        hsm_store=tmp / "hsm.sqlite", hsm_passphrase="treasury test passphrase",
                        hsm_so_passphrase="treasury test so", jwt_secret=SECRET)
    with TestClient(create_app(settings, chains=nets.endpoints())) as client:
        yield client


@pytest.fixture(scope="module")
def crew(people: dict[str, Approver]) -> dict[str, list[Approver]]:
    return {"traders": [people["t1"], people["t2"], people["t3"]],
            "compliance": [people["c1"]]}


def _policy(crew: dict[str, list[Approver]], tiers: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return policy_config(crew["traders"], crew["compliance"], tiers, **kw)


def _release(api: TestClient, t: dict[str, Any], approvers: list[Approver]) -> None:
    for who in approvers:
        answer(api, who, t["signRequestId"])


# -- Bitcoin ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def btc_wallet(api: TestClient, nets: LocalNets,
               crew: dict[str, list[Approver]]) -> dict[str, Any]:
    w = create_wallet(api, "btc-ops", "bitcoin", "regtest", _policy(
        crew, {"BTC": {"small": "1", "medium": "10", "max": "500"}}))
    for _ in range(6):  # coinbase rewards halve every 150 regtest blocks: fund generously
        r = api.post(f"/v1/wallets/{w['id']}/addresses", json={"label": "funding"},
                     headers=DESK)
        assert r.status_code == 201, r.text
        nets.mine(1, r.json()["address"])
    nets.mine(100)
    return w


def _mine_until_confirmed(api: TestClient, nets: LocalNets, t: dict[str, Any]) -> dict[str, Any]:
    t = wait_state(api, t["id"], "broadcast", "confirmed")
    height = nets.btc_rpc.getblockcount()  # type: ignore[union-attr]
    block = nets.mine(1)[0]
    assert nets.btc_rpc.getblockcount() == height + 1  # type: ignore[union-attr]
    assert t["txid"] in nets.btc_rpc.call("getblock", block, 1)["tx"]  # type: ignore[union-attr]
    return wait_state(api, t["id"], "confirmed")


def test_bitcoin_small_medium_large(api: TestClient, nets: LocalNets, btc_wallet: dict[str, Any],
                                    crew: dict[str, list[Approver]]) -> None:
    traders, compliance = crew["traders"], crew["compliance"]
    small = transfer(api, btc_wallet["id"], "BTC", "0.5", BURN)
    assert _mine_until_confirmed(api, nets, small)["tier"] == "small-BTC"

    medium = transfer(api, btc_wallet["id"], "BTC", "5", BURN)
    assert medium["state"] == "pending_approval"
    answer(api, traders[0], medium["signRequestId"])
    time.sleep(0.5)
    assert get(api, medium["id"])["state"] == "pending_approval"  # one trader moves nothing
    answer(api, traders[1], medium["signRequestId"])
    done = _mine_until_confirmed(api, nets, medium)
    assert done["tier"] == "medium-BTC" and done["confirmations"] >= 1

    large = transfer(api, btc_wallet["id"], "BTC", "15", BURN)
    _release(api, large, [traders[0], traders[2], compliance[0]])
    held = get(api, large["id"])
    assert held["state"] == "on_hold"  # every approval in, the hold not over
    approved_at = time.monotonic()
    t = wait_state(api, large["id"], "signed", "broadcast", timeout=10)
    assert time.monotonic() - approved_at < 4  # released right after the 2 s hold
    assert _mine_until_confirmed(api, nets, t)["tier"] == "large-BTC"
    states = [h["state"] for h in get(api, large["id"])["history"]]
    assert states == ["requested", "pending_approval", "on_hold", "signed", "broadcast",
                      "confirmed"]


def test_bitcoin_rejection_frees_the_coins(api: TestClient, nets: LocalNets,
                                           btc_wallet: dict[str, Any],
                                           crew: dict[str, list[Approver]]) -> None:
    before = api.get(f"/v1/wallets/{btc_wallet['id']}/balances", headers=DESK).json()
    t = transfer(api, btc_wallet["id"], "BTC", "12", BURN)
    answer(api, crew["traders"][0], t["signRequestId"], reject=True)
    answer(api, crew["traders"][1], t["signRequestId"], reject=True)
    assert wait_state(api, t["id"], "rejected")["txid"] is None
    after = api.get(f"/v1/wallets/{btc_wallet['id']}/balances", headers=DESK).json()
    assert after == before  # nothing moved
    again = transfer(api, btc_wallet["id"], "BTC", "0.25", BURN)  # its coins are free again
    _mine_until_confirmed(api, nets, again)


def test_refused_up_front(api: TestClient, btc_wallet: dict[str, Any]) -> None:
    wid = btc_wallet["id"]
    cases = [
        ({"asset": "BTC", "amount": "400", "destination": BURN}, "funded"),
        ({"asset": "BTC", "amount": "1", "destination":
          "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"}, "destination"),  # mainnet address
        ({"asset": "BTC", "amount": "501", "destination": BURN}, "hard limit"),
        ({"asset": "ETH", "amount": "1", "destination": BURN}, "no asset"),
        ({"asset": "BTC", "amount": "0.000000001", "destination": BURN}, "decimal places"),
        ({"asset": "BTC", "amount": "0", "destination": BURN}, "positive"),
    ]
    count = len(api.get("/v1/transfers?limit=500", headers=DESK).json())
    for body, words in cases:
        r = api.post("/v1/transfers", json={"wallet": wid, **body}, headers=DESK)
        assert r.status_code == 400, (body, r.text)
        assert words in r.json()["detail"], r.json()
    assert len(api.get("/v1/transfers?limit=500", headers=DESK).json()) == count


def test_idempotent_transfer_and_tenant_isolation(api: TestClient,
                                                  btc_wallet: dict[str, Any]) -> None:
    first = transfer(api, btc_wallet["id"], "BTC", "0.1", BURN, **{"Idempotency-Key": "k-1"})
    again = transfer(api, btc_wallet["id"], "BTC", "0.1", BURN, **{"Idempotency-Key": "k-1"})
    assert again["id"] == first["id"]
    from tests.api.test_api_tutorial import bearer

    other = bearer("business", tenant="desk-2")
    assert api.get(f"/v1/transfers/{first['id']}", headers=other).status_code == 404
    assert api.get(f"/v1/wallets/{btc_wallet['id']}", headers=other).status_code == 404
    r = api.post("/v1/transfers", json={"wallet": btc_wallet["id"], "asset": "BTC",
                                        "amount": "0.1", "destination": BURN}, headers=other)
    assert r.status_code == 404


def test_expired_request_never_signs(api: TestClient, nets: LocalNets,
                                     crew: dict[str, list[Approver]]) -> None:
    w = create_wallet(api, "btc-expiring", "bitcoin", "regtest", _policy(
        crew, {"BTC": {"small": "1", "medium": "10"}}, medium_timeout=1, hold=1,
        large_timeout=2))  # every token that could release it times out
    nets.fund_bitcoin(w["address"])
    t = transfer(api, w["id"], "BTC", "5", BURN)
    answer(api, crew["traders"][0], t["signRequestId"])
    done = wait_state(api, t["id"], "expired", timeout=15)
    assert done["txid"] is None and done["tier"] is None


# -- Ethereum ----------------------------------------------------------------------------


def test_ethereum_tiers_and_erc20(api: TestClient, nets: LocalNets,
                                  crew: dict[str, list[Approver]]) -> None:
    token = nets.deploy_token()
    token_asset = "ERC20:" + token.lower()
    w = create_wallet(api, "eth-ops", "ethereum", "31337", _policy(
        crew, {"ETH": {"small": "1", "medium": "10"}, "TUSD": {"small": "100",
                                                              "medium": "10000"}}),
        tokens=[{"symbol": "TUSD", "asset": token_asset, "decimals": 6}])
    nets.fund_ether(w["address"], 100 * 10**18)
    nets.fund_token(token, w["address"], 50_000 * 10**6)
    eth = nets.eth
    assert eth is not None
    dest = checksum(os.urandom(20))
    traders, compliance = crew["traders"], crew["compliance"]

    small = transfer(api, w["id"], "ETH", "0.5", dest)
    medium = transfer(api, w["id"], "ETH", "5", dest)
    rejected = transfer(api, w["id"], "ETH", "6", dest)  # takes no nonce: none is skipped
    large = transfer(api, w["id"], "ETH", "20", dest)
    tokens = transfer(api, w["id"], "TUSD", "2500", dest)
    answer(api, traders[0], rejected["signRequestId"], reject=True)
    answer(api, traders[1], rejected["signRequestId"], reject=True)
    _release(api, medium, traders[:2])
    _release(api, large, [traders[1], traders[2], compliance[0]])
    _release(api, tokens, traders[:2])
    results = {k: wait_state(api, t["id"], "confirmed") for k, t in
               {"small": small, "medium": medium, "large": large, "tokens": tokens}.items()}
    assert wait_state(api, rejected["id"], "rejected")["nonce"] is None
    for t in results.values():
        receipt = eth.receipt(t["txid"])
        assert receipt is not None and receipt.status == 1
    nonces = sorted(t["nonce"] for t in results.values())
    assert nonces == list(range(4))  # no nonce reused or skipped
    assert eth.balance(dest) == 255 * 10**17  # 0.5 + 5 + 20 ETH
    assert eth.erc20_balance(token, dest) == 2500 * 10**6
    assert results["large"]["tier"] == "large-ETH"
    assert results["tokens"]["tier"] == "medium-TUSD"


# -- Solana ------------------------------------------------------------------------------


def test_solana_tiers_and_spl(api: TestClient, nets: LocalNets,
                              crew: dict[str, list[Approver]]) -> None:
    mint, authority = nets.create_spl_mint(6)
    w = create_wallet(api, "sol-ops", "solana", "localnet", _policy(
        crew, {"SOL": {"small": "1", "medium": "10"}, "TUSD": {"small": "100",
                                                              "medium": "10000"}}),
        tokens=[{"symbol": "TUSD", "asset": f"SPL:{mint}", "decimals": 6}])
    nets.fund_sol(w["address"], 100 * 10**9)
    nets.mint_spl(mint, authority, w["address"], 50_000 * 10**6, 6)
    dest = str(Keypair().pubkey())
    traders, compliance = crew["traders"], crew["compliance"]
    small = transfer(api, w["id"], "SOL", "0.5", dest)
    medium = transfer(api, w["id"], "SOL", "5", dest)
    large = transfer(api, w["id"], "SOL", "20", dest)
    tokens = transfer(api, w["id"], "TUSD", "2500", dest)
    _release(api, medium, traders[:2])
    _release(api, large, [traders[0], traders[1], compliance[0]])
    _release(api, tokens, traders[1:])
    for t in (small, medium, large, tokens):
        wait_state(api, t["id"], "confirmed")
    assert nets.sol is not None
    balances = api.get(f"/v1/wallets/{w['id']}/balances", headers=DESK).json()["balances"]
    by = {b["symbol"]: b for b in balances}
    assert by["TUSD"]["amount"] == "47500"
    from chains.solana.adapter import SolanaAdapter
    from chains.solana.client import SolanaRpcClient

    view = SolanaAdapter("localnet", SolanaRpcClient(nets.sol.url))
    assert view.balance(dest) == 25_500_000_000
    assert view.balance(dest, f"SPL:{mint}") == 2500 * 10**6


def test_wallet_creation_is_validated(api: TestClient, crew: dict[str, list[Approver]]) -> None:
    good = _policy(crew, {"BTC": {"small": "1", "medium": "10"}})
    bad_bodies = [
        {"name": "x", "chain": "dogecoin", "network": "regtest", "policy": good},
        {"name": "x", "chain": "bitcoin", "network": "mainnet", "policy": good},
        {"name": "x", "chain": "bitcoin", "network": "regtest",
         "policy": {**good, "tiers": {"BTC": {"small": "10", "medium": "1"}}}},
        {"name": "x", "chain": "bitcoin", "network": "regtest",
         "policy": {**good, "traders": []}},
        {"name": "x", "chain": "bitcoin", "network": "regtest", "policy": {**good, "extra": 1}},
        {"name": "x", "chain": "ethereum", "network": "31337", "policy": good},  # tiers != ETH
        {"name": "../x", "chain": "bitcoin", "network": "regtest", "policy": good},
    ]
    keys_before = api.get("/v1/wallets", headers=DESK).json()
    for body in bad_bodies:
        r = api.post("/v1/wallets", json=body, headers=bearer_admin())
        assert r.status_code == 400, (body, r.text)
    assert api.get("/v1/wallets", headers=DESK).json() == keys_before
    r = api.post("/v1/wallets", json={**bad_bodies[0], "chain": "bitcoin"}, headers=DESK)
    assert r.status_code == 403  # a business token cannot create wallets


def bearer_admin() -> dict[str, str]:
    from tests.treasury_kit import ADMIN

    return ADMIN


def test_deposit_addresses_respect_the_gap_limit(api: TestClient, nets: LocalNets,
                                                 crew: dict[str, list[Approver]]) -> None:
    w = create_wallet(api, "btc-gap", "bitcoin", "regtest", _policy(
        crew, {"BTC": {"small": "1", "medium": "10"}}))
    made = [api.post(f"/v1/wallets/{w['id']}/addresses", json={"label": f"c{i}"},
                     headers=DESK) for i in range(20)]
    assert [r.status_code for r in made] == [201] * 19 + [409]  # 20 unused in a row
    nets.mine(1, made[5].json()["address"])  # a deposit to #6 opens the window again
    r = api.post(f"/v1/wallets/{w['id']}/addresses", json={"label": "more"}, headers=DESK)
    assert r.status_code == 201 and r.json()["path"] == "0/20"
    listed = api.get(f"/v1/wallets/{w['id']}/addresses", headers=DESK).json()
    assert [a["path"] for a in listed] == [f"0/{i}" for i in range(21)]
    assert len({a["address"] for a in listed}) == 21


def test_webhooks_report_every_state_signed(api: TestClient, nets: LocalNets,
                                            btc_wallet: dict[str, Any]) -> None:
    from custody.treasury.webhooks import verify
    from tests.broker.test_treasury_webhooks import Receiver

    receiver = Receiver()
    try:
        r = api.post("/v1/webhooks", json={"url": receiver.url}, headers=DESK)
        assert r.status_code == 201, r.text
        hook = r.json()
        t = transfer(api, btc_wallet["id"], "BTC", "0.2", BURN)
        _mine_until_confirmed(api, nets, t)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            states = [json.loads(body)["transfer"]["state"] for _h, body in receiver.seen
                      if json.loads(body)["transfer"]["id"] == t["id"]]
            if "confirmed" in states:
                break
            time.sleep(0.2)
        assert states == ["requested", "signed", "broadcast", "confirmed"]
        for headers, body in receiver.seen:
            assert verify(hook["secret"], headers["x-custody-signature"], body, time.time())
        listed = api.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=DESK).json()
        assert {d["status"] for d in listed} == {"delivered"}
    finally:
        receiver.server.shutdown()
