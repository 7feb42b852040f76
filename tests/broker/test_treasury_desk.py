"""Transfers as a treasury desk expects them (issue 14): a policy change closes the requests
in flight, a transfer's error is in the desk's words, balances say what is locked and by
which transfers, a pending transfer can be cancelled, the zero address is refused.

On local nodes (Bitcoin regtest, anvil), with no background workers: each step runs when
the test says so."""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from approvals_app.main import create_app
from approvals_app.settings import Settings
from chains.base import TransferRequest
from chains.ethereum.encoding import checksum
from custody.broker import Broker, Principal
from custody.db import SignRequest
from custody.localnets import BURN, LocalNets, find_anvil
from custody.treasury import reasons
from custody.treasury.models import NonceSlot, WebhookDelivery
from custody.treasury.policy import AssetInfo
from custody.treasury.transfers import Treasury
from custody.treasury.wallets import get_wallet
from hsm_emulator.errors import RequestClosed, TransportError
from tests.api.test_api_tutorial import SECRET, bearer
from tests.helpers import Approver
from tests.treasury_kit import ADMIN, DESK, answer, create_wallet, get, policy_config, transfer

pytestmark = [pytest.mark.slow, pytest.mark.node]
WEI = 10**18
OTHER_DESK = bearer("business", tenant="desk-2")


@pytest.fixture(scope="module")
def nets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNets]:
    if find_anvil() is None and not os.environ.get("CI"):
        pytest.skip("anvil not installed")
    with LocalNets(tmp_path_factory.mktemp("nets"), chains=("bitcoin", "ethereum")) as n:
        yield n


