"""The treasury tier template, amounts in asset units, and explaining it in plain words."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from custody.cli import app
from custody.errors import BadRequest
from custody.treasury.policy import AssetInfo, treasury_policy
from custody.treasury.units import to_base_units, to_text
from hsm_emulator import Hsm
from hsm_emulator.decoders import transfer_payload
from hsm_emulator.errors import PolicyNotMet
from hsm_emulator.policy import parse_policy
from tests.helpers import Approver

BTC = AssetInfo("BTC", "BTC", 8)
USDC = AssetInfo("USDC", "ERC20:0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48", 6)


@pytest.mark.parametrize(("text", "decimals", "units"), [
    ("1", 8, 100_000_000), ("0.00000001", 8, 1), ("1.5", 6, 1_500_000), ("0", 18, 0),
    ("123456789.123456789012345678", 18, 123456789123456789012345678)])
def test_decimal_strings_to_base_units_and_back(text: str, decimals: int, units: int) -> None:
    assert to_base_units(text, decimals) == units
    assert to_base_units(to_text(units, decimals), decimals) == units


@pytest.mark.parametrize("text", ["-1", "1e8", "1.", ".5", "01", "1,5", " 1", "NaN", "inf",
                                  "0.000000001", "9" * 41, "", "1.5.1"])
def test_bad_amounts_are_refused(text: str) -> None:
    with pytest.raises(BadRequest):
        to_base_units(text, 8)


def _config(people: dict[str, Approver], **extra: Any) -> dict[str, Any]:
    return {"traders": [people[t].entry() for t in ("t1", "t2", "t3")],
            "compliance": [people["c1"].entry()],
            "tiers": {"BTC": {"small": "1", "medium": "50", "dailySmall": "3", "max": "1000"}},
            "hold": 86400, **extra}


def test_template_tiers_as_the_hsm_enforces_them(hsm: Hsm, people: dict[str, Approver]) -> None:
    policy = treasury_policy(_config(people), [BTC])
    parse_policy(policy)  # the HSM's own parser accepts it
    hsm.create_key("w", "SECP256K1", policy=policy)
    t1, t2, c1 = (people[n].spki_b64 for n in ("t1", "t2", "c1"))

    def released(btc: float, approvers: list[str]) -> str | None:
        payload = transfer_payload("BTC", int(btc * 10**8), "dest", 100)
        return hsm.dry_run("w", payload, "TEST_TRANSFER", approvers=approvers).released_by

    assert released(0.5, []) == "small-BTC"
    assert released(5, []) is None
    assert released(5, [t1]) is None
    assert released(5, [t1, t2]) == "medium-BTC"
    assert released(60, [t1, t2]) is None
    assert released(60, [t1, t2, c1]) is None  # the hold: not before a day has passed
    assert released(1001, [t1, t2, c1]) is None  # above the hard limit: never


@pytest.mark.parametrize(("change", "words"), [
    ({"tiers": {"BTC": {"small": "5", "medium": "1"}}}, "below medium"),
    ({"tiers": {"ETH": {"small": "1", "medium": "2"}}}, "exactly the wallet's assets"),
    ({"tiers": {"BTC": {"small": "1", "medium": "2", "max": "2"}}}, "above medium"),
    ({"tiers": {"BTC": {"small": "1"}}}, "small and medium"),
    ({"tradersQuorum": 4}, "at least 4"),
    ({"hold": -1}, "whole number"),
    ({"largeTimeout": 10, "hold": 20}, "longer than the hold"),
    ({"compliance": [{"value": 5}]}, r"compliance\[0\]"),
    ({"surprise": True}, "unknown fields"),
])
def test_template_errors_name_the_field(people: dict[str, Approver], change: dict[str, Any],
                                        words: str) -> None:
    with pytest.raises(BadRequest, match=words):
        treasury_policy({**_config(people), **change}, [BTC])


def test_policy_explain_reads_a_tier_configuration(tmp_path: Path,
                                                   people: dict[str, Approver]) -> None:
    config = _config(people, chain="ethereum", tokens=[USDC.to_json()])
    config["tiers"] = {"ETH": {"small": "1", "medium": "50"},
                       "USDC": {"small": "10000", "medium": "1000000"}}
    path = tmp_path / "tiers.json"
    path.write_text(json.dumps(config))
    result = CliRunner().invoke(app, ["policy", "explain", str(path)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "'small-USDC' when ERC20:0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48 amount is at " \
           "most 10,000" in text
    assert "then a hold of 1 d" in text and "2 of 3 from 'traders'" in text
    path.write_text(json.dumps({**config, "chain": "dogecoin"}))
    bad = CliRunner().invoke(app, ["policy", "explain", str(path)])
    assert bad.exit_code == 1 and "names its chain" in bad.output


def test_every_tier_caps_the_fee_and_auto_tiers_have_a_daily_total(
        people: dict[str, Approver]) -> None:
    config = _config(people)
    config["tiers"] = {"ETH": {"small": "1", "medium": "50"},
                       "USDC": {"small": "100", "medium": "5000"}}
    eth = AssetInfo("ETH", "ETH", 18)
    tokens = treasury_policy(config, [eth, USDC], network="ethereum:1")["ruleUse"]["tokens"]
    auto = ["small-ETH", "small-USDC"]
    for t in tokens:
        assert t["conditions"]["maxFee"] == [{"asset": "ETH", "max": str(2 * 10**16)}]
        velocity = {v["asset"]: v for v in t["conditions"].get("velocity", [])}
        if t["name"] in auto:  # both count native outflow; each its own asset by default
            assert velocity["ETH"]["max"] == str(50 * 10**18)  # dailySmall: medium
            assert velocity["ETH"]["releasedBy"] == auto
        else:
            assert not velocity
    usdc = next(t for t in tokens if t["name"] == "small-USDC")["conditions"]["velocity"]
    assert {"asset": USDC.asset, "windowSeconds": 86400, "max": str(5000 * 10**6),
            "releasedBy": auto} in usdc
    assert parse_policy(treasury_policy(config, [eth, USDC], network="ethereum:1")).networks \
        == frozenset({"ethereum:1"})


def test_approved_transfers_do_not_use_up_the_auto_tiers_daily_total(
        hsm: Hsm, people: dict[str, Approver]) -> None:
    """The daily total bounds structuring by the auto tier; what the traders approved
    does not count against it (velocity ``releasedBy``)."""
    config = _config(people)
    config["tiers"] = {"BTC": {"small": "1", "medium": "50", "dailySmall": "3"}}
    hsm.create_key("w", "SECP256K1", policy=treasury_policy(config, [BTC]))
    coin = 10**8
    ch = hsm.begin("w", "use", transfer_payload("BTC", 20 * coin, "dest", 0), "TEST_TRANSFER")
    approvals = [people[n].approve(ch.envelope) for n in ("t1", "t2")]
    assert hsm.execute(ch.request_id, approvals).token == "medium-BTC"
    for i in range(3):  # 20 BTC approved, yet 3 BTC of small transfers still auto-sign
        pay = transfer_payload("BTC", coin - i, "dest", 0, nonce=i)
        assert hsm.sign_now("w", pay, "TEST_TRANSFER").token == "small-BTC"
    with pytest.raises(PolicyNotMet, match="velocity"):
        hsm.sign_now("w", transfer_payload("BTC", 10, "dest", 0, nonce=9), "TEST_TRANSFER")
