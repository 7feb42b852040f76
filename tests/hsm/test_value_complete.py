"""Value-complete conditions: what a token with conditions releases, and on what totals.

The rule (``ARCHITECTURE.md``, "Value-complete intents"): every unit of every asset a
signature can make leave the key's accounts is counted - transfers, grants, the maximum
fee and rent. Each test here names the finding of the trust-boundary review it closes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from chains.ethereum.tx import Eip1559Tx, serialize_unsigned
from chains.registry import registry
from hsm_emulator import Hsm
from hsm_emulator.credentials import passkey_value
from hsm_emulator.errors import (
    AttributeDenied,
    NetworkNotAllowed,
    PolicyInvalid,
    PolicyNotMet,
)
from hsm_emulator.evaluate import evaluate
from hsm_emulator.model import Action, Grant, Intent, IntentKind, Transfer
from hsm_emulator.policy import parse_policy
from tests.helpers import Approver, group, token

ETH = 10**18
DEST = "0x00000000000000000000000000000000000000b0"
ATTACKER = "0x00000000000000000000000000000000000000a7"
TOKEN = "ERC20:0x00000000000000000000000000000000000000c0"


def auto(**conditions: Any) -> Any:
    """A policy whose one token signs with no approvals when ``conditions`` hold."""
    return parse_policy({"ruleUse": {"tokens": [token("auto", [], conditions=conditions)]}})


def released(policy: Any, intent: Intent, spent: int = 0) -> bool:
    ev = evaluate(policy, Action.USE, intent, frozenset(), 0, 0,
                  spent=lambda asset, since: spent if asset == "ETH" else 0)
    return ev.released


def eth(kind: IntentKind = IntentKind.TRANSFER, transfers: tuple[Transfer, ...] = (),
        fee: int = 10**15, **kw: Any) -> Intent:
    return Intent("ethereum", "eip155:31337", kind, transfers, fee, "ETH", **kw)


CAP = {"asset": "ETH", "max": str(10**16)}


# -- fees are value (finding 2) ---------------------------------------------------------


def test_a_conditioned_token_without_a_fee_cap_refuses() -> None:
    amount_only = auto(amounts=[{"asset": "ETH", "max": str(ETH)}])
    assert not released(amount_only, eth(transfers=(Transfer("ETH", 1, DEST),)))
    ev = evaluate(amount_only, Action.USE, eth(transfers=(Transfer("ETH", 1, DEST),)),
                  frozenset(), 0, 0)
    assert "no maxFee for ETH" in ev.missing()[0]


def test_fee_and_rent_are_bounded_by_max_fee() -> None:
    p = auto(amounts=[{"asset": "ETH", "max": str(ETH)}], maxFee=[CAP])
    small = (Transfer("ETH", ETH // 2, DEST),)
    assert released(p, eth(transfers=small, fee=10**16))
    assert not released(p, eth(transfers=small, fee=10**16 + 1))  # the balance as a fee
    assert not released(p, eth(transfers=small, fee=10**16, rent=1))
    assert eth(fee=5, rent=7).cost == 12


def test_velocity_counts_fees_and_rent_of_the_fee_asset() -> None:
    p = auto(velocity=[{"asset": "ETH", "windowSeconds": 86400, "max": str(ETH)}],
             maxFee=[CAP])
    one = eth(transfers=(Transfer("ETH", ETH - 10**15, DEST),), fee=10**15)
    assert one.outflow() == {"ETH": ETH}
    assert released(p, one)
    assert not released(p, one, spent=1)  # fees of earlier payloads count too
    zero_value = eth(transfers=(Transfer("ETH", 0, DEST),), fee=10**16)
    assert not released(p, zero_value, spent=ETH - 10**16 + 1)


def test_a_cost_in_no_asset_is_refused() -> None:
    p = auto(maxFee=[CAP])
    weird = Intent("x", "y", IntentKind.TRANSFER, (Transfer("ETH", 1, DEST),), fee=1)
    assert not released(p, weird)


# -- intents with no transfers (finding 3) ---------------------------------------------


@pytest.mark.parametrize("conditions", [
    {"destinations": [DEST], "maxFee": [CAP]},
    {"velocity": [{"asset": "ETH", "windowSeconds": 60, "max": str(ETH)}], "maxFee": [CAP]},
    {"maxFee": [CAP]},
    {"amounts": [{"asset": TOKEN, "max": "1000"}], "maxFee": [CAP]},
], ids=["allowlist-only", "velocity-only", "fee-only", "amount-only"])
def test_opaque_and_grant_intents_need_their_kind_named(conditions: dict[str, Any]) -> None:
    p = auto(**conditions)
    call = eth(IntentKind.CONTRACT_CALL, calls=(DEST,))
    message = Intent("ethereum", "eip155:31337", IntentKind.MESSAGE, ())
    grant = eth(IntentKind.GRANT, grants=(Grant(TOKEN, 2**256 - 1, DEST),))
    for intent in (call, message, grant):
        assert not released(p, intent), intent.kind


def test_a_token_naming_a_kind_still_bounds_it() -> None:
    grants = auto(kinds=["grant"], amounts=[{"asset": TOKEN, "max": "1000"}],
                  destinations=[DEST], maxFee=[CAP])
    assert released(grants, eth(IntentKind.GRANT, grants=(Grant(TOKEN, 1000, DEST),)))
    assert not released(grants, eth(IntentKind.GRANT, grants=(Grant(TOKEN, 1001, DEST),)))
    assert not released(grants, eth(IntentKind.GRANT, grants=(Grant(TOKEN, 1, ATTACKER),)))
    assert not released(grants, eth(transfers=(Transfer(TOKEN, 1, DEST),)))  # not named
    calls = auto(kinds=["contract_call"], destinations=[DEST], maxFee=[CAP])
    assert released(calls, eth(IntentKind.CONTRACT_CALL, calls=(DEST,)))
    assert not released(calls, eth(IntentKind.CONTRACT_CALL, calls=(ATTACKER,)))
    assert not released(calls, eth(IntentKind.CONTRACT_CALL, (Transfer("ETH", 1, ATTACKER),),
                                   calls=(DEST,)))


def test_grants_count_against_amounts_and_velocity() -> None:
    intent = eth(IntentKind.GRANT, grants=(Grant(TOKEN, 700, DEST),),
                 transfers=(Transfer(TOKEN, 400, DEST),))
    assert intent.moved() == {TOKEN: 1100}
    assert intent.outflow() == {TOKEN: 1100, "ETH": 10**15}
    assert intent.recipients() == (DEST, DEST)


def test_kinds_and_networks_parse_strictly() -> None:
    with pytest.raises(PolicyInvalid, match="kinds"):
        auto(kinds=["transfers"], maxFee=[CAP])
    with pytest.raises(PolicyInvalid, match="kinds"):
        auto(kinds=[], maxFee=[CAP])
    with pytest.raises(PolicyInvalid, match="maxFee"):
        auto(maxFee=[CAP, CAP])
    for bad in (["bitcoin"], ["Bitcoin:main"], [":1"], [1], "bitcoin:regtest"):
        with pytest.raises(PolicyInvalid, match="networks"):
            parse_policy({"networks": bad})
    assert parse_policy({"networks": ["ethereum:eip155:1", "bitcoin:regtest"]}).networks == \
        frozenset({"ethereum:1", "bitcoin:regtest"})


# -- one key is one approver (finding 6) ------------------------------------------------


def test_a_passkey_listed_twice_is_refused(people: dict[str, Approver]) -> None:
    from cryptography.hazmat.primitives import serialization

    spki = people["t1"].private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    origins = ("https://custody.example",)
    with_uv = {"type": "webauthn", "value": passkey_value(spki, "custody.example", origins,
                                                          True)}
    without = {"type": "webauthn", "value": passkey_value(spki, "custody.example", origins)}
    bare = people["t1"].entry()
    other = people["t2"].entry()
    for pair in ((with_uv, without), (with_uv, bare)):
        one_group = {"name": "traders", "quorum": 2, "approvals": [*pair, other]}
        with pytest.raises(PolicyInvalid, match="duplicate approver"):
            parse_policy({"ruleUse": {"tokens": [token("m", [one_group])]}})
        two_groups = [{"name": "traders", "quorum": 1, "approvals": [pair[0], other]},
                      {"name": "compliance", "quorum": 1, "approvals": [pair[1]]}]
        with pytest.raises(PolicyInvalid, match="two groups"):
            parse_policy({"ruleUse": {"tokens": [token("l", two_groups)]}})


# -- derived keys keep the policy (finding 1) -------------------------------------------


def test_a_derived_key_cannot_get_a_weaker_policy(hsm: Hsm, people: dict[str, Approver]) -> None:
    hsm.create_key("wallet", "SECP256K1", policy={"ruleUse": {"tokens": [
        token("m", [group("traders", 2, [people["t1"], people["t2"]])])]}})
    with pytest.raises(AttributeDenied, match="parent's policy"):
        hsm.derive_key("wallet", "0", "sweeper", {"openActions": ["use"]})
    child = hsm.derive_key("wallet", "0", "child")
    assert child.policy_digest == hsm.get_key("wallet").policy_digest
    with pytest.raises(PolicyNotMet):
        hsm.sign_now("child", b"\x01" * 32, "UNSPECIFIED", "ECDSA_SECP256K1_DIGEST")
    entry = hsm.audit_entries(1, 100)[-2].event
    assert entry["op"] == "key.derive" and entry["policyDigest"] == child.policy_digest


# -- networks (finding 8) ----------------------------------------------------------------


def _eth_tx(chain_id: int) -> bytes:
    tx = Eip1559Tx(chain_id=chain_id, nonce=0, max_priority_fee_per_gas=1,
                   max_fee_per_gas=10, gas_limit=21_000, to=bytes.fromhex(DEST[2:]),
                   value=1, data=b"", access_list=())
    return serialize_unsigned(tx)


def test_a_key_signs_only_for_the_networks_its_policy_names(hsm: Hsm) -> None:
    hsm.boundary.registry = registry("ethereum:31337,ethereum:1")
    fee_only = [token("auto", [], conditions={"maxFee": [CAP]})]
    hsm.create_key("local", "SECP256K1",
                   policy={"networks": ["ethereum:31337"], "ruleUse": {"tokens": fee_only}})
    hsm.create_key("nowhere", "SECP256K1", policy={"ruleUse": {"tokens": fee_only}})
    assert hsm.sign_now("local", _eth_tx(31337), "ETHEREUM_TX:eip155:31337").signatures
    with pytest.raises(NetworkNotAllowed, match="ethereum:1"):
        hsm.sign_now("local", _eth_tx(1), "ETHEREUM_TX:eip155:1")
    with pytest.raises(NetworkNotAllowed, match="names none"):
        hsm.sign_now("nowhere", _eth_tx(31337), "ETHEREUM_TX:eip155:31337")
    with pytest.raises(NetworkNotAllowed):
        hsm.begin("local", Action.USE, _eth_tx(1), "ETHEREUM_TX:eip155:1")
    assert hsm.audit_entries(1, 100)[-1].event["code"] == "hsm.network_not_allowed"


# -- the test decoder is not in production (finding 10) ---------------------------------


def test_the_production_registry_has_no_test_decoder() -> None:
    code = ("from chains.registry import registry; from hsm_emulator.decoders import "
            "default_registry; print(registry().types(), default_registry().types())")
    env = {k: v for k, v in os.environ.items() if k != "CUSTODY_TEST_DECODER"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert "TEST_TRANSFER" not in out and "ETHEREUM_TX" in out
    assert "TEST_TRANSFER" in registry(with_test_decoder=True).types()


def test_velocity_can_count_only_what_named_tokens_released() -> None:
    p = auto(velocity=[{"asset": "ETH", "windowSeconds": 60, "max": str(ETH),
                        "releasedBy": ["auto"]}], maxFee=[CAP])
    ledger = {"auto": ETH // 2, "medium": 5 * ETH}

    def spent(asset: str, since: float, tokens: frozenset[str] | None = None) -> int:
        return sum(v for k, v in ledger.items() if tokens is None or k in tokens)

    half = eth(transfers=(Transfer("ETH", ETH // 2 - 10**15, DEST),))
    ev = evaluate(p, Action.USE, half, frozenset(), 0, 0, spent=spent)
    assert ev.released  # the 5 ETH "medium" released is not counted
    more = eth(transfers=(Transfer("ETH", ETH // 2, DEST),))
    assert not evaluate(p, Action.USE, more, frozenset(), 0, 0, spent=spent).released
    with pytest.raises(PolicyInvalid, match="releasedBy"):
        auto(velocity=[{"asset": "ETH", "windowSeconds": 60, "max": 1, "releasedBy": []}],
             maxFee=[CAP])


def test_a_store_from_before_token_scoped_velocity_opens(tmp_path: Any) -> None:
    """Stores made before ``releasedBy`` have no ``token`` column in their ledger."""
    import sqlite3

    from hsm_emulator.decoders import transfer_payload
    from tests.conftest import SO, TEST_PASSPHRASE

    path = tmp_path / "old.sqlite"
    Hsm.open(path, TEST_PASSPHRASE, so_passphrase=SO).close()
    db = sqlite3.connect(path)
    db.execute("DROP INDEX spends_by_token")  # nor the ledger's running totals (issue 16)
    db.execute("ALTER TABLE spends DROP COLUMN token")
    db.execute("ALTER TABLE spends DROP COLUMN cum_all")
    db.execute("ALTER TABLE spends DROP COLUMN cum_token")
    db.commit()
    db.close()
    hsm = Hsm.open(path, TEST_PASSPHRASE)
    hsm.create_key("k", "SECP256K1", policy={"ruleUse": {"tokens": [token("auto", [], conditions={
        "velocity": [{"asset": "TST", "windowSeconds": 60, "max": 5, "releasedBy": ["auto"]}],
        "maxFee": [{"asset": "TST", "max": 0}]})]}})
    assert hsm.sign_now("k", transfer_payload("TST", 5, "d", 0), "TEST_TRANSFER").token == "auto"
    with pytest.raises(PolicyNotMet):
        hsm.sign_now("k", transfer_payload("TST", 1, "d", 0, nonce=1), "TEST_TRANSFER")
    hsm.close()
