"""What the CLI approver shows is in units the HSM vouches for: BTC, ETH, an ERC-20 and
SOL through the treasury template's policy (its ``assets``), a real API server and HSM;
``tasks --json`` and short refs; the modify diff; what ``approve`` / ``reject`` report.

The payloads are chain-shaped test transfers (a decoder that reports each chain's asset
ids and fee asset, as the chains' decoders do) so every chain runs without its node: what
is under test is the policy -> challenge -> display path, not the chains' decoding."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from chains.specs import SPECS
from custody.treasury.policy import AssetInfo, treasury_policy
from hsm_emulator.credentials import parse_credential
from hsm_emulator.decoders import JsonTransferDecoder
from hsm_emulator.decoding import DecoderRegistry
from hsm_emulator.model import Intent, IntentKind
from tests.api.test_api_tutorial import bearer
from tests.approvers.test_cli_approver import Live, _serve, cli, new_cli_key, python_approve
from tests.helpers import Approver

USDC = "ERC20:0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48"
NATIVE = {spec.native.symbol: spec.native for spec in SPECS.values()}


class ChainShaped(JsonTransferDecoder):
    """``CHAIN_TEST``: a TEST_TRANSFER with the fee in ``feeAsset`` (ETH for an ERC-20),
    as the Ethereum decoder reports a token transfer."""

    payload_type = "CHAIN_TEST"
    FIELDS: ClassVar[frozenset[str]] = JsonTransferDecoder.FIELDS | {"feeAsset"}

    def _intent(self, doc: dict[str, Any]) -> Intent:
        base = super()._intent(doc)
        return Intent("test", "test", IntentKind.TRANSFER, base.transfers, base.fee,
                      doc.get("feeAsset", base.fee_asset))


def payload(asset: str, amount: int, destination: str, fee: int, fee_asset: str) -> str:
    doc = {"asset": asset, "amount": str(amount), "destination": destination,
           "fee": str(fee), "feeAsset": fee_asset}
    return base64.b64encode(json.dumps(doc, sort_keys=True).encode()).decode()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    registry = DecoderRegistry([JsonTransferDecoder(), ChainShaped()])
    for url, hsm in _serve(tmp_path_factory.mktemp("units-api"), registry):
        with httpx.Client(base_url=url, timeout=10) as http:
            yield Live(url, http, base64.b64encode(hsm.identity_public_key()).decode())


def wallet_key(live: Live, label: str, traders: list[Approver], compliance: Approver,
               assets: list[AssetInfo], tiers: dict[str, Any]) -> dict[str, Any]:
    """A key with the treasury template's policy, as a wallet gets it."""
    people = [{"value": t.spki_b64, "name": t.name} for t in traders]
    policy = treasury_policy({"traders": people, "tiers": tiers, "complianceQuorum": 1,
                              "compliance": [{"value": compliance.spki_b64,
                                              "name": compliance.name}]}, assets)
    r = live.http.post("/v1/key", json={"label": label, "algorithm": "SECP256K1",
                                        "policy": policy}, headers=bearer("key_admin"))
    assert r.status_code == 201, r.text
    return policy


def sign(live: Live, label: str, body: str) -> str:
    r = live.http.post("/v1/sign", json={"signRequest": {
        "payload": body, "payloadType": "CHAIN_TEST", "signKeyName": label}},
        headers=bearer("business"))
    assert r.status_code == 201, r.text
    return str(r.json()["signRequestId"])


CASES = {
    # chain: (assets, tier symbol, transfer asset, amount, fee, fee asset, amount shown,
    #         fee shown)
    "BTC": ([NATIVE["BTC"]], "BTC", "BTC", 50_000_000, 141, "BTC", "0.5 BTC",
            "0.00000141 BTC"),
    "ETH": ([NATIVE["ETH"]], "ETH", "ETH", 5 * 10**18, 63_000_000_000_000, "ETH",
            "5 ETH", "0.000063 ETH"),
    "ERC-20": ([NATIVE["ETH"], AssetInfo("USDC", USDC, 6)], "USDC", USDC, 2_500_000_000,
               63_000_000_000_000, "ETH", "2,500 USDC", "0.000063 ETH"),
    "SOL": ([NATIVE["SOL"]], "SOL", "SOL", 3 * 10**9, 5000, "SOL", "3 SOL", "0.000005 SOL"),
}


def _assets(natives: list[Any]) -> list[AssetInfo]:
    return [n if isinstance(n, AssetInfo) else AssetInfo(n.symbol, n.asset, n.decimals)
            for n in natives]


