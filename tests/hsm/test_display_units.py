"""Authenticated units: ``policy.assets`` parsed strictly, echoed by the HSM in challenge
version 2 (``units``, and ``policyChange`` for a modify), version 1 still accepted, and
the one amount formatter's rules."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from custody.treasury.policy import AssetInfo, treasury_policy
from hsm_emulator import Action, Hsm
from hsm_emulator.canonical import canonical_json
from hsm_emulator.challenge import VERSION, open_challenge, seal_challenge
from hsm_emulator.decoders import test_registry as registry
from hsm_emulator.decoders import transfer_payload
from hsm_emulator.display import format_amount
from hsm_emulator.errors import ApprovalRefused, PolicyInvalid
from hsm_emulator.identity import Domain, IdentityKey
from hsm_emulator.policy import parse_policy
from tests.conftest import SO, TEST_PASSPHRASE
from tests.helpers import Approver, tiered_policy

TST = {"asset": "TST", "symbol": "TST", "decimals": 2}


def _with_assets(assets: Any) -> dict[str, Any]:
    return {"openActions": ["use"], "assets": assets}


def test_policy_assets_parse_and_stay_optional() -> None:
    policy = parse_policy(_with_assets([TST, {"asset": "ERC20:0xa0b8", "symbol": "USDC",
                                              "decimals": 6}]))
    unit = policy.unit("ERC20:0xa0b8")
    assert unit is not None and (unit.symbol, unit.decimals) == ("USDC", 6)
    assert policy.unit("ETH") is None
    assert parse_policy({"openActions": ["use"]}).assets == ()
    assert policy.with_blocked(False).assets == policy.assets


@pytest.mark.parametrize(("assets", "field"), [
    ({"asset": "TST"}, "policy.assets"),  # not a list
    ([{"asset": "TST", "symbol": "TST"}], "policy.assets[0].decimals"),
    ([{**TST, "name": "x"}], "policy.assets[0]"),
    ([{**TST, "decimals": -1}], "policy.assets[0].decimals"),
    ([{**TST, "decimals": 78}], "policy.assets[0].decimals"),
    ([{**TST, "decimals": True}], "policy.assets[0].decimals"),
    ([{**TST, "decimals": "2"}], "policy.assets[0].decimals"),
    ([{**TST, "symbol": "T ST"}], "policy.assets[0].symbol"),
    ([{**TST, "symbol": "B\u0422C"}], "policy.assets[0].symbol"),  # a Cyrillic look-alike
    ([{**TST, "symbol": ""}], "policy.assets[0].symbol"),
    ([{**TST, "symbol": "X" * 17}], "policy.assets[0].symbol"),
    ([{**TST, "asset": ""}], "policy.assets[0].asset"),
    ([TST, {**TST, "symbol": "TST2"}], "policy.assets"),  # one asset twice
    ([TST, {**TST, "asset": "TST2"}], "policy.assets"),  # two assets, one symbol
])
def test_policy_assets_are_validated_strictly(assets: Any, field: str) -> None:
    with pytest.raises(PolicyInvalid) as info:
        parse_policy(_with_assets(assets))
    assert info.value.field == field


def test_the_treasury_template_names_every_assets_unit() -> None:
    people = [{"value": Approver.new(f"t{i}", "P256").spki_b64} for i in range(3)]
    assets = [AssetInfo("ETH", "ETH", 18), AssetInfo("USDC", "ERC20:0xa0b8", 6)]
    doc = treasury_policy({"traders": people[:2], "compliance": people[2:],
                           "tiers": {"ETH": {"small": "1", "medium": "10"},
                                     "USDC": {"small": "100", "medium": "1000"}}}, assets)
    assert doc["assets"] == [{"asset": "ETH", "symbol": "ETH", "decimals": 18},
                             {"asset": "ERC20:0xa0b8", "symbol": "USDC", "decimals": 6}]
    assert parse_policy(doc).unit("ERC20:0xa0b8") is not None


#: (base units, asset, unit, shown): the page's script is held to the same cases
FORMAT_CASES: list[tuple[Any, str, Any, str]] = [
    (141, "BTC", {"symbol": "BTC", "decimals": 8}, "0.00000141 BTC"),
    ("63000000000000", "ETH", {"symbol": "ETH", "decimals": 18}, "0.000063 ETH"),
    ("5000000000000000000", "ETH", {"symbol": "ETH", "decimals": 18}, "5 ETH"),
    ("1234567890123", "ERC20:0xa0b8", {"symbol": "USDC", "decimals": 6}, "1,234,567.890123 USDC"),
    ("5000", "SOL", {"symbol": "SOL", "decimals": 9}, "0.000005 SOL"),
    ("0", "SOL", {"symbol": "SOL", "decimals": 9}, "0 SOL"),
    ("7", "TST", {"symbol": "TST", "decimals": 0}, "7 TST"),
    ("0007", "TST", {"symbol": "TST", "decimals": 1}, "0.7 TST"),
    ("141", "BTC", None, "141 base units of BTC"),
    ("1000000", "ERC20:0xa0b8", None, "1,000,000 base units of ERC20:0xa0b8"),
    ("5", "X", {"symbol": "X", "decimals": True}, "5 base units of X"),
    ("5", "X", {"symbol": "X", "decimals": 78}, "5 base units of X"),  # beyond any policy
    ("5", "X", {"decimals": 2}, "5 base units of X"),  # no symbol: no unit
    ("-5", "BTC", {"symbol": "BTC", "decimals": 8}, "-5 BTC (not a whole number of base units)"),
]


@pytest.mark.parametrize(("units", "asset", "unit", "shown"), FORMAT_CASES)
def test_format_amount(units: Any, asset: str, unit: Any, shown: str) -> None:
    assert format_amount(units, asset, unit) == shown


@pytest.fixture
def hsm(tmp_path: Path) -> Any:
    h = Hsm.open(tmp_path / "hsm.sqlite", TEST_PASSPHRASE, so_passphrase=SO,
                 decoders=registry())
    yield h
    h.close()


def test_the_challenge_echoes_the_policys_units(hsm: Hsm) -> None:
    traders = [Approver.new(f"t{i}", "P256") for i in range(2)]
    compliance = [Approver.new("c", "P256")]
    policy = {**tiered_policy(traders, compliance), "assets": [TST]}
    hsm.create_key("k", "SECP256K1", policy=policy)
    ch = hsm.begin("k", Action.USE, transfer_payload("TST", 1000, "bob", 3), "TEST_TRANSFER")
    assert json.loads(ch.envelope)["version"] == VERSION == 3  # 3: with epoch and seq
    body = open_challenge(ch.approval_to_be_signed, hsm.identity_public_key())
    assert body["units"] == {"TST": {"symbol": "TST", "decimals": 2}}
    assert "policyChange" not in body

    hsm.create_key("bare", "SECP256K1", policy=tiered_policy(traders, compliance))
    bare = hsm.begin("bare", Action.USE, transfer_payload("TST", 5, "bob"), "TEST_TRANSFER")
    assert bare.body["units"] == {"TST": None}  # the policy names none: it says so


def test_a_modify_challenge_carries_both_policies_in_summary(hsm: Hsm) -> None:
    traders = [Approver.new(f"t{i}", "P256") for i in range(3)]
    compliance = [Approver.new("c", "P256")]
    old = tiered_policy(traders[:2], compliance)
    hsm.create_key("k", "SECP256K1", policy=old)
    new = tiered_policy(traders, compliance, medium=9000)
    ch = hsm.begin("k", Action.MODIFY, new_policy=new)
    change = ch.body["policyChange"]
    assert change["from"]["rules"]["use"][1]["amounts"] == [
        {"asset": "TST", "min": "0", "max": "5000"}]
    assert change["to"]["rules"]["use"][1]["amounts"][0]["max"] == "9000"
    medium = change["to"]["rules"]["use"][1]["groups"][0]
    assert medium["quorum"] == 2 and [a["name"] for a in medium["approvers"]] == [
        "t0", "t1", "t2"]
    assert len(medium["approvers"][0]["fingerprint"]) == 64


def test_a_version_1_challenge_is_still_accepted() -> None:
    """Requests opened before the upgrade keep their version 1 challenge (the HSM checks
    approvals over the stored bytes): clients accept it and show base units."""
    identity = IdentityKey.generate()
    body = {"requestId": "r1", "intent": None}
    signature = identity.sign(Domain.CHALLENGE, canonical_json(body))
    v1 = canonical_json({"format": "ska-challenge", "version": 1, "body": body,
                         "signature": base64.b64encode(signature).decode()})
    assert open_challenge(v1, identity.public_der) == body


def test_version_2_needs_units_and_unknown_versions_are_refused() -> None:
    identity = IdentityKey.generate()
    body = {"requestId": "r1"}
    with pytest.raises(ApprovalRefused, match="units"):
        open_challenge(seal_challenge(identity, body), identity.public_der)
    doc = json.loads(seal_challenge(identity, {**body, "units": {}}))
    for version in (3, 0, True, "2"):
        with pytest.raises(ApprovalRefused, match="version"):
            open_challenge(canonical_json({**doc, "version": version}), identity.public_der)


def test_a_change_too_large_to_review_is_refused(hsm: Hsm) -> None:
    """An approver client refuses a challenge over MAX_CHALLENGE, so the HSM does not
    issue one: a modify whose summaries would not fit is refused, not shown in part."""
    from hsm_emulator.errors import InvalidInput
    from tests.helpers import group, token

    traders = [Approver.new(f"t{i}", "P256") for i in range(2)]
    hsm.create_key("k", "SECP256K1", policy=tiered_policy(traders, [Approver.new("c")]))
    crowd = [Approver.new(f"a{i}", "P256") for i in range(1024)]
    groups = [group(f"g{j}", 1, crowd[j * 64:(j + 1) * 64]) for j in range(16)]
    huge = {"ruleUse": {"tokens": [token(f"t{i}", groups) for i in range(3)]},
            "ruleModify": {"tokens": [token("m", [group("admins", 1, traders)])]}}
    with pytest.raises(InvalidInput, match="too large for approvers"):
        hsm.begin("k", Action.MODIFY, new_policy=huge)
    assert hsm.begin("k", Action.MODIFY, new_policy={**huge, "ruleUse": {"tokens": [
        token("t0", groups[:2])]}}).body["policyChange"]["to"]["rules"]["use"]
