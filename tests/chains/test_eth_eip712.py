"""EIP-712 typed data as the HSM reads it: permits are grants, everything else opaque.

EIP-2612 and DAI permits, Permit2's allowance and signature-transfer messages decode to
``IntentKind.GRANT`` with exact amounts; a permit of another owner, or one whose token
the domain does not name, is refused; anything not exactly one of those shapes stays an
opaque ``MESSAGE`` that names its verifying contract.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from hypothesis import given, settings
from hypothesis import strategies as st

from chains.ethereum import Eip712Decoder, EthereumTxDecoder
from chains.ethereum.eip712 import (
    DAI_PERMIT,
    EIP2612_PERMIT,
    NO_VERIFYING_CONTRACT,
    PERMIT2_ADDRESS,
    PERMIT2_BATCH,
    PERMIT2_BATCH_TRANSFER_FROM,
    PERMIT2_SINGLE,
    PERMIT2_TRANSFER_FROM,
    UINT160_MAX,
    UNLIMITED,
)
from chains.ethereum.encoding import address_of_public_key, checksum, keccak256
from hsm_emulator import Hsm, ManualClock
from hsm_emulator.decoders import DecoderRegistry
from hsm_emulator.errors import DecodeError, PolicyNotMet
from hsm_emulator.model import Grant, IntentKind
from tests.chains.test_eth_decoder import CHAIN, View, eth_policy
from tests.conftest import SO, TEST_PASSPHRASE
from tests.helpers import Approver

ME = address_of_public_key(View().public_key())
SPENDER = checksum(b"\xb0" * 20)
EVE = checksum(b"\xee" * 20)
USDC = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"
DAI = "0x6B175474E89094C44Da98b954EedeAC495271d0F"
WETH = "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2"
PERMIT2 = checksum(PERMIT2_ADDRESS)
DEC = Eip712Decoder(CHAIN)
DOMAIN_TYPE = [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
               {"name": "chainId", "type": "uint256"},
               {"name": "verifyingContract", "type": "address"}]
PERMIT2_DOMAIN_TYPE = [{"name": "name", "type": "string"},
                       {"name": "chainId", "type": "uint256"},
                       {"name": "verifyingContract", "type": "address"}]


def fields(spec: str) -> list[dict[str, str]]:
    """``"address owner,uint256 value"`` as EIP-712 type fields."""
    return [{"name": f.split(" ")[1], "type": f.split(" ")[0]} for f in spec.split(",")]


def permit(owner: str = ME, value: Any = 10**6, token: str = USDC, **message: Any,
           ) -> dict[str, Any]:
    return {
        "types": {"EIP712Domain": DOMAIN_TYPE, "Permit": fields(
            "address owner,address spender,uint256 value,uint256 nonce,uint256 deadline")},
        "primaryType": "Permit",
        "domain": {"name": "USD Coin", "version": "2", "chainId": CHAIN,
                   "verifyingContract": token},
        "message": {"owner": owner, "spender": SPENDER, "value": value, "nonce": 0,
                    "deadline": 2**255, **message},
    }


def dai_permit(allowed: Any = True, holder: str = ME) -> dict[str, Any]:
    return {
        "types": {"EIP712Domain": DOMAIN_TYPE, "Permit": fields(
            "address holder,address spender,uint256 nonce,uint256 expiry,bool allowed")},
        "primaryType": "Permit",
        "domain": {"name": "Dai Stablecoin", "version": "1", "chainId": CHAIN,
                   "verifyingContract": DAI},
        "message": {"holder": holder, "spender": SPENDER, "nonce": 3, "expiry": 0,
                    "allowed": allowed},
    }


DETAILS = fields("address token,uint160 amount,uint48 expiration,uint48 nonce")
PERMISSIONS = fields("address token,uint256 amount")


def permit2(primary: str, message: dict[str, Any], contract: str = PERMIT2) -> dict[str, Any]:
    types: dict[str, Any] = {"EIP712Domain": PERMIT2_DOMAIN_TYPE}
    if primary in ("PermitSingle", "PermitBatch"):
        types["PermitDetails"] = DETAILS
        arr = "[]" if primary == "PermitBatch" else ""
        types[primary] = fields(f"PermitDetails{arr} details,address spender,"
                                "uint256 sigDeadline")
    else:
        types["TokenPermissions"] = PERMISSIONS
        arr = "[]" if primary == "PermitBatchTransferFrom" else ""
        types[primary] = fields(f"TokenPermissions{arr} permitted,address spender,"
                                "uint256 nonce,uint256 deadline")
    return {"types": types, "primaryType": primary,
            "domain": {"name": "Permit2", "chainId": CHAIN, "verifyingContract": contract},
            "message": message}


def details(token: str, amount: int) -> dict[str, Any]:
    return {"token": token, "amount": amount, "expiration": 2**40, "nonce": 0}


def decode(doc: dict[str, Any]) -> Any:
    return DEC.prepare(json.dumps(doc).encode(), View())


def refused(doc: dict[str, Any]) -> str:
    with pytest.raises(DecodeError) as err:
        decode(doc)
    with pytest.raises(DecodeError):  # and the registry answers DecodeError
        DecoderRegistry([DEC]).prepare(DEC.payload_type, json.dumps(doc).encode(), View())
    return err.value.reason


def test_the_recognised_type_strings_are_the_contracts_typehashes() -> None:
    """The typehashes EIP-2612 tokens, DAI and Permit2 hard-code."""
    assert keccak256(EIP2612_PERMIT.encode()).hex() == (
        "6e71edae12b1b97f4d1f60370fef10105fa2faae0126114a169c64845d6126c9")
    assert keccak256(DAI_PERMIT.encode()).hex() == (
        "ea2aa0a1be11a07ed86d755c93467f4f82362b452371d1ba94d1715123511acb")
    assert keccak256(PERMIT2_SINGLE.encode()).hex() == (
        "f3841cd1ff0085026a6327b620b67997ce40f282c88a8e905a7a5626e310f3d0")
    assert keccak256(PERMIT2_BATCH_TRANSFER_FROM.encode()).hex() == (
        "fcf35f5ac6a2c28868dc44c302166470266239195f02b0ee408334829333b766")


# -- EIP-2612 -----------------------------------------------------------------------------


@pytest.mark.parametrize("value,amount", [
    (10**6, 10**6), ("1000000", 10**6), ("0xf4240", 10**6), (0, 0),
    (UNLIMITED, UNLIMITED), (str(UNLIMITED), UNLIMITED)])
def test_eip2612_permit_is_a_grant_of_its_value(value: Any, amount: int) -> None:
    doc = permit(value=value)
    intent, items = decode(doc)
    assert intent.kind is IntentKind.GRANT
    assert intent.grants == (Grant("ERC20:" + USDC.lower(), amount, SPENDER),)
    assert intent.transfers == () and intent.calls == ()
    assert (intent.fee, intent.fee_asset, intent.rent) == (0, "", 0)
    assert intent.moved() == intent.outflow() == {"ERC20:" + USDC.lower(): amount}
    assert dict(intent.details)["grantType"] == "EIP-2612 permit"
    signable = encode_typed_data(full_message=doc)  # what is signed is what eth-account signs
    assert items[0].data == keccak256(b"\x19\x01" + bytes(signable.header) + bytes(signable.body))
    sig = View().key.sign_recoverable(items[0].data, hasher=None)
    assert Account._recover_hash(items[0].data, vrs=(
        sig[64] + 27, int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"))) == ME


def test_permit_of_another_owner_is_refused() -> None:
    assert "not this key" in refused(permit(owner=EVE))
    assert "not this key" in refused(dai_permit(holder=EVE))


def test_permit_owner_may_be_spelled_in_lower_case() -> None:
    assert decode(permit(owner=ME.lower()))[0].kind is IntentKind.GRANT


def test_permit_without_a_verifying_contract_is_refused() -> None:
    doc = permit()
    del doc["domain"]["verifyingContract"]
    doc["types"]["EIP712Domain"] = DOMAIN_TYPE[:3]
    assert "verifyingContract" in refused(doc)


@pytest.mark.parametrize("change", [
    lambda d: d["message"].update(extra=1),  # a field the type does not have
    lambda d: d["message"].update(value=-1),
    lambda d: d["message"].update(value=1.5),
    lambda d: d["message"].update(value="1e6"),
    lambda d: d["message"].update(value=2**256),
    lambda d: d["message"].update(spender="0xB0b0b0B0B0B0B0b0B0B0B0b0b0b0b0B0b0b0B0B1"),  # bad EIP-55
    lambda d: d["domain"].update(name=5),
    lambda d: d["domain"].update(chainId=1),
])
def test_malformed_permits_are_refused(change: Any) -> None:
    doc = permit()
    change(doc)
    refused(doc)


# -- DAI ------------------------------------------------------------------------------------


def test_dai_permit_grants_everything_or_nothing() -> None:
    intent, _ = decode(dai_permit(True))
    assert intent.kind is IntentKind.GRANT
    assert intent.grants == (Grant("ERC20:" + DAI.lower(), UNLIMITED, SPENDER),)
    assert dict(intent.details)["grantType"] == "DAI permit"
    revoke, _ = decode(dai_permit(False))
    assert revoke.grants == (Grant("ERC20:" + DAI.lower(), 0, SPENDER),)


@pytest.mark.parametrize("allowed", ["false", "0", 0, 1, None])
def test_dai_permit_allowed_must_be_a_json_bool(allowed: Any) -> None:
    """eth-account reads the string "false" as false and "no" as true: only a JSON bool
    has one meaning, so anything else is refused."""
    refused(dai_permit(allowed))


# -- Permit2 --------------------------------------------------------------------------------


def test_permit2_single_is_a_grant_and_uint160_max_is_unlimited() -> None:
    msg = {"details": details(WETH, 5 * 10**18), "spender": SPENDER, "sigDeadline": 2**40}
    intent, _ = decode(permit2("PermitSingle", msg))
    assert intent.kind is IntentKind.GRANT
    assert intent.grants == (Grant("ERC20:" + WETH.lower(), 5 * 10**18, SPENDER),)
    msg["details"] = details(WETH, UINT160_MAX)
    unlimited, _ = decode(permit2("PermitSingle", msg))
    assert unlimited.grants == (Grant("ERC20:" + WETH.lower(), UNLIMITED, SPENDER),)


def test_permit2_batch_grants_each_token() -> None:
    msg = {"details": [details(WETH, 7), details(USDC, 8)], "spender": EVE,
           "sigDeadline": 1}
    intent, _ = decode(permit2("PermitBatch", msg))
    assert intent.grants == (Grant("ERC20:" + WETH.lower(), 7, EVE),
                             Grant("ERC20:" + USDC.lower(), 8, EVE))
    assert intent.moved() == {"ERC20:" + WETH.lower(): 7, "ERC20:" + USDC.lower(): 8}
    assert set(intent.recipients()) == {EVE}


def test_permit2_signature_transfers_are_grants() -> None:
    one = {"permitted": {"token": USDC, "amount": 9}, "spender": SPENDER, "nonce": 1,
           "deadline": 2}
    intent, _ = decode(permit2("PermitTransferFrom", one))
    assert intent.kind is IntentKind.GRANT
    assert intent.grants == (Grant("ERC20:" + USDC.lower(), 9, SPENDER),)
    batch = {"permitted": [{"token": USDC, "amount": 9}, {"token": WETH, "amount": 10}],
             "spender": SPENDER, "nonce": 1, "deadline": 2}
    intent, _ = decode(permit2("PermitBatchTransferFrom", batch))
    assert [g.amount for g in intent.grants] == [9, 10]
    assert PERMIT2_TRANSFER_FROM.startswith("PermitTransferFrom(")
    assert PERMIT2_BATCH.startswith("PermitBatch(")


def test_permit2_types_elsewhere_are_opaque_messages() -> None:
    msg = {"details": details(WETH, 5), "spender": SPENDER, "sigDeadline": 1}
    intent, _ = decode(permit2("PermitSingle", msg, contract=USDC))
    assert intent.kind is IntentKind.MESSAGE and intent.grants == ()
    assert intent.calls == (checksum(bytes.fromhex(USDC[2:])),)
    doc = permit2("PermitSingle", msg)
    doc["domain"]["name"] = "Permit3"
    assert decode(doc)[0].kind is IntentKind.MESSAGE


def test_permit2_malformed_values_are_refused() -> None:
    msg = {"details": details(WETH, UINT160_MAX + 1), "spender": SPENDER, "sigDeadline": 1}
    refused(permit2("PermitSingle", msg))
    msg = {"details": {**details(WETH, 5), "extra": 1}, "spender": SPENDER, "sigDeadline": 1}
    refused(permit2("PermitSingle", msg))


# -- opaque messages ------------------------------------------------------------------------


def test_a_permit_in_another_shape_is_an_opaque_message() -> None:
    """Fields reordered: another typehash, so no token accepts it as a permit."""
    doc = permit()
    doc["types"]["Permit"] = list(reversed(doc["types"]["Permit"]))
    intent, _ = decode(doc)
    assert intent.kind is IntentKind.MESSAGE and intent.grants == ()
    assert intent.calls == (checksum(bytes.fromhex(USDC[2:])),)


def test_witness_transfers_stay_opaque() -> None:
    doc = permit2("PermitTransferFrom", {
        "permitted": {"token": USDC, "amount": 9}, "spender": SPENDER, "nonce": 1,
        "deadline": 2, "witness": {"user": SPENDER}})
    doc["primaryType"] = "PermitWitnessTransferFrom"
    doc["types"]["PermitWitnessTransferFrom"] = [*doc["types"].pop("PermitTransferFrom"),
                                                 {"name": "witness", "type": "Witness"}]
    doc["types"]["Witness"] = [{"name": "user", "type": "address"}]
    intent, _ = decode(doc)
    assert intent.kind is IntentKind.MESSAGE


MAIL = json.loads((Path(__file__).parents[1] / "vectors" / "eip712.json").read_text())["typedData"]


def test_messages_name_their_verifying_contract_as_the_call() -> None:
    doc = copy.deepcopy(MAIL)
    doc["domain"]["chainId"] = CHAIN
    intent, _ = decode(doc)
    assert intent.kind is IntentKind.MESSAGE and intent.fee == 0 and intent.fee_asset == ""
    assert intent.calls == ("0xCcCCccccCCCCcCCCCCCcCcCccCcCCCcCcccccccC",)
    del doc["domain"]["verifyingContract"]
    doc["types"]["EIP712Domain"] = DOMAIN_TYPE[:3]
    assert decode(doc)[0].calls == (NO_VERIFYING_CONTRACT,)


# -- through the HSM --------------------------------------------------------------------------


@pytest.fixture
def hsm(tmp_path: Path, clock: ManualClock, people: dict[str, Approver]) -> Any:
    h = Hsm.open(tmp_path / "h.sqlite", TEST_PASSPHRASE, so_passphrase=SO, clock=clock,
                 decoders=DecoderRegistry([EthereumTxDecoder(CHAIN), DEC]))
    h.create_key("eth", "SECP256K1", policy=eth_policy([people["t1"], people["t2"],
                                                        people["t3"]]))
    yield h
    h.close()


def hsm_doc(doc: dict[str, Any], hsm: Hsm) -> bytes:
    """``doc`` with the HSM key as owner."""
    me = hsm.address("eth", "ethereum", "mainnet")
    doc = copy.deepcopy(doc)
    for field in ("owner", "holder"):
        if field in doc["message"]:
            doc["message"][field] = me
    return json.dumps(doc).encode()


@pytest.mark.parametrize("doc", [
    permit(value=UNLIMITED), permit(value=10**6 + 1), dai_permit(True),
    permit2("PermitSingle", {"details": details(WETH, 1), "spender": SPENDER,
                             "sigDeadline": 1}),
])
def test_hsm_auto_tiers_never_sign_large_or_foreign_permits(hsm: Hsm,
                                                            doc: dict[str, Any]) -> None:
    with pytest.raises(PolicyNotMet):
        hsm.sign_now("eth", hsm_doc(doc, hsm), DEC.payload_type)


def test_hsm_signs_a_small_permit_under_a_token_naming_grants(hsm: Hsm) -> None:
    from tests.chains.test_eth_decoder import ASSET
    doc = permit(value=10**6, token=checksum(bytes.fromhex(ASSET[len("ERC20:0x"):])))
    result = hsm.sign_now("eth", hsm_doc(doc, hsm), DEC.payload_type)
    assert result.token == "small-grants"
    with pytest.raises(DecodeError, match="not this key"):  # a permit of someone else
        hsm.sign_now("eth", json.dumps(doc).encode(), DEC.payload_type)


# -- fuzz: any value anywhere gives a grant, a message, or DecodeError --------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-1, 2**260) | st.text(max_size=70)
    | st.sampled_from([ME, SPENDER, "0x" + "00" * 20, "0x", "0x1", str(UNLIMITED)]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=6)
SEEDS = [permit(), dai_permit(), permit2("PermitBatch", {
    "details": [details(WETH, 7)], "spender": EVE, "sigDeadline": 1}),
    permit2("PermitBatchTransferFrom", {"permitted": [{"token": USDC, "amount": 9}],
                                        "spender": SPENDER, "nonce": 1, "deadline": 2})]


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _leaves(v, (*path, k))] or [path]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _leaves(v, (*path, i))] or [path]
    return [path]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SEEDS), st.data(), JSON_VALUES)
def test_fuzz_typed_data_values(seed: dict[str, Any], data: st.DataObject, value: Any) -> None:
    doc = copy.deepcopy(seed)
    path = data.draw(st.sampled_from(_leaves(doc)))
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    try:
        intent, _ = decode(doc)
    except DecodeError:
        return
    assert intent.kind in (IntentKind.GRANT, IntentKind.MESSAGE)
    if intent.kind is IntentKind.GRANT:
        assert intent.grants and all(0 <= g.amount <= UNLIMITED for g in intent.grants)
    else:
        assert intent.calls and intent.grants == ()