@pytest.mark.parametrize("chain", sorted(CASES))
def test_amount_and_fee_are_shown_in_the_policys_units(
        live: Live, tmp_path: Path, people: dict[str, Approver], chain: str) -> None:
    assets, symbol, asset, amount, fee, fee_asset, shown, fee_shown = CASES[chain]
    key_file, me = new_cli_key(tmp_path, "p256", live)
    label = f"wallet-{chain}"
    tiers = {a.symbol: {"small": "0.0001", "medium": "1000000"} for a in _assets(assets)}
    wallet_key(live, label, [me, people["t1"]], people["c1"], _assets(assets), tiers)
    destination = "dest-" + chain.lower() + "-" + "f" * 70  # long: never cut
    request_id = sign(live, label, payload(asset, amount, destination, fee, fee_asset))

    listed = cli("tasks", "--key-file", str(key_file), live=live)
    assert listed.exit_code == 0, listed.output
    assert shown in listed.stdout and fee_shown in listed.stdout

    shown_one = cli("show", request_id[:8], "--key-file", str(key_file), live=live)
    assert shown_one.exit_code == 0, shown_one.output
    out = shown_one.stdout
    assert shown in out and fee_shown in out and destination in out
    assert "base units" not in out  # the policy names every unit here
    assert asset in out  # the asset id beside its symbol

    as_json = cli("tasks", "--json", "--key-file", str(key_file), live=live)
    assert as_json.exit_code == 0, as_json.output
    task = json.loads(as_json.stdout)["tasks"][0]
    assert task["id"] == request_id and task["ref"] == request_id[:8]
    assert (task["amount"], task["fee"], task["destination"]) == (shown, fee_shown,
                                                                  destination)
    assert task["challengeVersion"] == 3 and task["epoch"] == 0
    assert task["units"][asset]["decimals"] == (
        _assets(assets)[-1].decimals)

    approved = cli("approve", request_id[:8], "--yes", "--key-file", str(key_file), live=live)
    assert approved.exit_code == 0, approved.output
    assert "tier medium-" + symbol + ": 1 more from traders (quorum 2); no hold follows" \
        in approved.stdout
    assert python_approve(live, people["t1"], request_id) == "EXECUTED"


def test_a_policy_without_units_shows_base_units_and_the_asset_id(
        live: Live, tmp_path: Path, people: dict[str, Approver]) -> None:
    key_file, me = new_cli_key(tmp_path, "p256", live)
    policy = wallet_key(live, "no-units-probe", [me, people["t1"]], people["c1"],
                        [AssetInfo("ETH", "ETH", 18)], {"ETH": {"small": "0.1", "medium": "10"}})
    del policy["assets"]  # a policy from before policy.assets
    r = live.http.post("/v1/key", json={"label": "no-units", "algorithm": "SECP256K1",
                                        "policy": policy}, headers=bearer("key_admin"))
    assert r.status_code == 201, r.text
    request_id = sign(live, "no-units", payload("ETH", 10**18, "carol", 21000, "ETH"))
    shown = cli("show", request_id, "--key-file", str(key_file), live=live)
    assert shown.exit_code == 0, shown.output
    assert "1,000,000,000,000,000,000 base units of ETH" in shown.stdout
    assert "21,000 base units of ETH" in shown.stdout and " 1 ETH" not in shown.stdout


def test_refs_must_be_unambiguous_and_long_enough(
        live: Live, tmp_path: Path, people: dict[str, Approver]) -> None:
    key_file, me = new_cli_key(tmp_path, "p256", live)
    wallet_key(live, "refs", [me, people["t1"]], people["c1"], [AssetInfo("SOL", "SOL", 9)],
               {"SOL": {"small": "0.1", "medium": "100"}})
    first = sign(live, "refs", payload("SOL", 10**9, "a", 5000, "SOL"))
    second = sign(live, "refs", payload("SOL", 2 * 10**9, "b", 5000, "SOL"))
    narrow = cli("tasks", "--key-file", str(key_file), live=live, COLUMNS="60")
    assert narrow.exit_code == 0, narrow.output
    refs = [line.split("│")[1].strip() for line in narrow.stdout.splitlines()
            if line.count("│") > 2 and line.split("│")[1].strip()]
    assert {first[:8], second[:8]} <= set(refs)  # whole on a narrow terminal: copyable
    short = cli("show", first[:3], "--key-file", str(key_file), live=live)
    assert short.exit_code == 1 and "not among your open tasks" in short.output
    assert cli("show", first, "--key-file", str(key_file), live=live).exit_code == 0


def test_reject_reports_the_request_closed(
        live: Live, tmp_path: Path, people: dict[str, Approver]) -> None:
    key_file, me = new_cli_key(tmp_path, "p256", live)
    wallet_key(live, "reject-units", [me, people["t1"]], people["c1"],
               [AssetInfo("BTC", "BTC", 8)], {"BTC": {"small": "0.001", "medium": "10"}})
    request_id = sign(live, "reject-units", payload("BTC", 10**8, "mallory", 141, "BTC"))
    rejected = cli("reject", request_id[:8], "--yes", "--key-file", str(key_file), live=live)
    assert rejected.exit_code == 0, rejected.output
    assert f"rejected {request_id}: request is now REJECTED" in rejected.stdout
    assert "still needed" not in rejected.stdout  # closed: nothing left to collect