@pytest.fixture(scope="module")
def api(nets: LocalNets, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("desk")
    settings = Settings(database_url=f"sqlite:///{tmp / 'broker.sqlite'}",
                        hsm_store=tmp / "hsm.sqlite", hsm_passphrase="desk test passphrase",
                        hsm_so_passphrase="desk test so", jwt_secret=SECRET)
    with TestClient(create_app(settings, chains=nets.endpoints(), scheduler=False)) as client:
        yield client


def _broker(api: TestClient) -> Broker:
    broker: Broker = api.app.state.broker  # type: ignore[attr-defined]
    return broker


def _treasury(api: TestClient) -> Treasury:
    treasury: Treasury = api.app.state.treasury  # type: ignore[attr-defined]
    return treasury


def _config(people: dict[str, Approver], tiers: dict[str, Any]) -> dict[str, Any]:
    return policy_config([people["t1"], people["t2"], people["t3"]], [people["c1"]], tiers)


def _eth_wallet(api: TestClient, nets: LocalNets,
                people: dict[str, Approver]) -> dict[str, Any]:
    w = create_wallet(api, f"eth-{os.urandom(3).hex()}", "ethereum", "31337",
                      _config(people, {"ETH": {"small": "1", "medium": "10"}}))
    nets.fund_ether(w["address"], 50 * WEI)
    return w


def _task_ids(api: TestClient, who: Approver) -> set[str]:
    ts = dt.datetime.now(dt.UTC).isoformat()
    r = api.post("/v1/filteredSignApprovalTask", json={
        "timestamp": ts, "timestampSignature": base64.b64encode(who.sign(ts.encode())).decode(),
        "approverCertificate": who.spki_b64, "detailLevel": "level2"})
    assert r.status_code == 200, r.text
    return {t["id"] for t in r.json()["tasks"]}


def _hooks(api: TestClient, transfer_id: str) -> list[str]:
    """The states the webhook outbox reported for a transfer, in order."""
    with _broker(api).sessions() as s:
        rows = s.scalars(select(WebhookDelivery).where(
            WebhookDelivery.transfer_id == transfer_id).order_by(WebhookDelivery.id))
        return [str(d.body["transfer"]["state"]) for d in rows]  # type: ignore[index]


def _webhook(api: TestClient) -> None:
    r = api.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hooks"}, headers=DESK)
    assert r.status_code == 201, r.text


# -- a policy change with requests in flight ---------------------------------------------


def test_a_policy_change_closes_the_requests_in_flight(
        api: TestClient, nets: LocalNets, people: dict[str, Approver],
        caplog: pytest.LogCaptureFixture) -> None:
    _webhook(api)
    w = _eth_wallet(api, nets, people)
    t = transfer(api, w["id"], "ETH", "5", checksum(os.urandom(20)))  # medium: 2 traders
    assert t["state"] == "pending_approval"
    answer(api, people["t1"], t["signRequestId"])  # one approval gathered, then the change
    key = api.get(f"/v1/key/{w['keyLabel']}", headers=ADMIN).json()
    policy = {k: v for k, v in key["policy"].items() if k != "keyStatus"}
    for tok in policy["ruleUse"]["tokens"]:
        if tok["name"] == "medium-ETH":
            tok["timeout"] = 1200
    r = api.post("/v1/modify", json={"label": w["keyLabel"], "policy": policy}, headers=ADMIN)
    assert r.status_code == 201, r.text
    modify_id = r.json()["requestId"]
    assert t["signRequestId"] in _task_ids(api, people["t2"])  # still in flight
    with caplog.at_level(logging.WARNING, logger="custody.broker"):
        for who in ("t2", "t3", "c1"):
            answer(api, people[who], modify_id)
    assert _broker(api).get(modify_id).status == "EXECUTED"

    row = _broker(api).get(t["signRequestId"])
    assert row.status == "CANCELLED" and "policy changed" in (row.error or "")
    done = get(api, t["id"])
    assert done["state"] == "cancelled" and "policy changed" in done["error"], done
    assert _hooks(api, t["id"])[-1] == "cancelled"
    assert t["signRequestId"] not in _task_ids(api, people["t2"])
    assert any(t["signRequestId"] in rec.getMessage() and "policy changed" in rec.getMessage()
               for rec in caplog.records if rec.levelno == logging.WARNING)
    with pytest.raises(RequestClosed, match="policy changed"):  # the HSM closed it too
        _broker(api).hsm.request_result(t["signRequestId"])
    # a late approval changes nothing
    again = api.post("/v1/approval", json={
        "id": t["signRequestId"], "approvalToBeSigned": row.challenge_b64,
        "signature": base64.b64encode(people["t2"].sign(
            base64.b64decode(row.challenge_b64))).decode(),
        "approverCertificate": people["t2"].spki_b64})
    assert again.status_code == 409, again.text
    # the new policy works: a new transfer goes through it
    fresh = transfer(api, w["id"], "ETH", "5", checksum(os.urandom(20)))
    answer(api, people["t2"], fresh["signRequestId"])
    answer(api, people["t3"], fresh["signRequestId"])
    assert get(api, fresh["id"])["state"] == "signed"


def test_the_hsm_alone_closes_a_request_of_a_superseded_policy(
        api: TestClient, nets: LocalNets, people: dict[str, Approver]) -> None:
    """A broker that did not hear of the change (a crash in between) learns it from the
    HSM on the request's next step, with the same reason."""
    w = _eth_wallet(api, nets, people)
    t = transfer(api, w["id"], "ETH", "5", checksum(os.urandom(20)))
    broker = _broker(api)
    key = broker.hsm.get_key(w["keyLabel"])
    policy = {k: v for k, v in key.policy.items() if k != "keyStatus"}
    policy["ruleUse"]["tokens"][1]["timeout"] = 1800
    broker.release.close_superseded = lambda **_k: []  # type: ignore[method-assign]
    try:
        r = api.post("/v1/modify", json={"label": w["keyLabel"], "policy": policy},
                     headers=ADMIN)
        for who in ("t1", "t2", "c1"):
            answer(api, people[who], r.json()["requestId"])
    finally:
        del broker.release.close_superseded
    assert get(api, t["id"])["state"] == "pending_approval"  # not mirrored yet
    row = broker.get(t["signRequestId"])
    late = api.post("/v1/approval", json={  # an approver's next answer: the HSM says no
        "id": row.id, "approvalToBeSigned": row.challenge_b64,
        "signature": base64.b64encode(people["t2"].sign(
            base64.b64decode(row.challenge_b64))).decode(),
        "approverCertificate": people["t2"].spki_b64})
    assert late.status_code == 409 and "policy changed" in late.text, late.text
    assert broker.get(t["signRequestId"]).status == "CANCELLED"  # and it is mirrored
    assert "policy changed" in get(api, t["id"])["error"]
    assert not broker.approvals(row.id)  # the refused approval was not recorded


# -- errors in the desk's words -----------------------------------------------------------


def test_a_rejection_names_who_rejected(api: TestClient, nets: LocalNets,
                                       people: dict[str, Approver]) -> None:
    w = _eth_wallet(api, nets, people)
    t = transfer(api, w["id"], "ETH", "5", checksum(os.urandom(20)))
    answer(api, people["t1"], t["signRequestId"], reject=True)
    answer(api, people["t3"], t["signRequestId"], reject=True)
    done = get(api, t["id"])
    assert done["state"] == "rejected" and done["error"] == "rejected by trader-1, trader-3", done


def test_limits_are_told_in_decimal_units(api: TestClient, nets: LocalNets,
                                          people: dict[str, Approver]) -> None:
    """The HSM's own check of an amount no tier releases, reworded: which tier, which limit,
    in ETH - not the evaluation in wei."""
    w = _eth_wallet(api, nets, people)
    broker = _broker(api)
    treasury = _treasury(api)
    wallet = get_wallet(broker.sessions, Principal("desk", "desk-1", frozenset()), w["id"])
    with broker.sessions() as s:
        unsigned, _ = treasury.networks.planner("ethereum").draft(
            s, wallet, treasury.networks.source(wallet),
            TransferRequest("ETH", 40 * WEI, checksum(os.urandom(20)), None, ""))
    ev = broker.hsm.dry_run(w["keyLabel"], unsigned.payload, unsigned.payload_type)
    dump = "; ".join(ev.missing())
    assert str(40 * WEI) in dump  # the HSM's words: base units
    text = reasons.closed("expired", dump, [AssetInfo("ETH", "ETH", 18)])
    assert str(40 * WEI) not in text and "40 ETH" in text and "10 ETH" in text, text
    assert "medium-ETH" in text and "token '" not in text


# -- balances: total, locked, available -------------------------------------------------


def test_balances_show_what_pending_transfers_lock_and_cancel_frees_it(
        api: TestClient, nets: LocalNets, people: dict[str, Approver]) -> None:
    w = create_wallet(api, f"btc-{os.urandom(3).hex()}", "bitcoin", "regtest",
                      _config(people, {"BTC": {"small": "1", "medium": "10", "max": "500"}}))
    for _ in range(3):  # three coins
        r = api.post(f"/v1/wallets/{w['id']}/addresses", json={"label": "in"}, headers=DESK)
        nets.mine(1, r.json()["address"])
    nets.mine(100)
    before = api.get(f"/v1/wallets/{w['id']}/balances", headers=DESK).json()["balances"][0]
    assert before["locked"] == "0" and before["available"] == before["total"] == before["amount"]
    assert before["pendingTransfers"] == [] and before["utxos"] == 3
    assert [c["lockedBy"] for c in before["coins"]] == [None, None, None]
    pending = [transfer(api, w["id"], "BTC", "5", BURN)["id"]
               for _ in range(3)]  # medium: each locks a whole coin until approved
    held = api.get(f"/v1/wallets/{w['id']}/balances", headers=DESK).json()["balances"][0]
    assert held["total"] == before["total"] and held["available"] == "0"
    assert held["locked"] == held["total"]
    assert sorted(p["id"] for p in held["pendingTransfers"]) == sorted(pending)
    assert {c["lockedBy"] for c in held["coins"]} == set(pending)

    refused = api.post("/v1/transfers", json={
        "wallet": w["id"], "asset": "BTC", "amount": "0.1",
        "destination": BURN}, headers=DESK)
    assert refused.status_code == 400, refused.text
    detail = refused.json()["detail"]
    assert "0.1 BTC asked, 0 BTC available" in detail and "locked by 3 pending" in detail
    assert f"{held['total']} BTC held" in detail and "sat" not in detail
    assert len(api.get("/v1/transfers", params={"wallet": w["id"]},
                       headers=DESK).json()) == 3  # the refusal stored nothing

    gone = api.delete(f"/v1/transfers/{pending[0]}", headers=DESK)
    assert gone.status_code == 200 and gone.json()["state"] == "cancelled", gone.text
    freed = api.get(f"/v1/wallets/{w['id']}/balances", headers=DESK).json()["balances"][0]
    assert len(freed["pendingTransfers"]) == 2 and freed["available"] != "0"
    assert transfer(api, w["id"], "BTC", "0.1", BURN)["state"] == "signed"


def test_account_balances_lock_unsent_amounts(api: TestClient, nets: LocalNets,
                                              people: dict[str, Approver]) -> None:
    w = _eth_wallet(api, nets, people)
    t = transfer(api, w["id"], "ETH", "5", checksum(os.urandom(20)))
    b = api.get(f"/v1/wallets/{w['id']}/balances", headers=DESK).json()["balances"][0]
    assert (b["total"], b["locked"], b["available"]) == ("50", "5", "45"), b
    assert b["pendingTransfers"] == [{"id": t["id"], "state": "pending_approval",
                                      "locks": "5"}]
    assert "coins" not in b and "utxos" not in b


# -- DELETE /v1/transfers/{id} ------------------------------------------------------------


def test_cancel_a_pending_transfer(api: TestClient, nets: LocalNets,
                                   people: dict[str, Approver]) -> None:
    _webhook(api)
    w = _eth_wallet(api, nets, people)
    t = transfer(api, w["id"], "ETH", "5", checksum(os.urandom(20)))
    assert t["signRequestId"] in _task_ids(api, people["t1"])
    other = api.delete(f"/v1/transfers/{t['id']}", headers=OTHER_DESK)
    assert other.status_code == 404, other.text
    assert get(api, t["id"])["state"] == "pending_approval"  # the refusal changed nothing
    assert api.delete("/v1/transfers/nope", headers=DESK).status_code == 404
    r = api.delete(f"/v1/transfers/{t['id']}", headers=DESK)
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "cancelled" and r.json()["error"] == "cancelled by treasury-app"
    assert _broker(api).get(t["signRequestId"]).status == "CANCELLED"
    with pytest.raises(RequestClosed, match="cancelled by treasury-app"):
        _broker(api).hsm.request_result(t["signRequestId"])
    assert t["signRequestId"] not in _task_ids(api, people["t1"])
    assert _hooks(api, t["id"])[-1] == "cancelled"
    twice = api.delete(f"/v1/transfers/{t['id']}", headers=DESK)
    assert twice.status_code == 409 and "already cancelled" in twice.text


def test_cancel_a_transfer_whose_submission_waits(api: TestClient, nets: LocalNets,
                                                  people: dict[str, Approver]) -> None:
    """No sign request yet (the HSM was unreachable at submit): it ends here, the nonce its
    finalizing took goes back, and the worker does not submit it later."""
    w = _eth_wallet(api, nets, people)
    hsm = _broker(api).hsm
    original = hsm.sign_now

    def down(*_a: Any, **_k: Any) -> Any:
        raise TransportError("the HSM is unreachable")

    hsm.sign_now = down  # type: ignore[method-assign]
    try:
        t = transfer(api, w["id"], "ETH", "0.5", checksum(os.urandom(20)))  # small
    finally:
        hsm.sign_now = original  # type: ignore[method-assign]
    assert t["state"] == "requested" and t["signRequestId"] is None and t["nonce"] is not None
    r = api.delete(f"/v1/transfers/{t['id']}", headers=DESK)
    assert r.status_code == 200 and r.json()["state"] == "cancelled", r.text
    treasury = _treasury(api)
    clock = treasury.ledger.clock
    treasury.ledger.clock = lambda: clock() + 3600  # past every retry and lease
    try:
        treasury.step()
    finally:
        treasury.ledger.clock = clock
    done = get(api, t["id"])
    assert done["state"] == "cancelled" and done["signRequestId"] is None
    with _broker(api).sessions() as s:
        slot = s.scalar(select(NonceSlot).where(NonceSlot.nonce == t["nonce"],
                                                NonceSlot.address == w["address"].lower()))
        assert slot is not None and slot.state == "free"
    again = transfer(api, w["id"], "ETH", "0.25", checksum(os.urandom(20)))
    assert again["nonce"] == t["nonce"]  # taken by the next transfer: no gap


def test_a_signed_transfer_cannot_be_cancelled(api: TestClient, nets: LocalNets,
                                               people: dict[str, Approver]) -> None:
    w = _eth_wallet(api, nets, people)
    t = transfer(api, w["id"], "ETH", "0.5", checksum(os.urandom(20)))  # small: signed now
    assert t["state"] == "signed"
    r = api.delete(f"/v1/transfers/{t['id']}", headers=DESK)
    assert r.status_code == 409 and "can no longer be cancelled" in r.text, r.text
    _treasury(api).advance(t["id"])
    assert get(api, t["id"])["state"] in ("broadcast", "confirmed")
    assert api.delete(f"/v1/transfers/{t['id']}", headers=DESK).status_code == 409


# -- the zero address ---------------------------------------------------------------------


def test_the_zero_address_is_refused_unless_asked_for(api: TestClient, nets: LocalNets,
                                                      people: dict[str, Approver]) -> None:
    w = _eth_wallet(api, nets, people)
    zero = "0x" + "0" * 40
    body = {"wallet": w["id"], "asset": "ETH", "amount": "0.5", "destination": zero}
    r = api.post("/v1/transfers", json=body, headers=DESK)
    assert r.status_code == 400 and "zero address" in r.text, r.text
    assert api.get("/v1/transfers", params={"wallet": w["id"]}, headers=DESK).json() == []
    with _broker(api).sessions() as s:
        assert not list(s.scalars(select(SignRequest).where(
            SignRequest.key_label == w["keyLabel"])))
    ok = api.post("/v1/transfers", json={**body, "allowZeroAddress": True}, headers=DESK)
    assert ok.status_code == 201 and ok.json()["destination"].lower() == zero, ok.text


def test_reasons_reword_every_hsm_limit() -> None:
    eth = AssetInfo("ETH", "ETH", 18)
    dump = ("token 'small-ETH': ETH velocity 3000000000000000000 over 86400s exceeds limit "
            "2000000000000000000; token 'medium-ETH': group 'traders' needs 1 more "
            "approval(s); timed out; token 'x': fee and rent 21000 ETH above cap 100")
    text = reasons.closed("expired", dump, [eth])
    assert text.startswith("expired before any tier released it (small-ETH: 3 ETH in 24 h "
                           "would exceed its limit of 2 ETH; medium-ETH: 1 more approval(s) "
                           "from traders needed; timed out"), text
    assert "0.000000000000021 ETH is above its cap of 0.0000000000000001 ETH" in text
    assert reasons.closed("cancelled", "cancelled by desk", [eth]) == "cancelled by desk"
    refused = ("the policy is not met: token 'small-ETH': ETH amount 5000000000000000000 above "
               "1000000000000000000 | token 'medium-ETH': group 'traders' needs 2 more "
               "approval(s)")  # PolicyNotMet, as the HSM raises it
    assert reasons.closed("failed", refused, [eth]) == (
        "no tier releases it (small-ETH: 5 ETH is above its limit of 1 ETH; medium-ETH: "
        "2 more approval(s) from traders needed)")
    assert reasons.rejected(["b", "a", "a"]) == "rejected by a, b"