def test_a_modify_request_shows_a_readable_diff(
        live: Live, tmp_path: Path, people: dict[str, Approver]) -> None:
    key_file, me = new_cli_key(tmp_path, "p256", live)
    assets = [AssetInfo("ETH", "ETH", 18)]
    traders = [{"value": t.spki_b64, "name": t.name} for t in (me, people["t1"])]
    config = {"traders": traders, "complianceQuorum": 1, "hold": 3600,
              "compliance": [{"value": people["c1"].spki_b64, "name": "compliance-1"}],
              "tiers": {"ETH": {"small": "0.1", "medium": "10"}}}
    r = live.http.post("/v1/key", json={"label": "modify-me", "algorithm": "SECP256K1",
                                        "policy": treasury_policy(config, assets)},
                       headers=bearer("key_admin"))
    assert r.status_code == 201, r.text
    newer = {**config, "hold": 7200, "tiers": {"ETH": {"small": "0.1", "medium": "20"}},
             "traders": [*traders, {"value": people["t3"].spki_b64, "name": "trader-3"}]}
    r = live.http.post("/v1/modify", json={"label": "modify-me",
                                           "policy": treasury_policy(newer, assets)},
                       headers=bearer("key_admin"))
    assert r.status_code == 201, r.text
    request_id = r.json()["requestId"]
    shown = cli("show", request_id[:8], "--key-file", str(key_file), live=live)
    assert shown.exit_code == 0, shown.output
    out = " ".join(shown.stdout.split())  # the table may wrap long lines
    fp3 = parse_credential("public_key", people["t3"].spki_b64).fingerprint[:12]
    assert "use: tier 'medium-ETH': amount 0 ETH to 10 ETH -> 0 ETH to 20 ETH" in out
    assert "use: tier 'small-ETH': rolling limit 10 ETH per 1 d -> 20 ETH per 1 d" in out
    assert "use: tier 'large-ETH': hold 1 h -> 2 h" in out
    assert f"group 'traders' + trader-3 ({fp3})" in out
    assert "new policy sha256" in out


def test_a_version_1_task_verifies_and_shows_base_units() -> None:
    """A request opened before the upgrade keeps its version 1 challenge: the CLI accepts
    it (the HSM checks approvals over the stored bytes) and shows base units with the
    asset id, saying why, even where the server claims a unit."""
    from custody.approver_cli import task_summary
    from custody.approver_verify import verify_task
    from hsm_emulator.canonical import canonical_json
    from hsm_emulator.identity import Domain, IdentityKey

    identity = IdentityKey.generate()
    intent = {"chain": "bitcoin", "network": "regtest", "kind": "transfer", "fee": "141",
              "feeAsset": "BTC", "transfers": [{"asset": "BTC", "amount": "50000000",
                                                "destination": "bcrt1qxyz"}]}
    body = {"requestId": "r-old-1", "keyLabel": "w", "action": "use", "intent": intent}
    signature = identity.sign(Domain.CHALLENGE, canonical_json(body))
    v1 = canonical_json({"format": "ska-challenge", "version": 1, "body": body,
                         "signature": base64.b64encode(signature).decode()})
    task = verify_task({"id": "r-old-1", "approvalToBeSigned": base64.b64encode(v1).decode(),
                        "units": {"BTC": {"symbol": "BTC", "decimals": 8}}},
                       identity.public_der)
    lines = dict(task.intent_lines())
    assert lines["amount"] == "50,000,000 base units of BTC"
    assert lines["fee (most)"] == "141 base units of BTC"
    assert "version 1" in lines["units"]
    summary = task_summary(task)
    assert summary["challengeVersion"] == 1 and summary["fee"] == "141 base units of BTC"


def test_the_last_approval_of_a_large_transfer_reports_the_hold(
        live: Live, tmp_path: Path, people: dict[str, Approver]) -> None:
    key_file, me = new_cli_key(tmp_path, "p256", live)
    wallet_key(live, "large-hold", [me, people["t1"]], people["c1"],
               [AssetInfo("ETH", "ETH", 18)], {"ETH": {"small": "0.1", "medium": "1"}})
    request_id = sign(live, "large-hold", payload("ETH", 5 * 10**18, "carol", 21000, "ETH"))
    assert python_approve(live, people["t1"], request_id) == "PENDING"
    assert python_approve(live, people["c1"], request_id) == "PENDING"
    approved = cli("approve", request_id[:8], "--yes", "--key-file", str(key_file), live=live)
    assert approved.exit_code == 0, approved.output
    out = " ".join(approved.stdout.split())
    assert f"approved {request_id}: request is now APPROVED" in out
    assert "tier large-ETH: approvals complete; on hold, 23 h 59 min left" in out
    assert "medium-ETH" not in out  # 5 ETH is above the medium tier: it cannot release it
