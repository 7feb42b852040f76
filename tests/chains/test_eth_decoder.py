"""The HSM's Ethereum decoders: intents, refusals, fuzzing, EIP-712 against the EIP's
own example, and signing through the real HSM (auto tier, approvals, contract calls)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import coincurve
import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from hypothesis import given, settings
from hypothesis import strategies as st

from chains.ethereum import Eip712Decoder, EthereumTxDecoder
from chains.ethereum.encoding import (
    address_of_public_key,
    checksum,
    keccak256,
    rlp_bytes,
    rlp_int,
    rlp_list,
)
from chains.ethereum.erc20 import (
    APPROVE_SELECTOR,
    INCREASE_ALLOWANCE_SELECTOR,
    TRANSFER_FROM_SELECTOR,
    TRANSFER_SELECTOR,
    encode_approve,
    encode_transfer,
)
from chains.ethereum.parse import decode
from chains.ethereum.tx import Eip1559Tx, LegacyTx, assemble, serialize_unsigned
from hsm_emulator import Hsm, ManualClock
from hsm_emulator.decoders import DecoderRegistry, JsonTransferDecoder
from hsm_emulator.errors import DecodeError, IntentMismatch, PolicyNotMet
from hsm_emulator.model import Grant, IntentKind, KeyAlgorithm, Transfer
from tests.conftest import SO, TEST_PASSPHRASE
from tests.helpers import Approver, group, token

VECTORS = Path(__file__).parents[1] / "vectors"
CHAIN = 31337
TOKEN = b"\x7a" * 20
BOB = b"\xb0" * 20


class View:
    """A KeyView over a local key, for decoder unit tests."""

    def __init__(self, secret: bytes = b"\x11" * 32,
                 algorithm: KeyAlgorithm = KeyAlgorithm.SECP256K1) -> None:
        self.key = coincurve.PrivateKey(secret)
        self.algorithm = algorithm
        self.fingerprint = b"\x00" * 4

    def public_key(self, path: str = "") -> bytes:
        return bytes(self.key.public_key.format())


def tx(to: bytes = BOB, value: int = 10**18, data: bytes = b"", chain: int = CHAIN,
       nonce: int = 0) -> Eip1559Tx:
    return Eip1559Tx(chain, nonce, 10**9, 3 * 10**10, 60_000, to, value, data)


DEC = EthereumTxDecoder(CHAIN)


def prepare(t: Eip1559Tx | LegacyTx) -> Any:
    return DEC.prepare(serialize_unsigned(t), View())


# -- intents ----------------------------------------------------------------------------


def test_plain_eth_transfer() -> None:
    intent, items = prepare(tx())
    assert intent.kind is IntentKind.TRANSFER
    assert intent.transfers == (Transfer("ETH", 10**18, checksum(BOB)),)
    assert (intent.chain, intent.network) == ("ethereum", "eip155:31337")
    assert intent.fee == 60_000 * 3 * 10**10 and intent.fee_asset == "ETH"
    assert dict(intent.details)["from"] == address_of_public_key(View().public_key())
    assert len(items) == 1 and items[0].path == "" and items[0].data == keccak256(
        serialize_unsigned(tx()))


def test_legacy_fee_is_gas_times_price() -> None:
    intent, _ = prepare(LegacyTx(CHAIN, 0, 7, 21_000, BOB, 5))
    assert intent.fee == 7 * 21_000 and dict(intent.details)["type"] == "legacy-eip155"


def test_erc20_transfer_exact_shape() -> None:
    intent, _ = prepare(tx(TOKEN, 0, encode_transfer(BOB, 1234)))
    assert intent.kind is IntentKind.TRANSFER
    assert intent.transfers == (Transfer("ERC20:0x" + TOKEN.hex(), 1234, checksum(BOB)),)


ASSET = "ERC20:0x" + TOKEN.hex()
MAX = 2**256 - 1


def word(address: bytes) -> bytes:
    return address.rjust(32, b"\x00")


def test_erc20_transfer_is_a_transfer_only_in_its_exact_shape() -> None:
    intent, _ = prepare(tx(TOKEN, 0, encode_transfer(BOB, MAX)))
    assert intent.kind is IntentKind.TRANSFER and intent.calls == () and intent.grants == ()
    assert intent.transfers == (Transfer(ASSET, MAX, checksum(BOB)),)
    assert dict(intent.details)["function"] == "transfer"


@pytest.mark.parametrize("data", [
    encode_transfer(BOB, 5) + b"\x00",  # one trailing byte: Solidity ignores it
    encode_transfer(BOB, 5) + b"\x00" * 32,  # a trailing word
    TRANSFER_SELECTOR + b"\x01" + word(BOB)[1:] + (5).to_bytes(32, "big"),  # dirty padding
    TRANSFER_SELECTOR + b"\xff" * 12 + BOB + (5).to_bytes(32, "big"),  # ABI v1 masks it
])
def test_non_canonical_transfer_is_opaque_but_still_counted(data: bytes) -> None:
    """The reviewer's finding: a transfer with a trailing byte executes as a transfer.
    It is a contract call (released only by a token naming contract_call) that still
    lists the token transfer, and calls the token: allowlists and velocity see both."""
    intent, _ = prepare(tx(TOKEN, 0, data))
    assert intent.kind is IntentKind.CONTRACT_CALL
    assert intent.calls == (checksum(TOKEN),)
    assert intent.transfers == (Transfer(ASSET, 5, checksum(BOB)),)
    assert intent.moved() == {ASSET: 5}
    assert set(intent.recipients()) == {checksum(BOB), checksum(TOKEN)}
    assert "note" in dict(intent.details)


@pytest.mark.parametrize("selector,function", [
    (APPROVE_SELECTOR, "approve"), (INCREASE_ALLOWANCE_SELECTOR, "increaseAllowance")])
@pytest.mark.parametrize("amount", [0, 1, 10**6, MAX])
def test_approvals_are_grants_with_exact_amounts(selector: bytes, function: str,
                                                 amount: int) -> None:
    data = selector + word(BOB) + amount.to_bytes(32, "big")
    intent, _ = prepare(tx(TOKEN, 0, data))
    assert intent.kind is IntentKind.GRANT
    assert intent.grants == (Grant(ASSET, amount, checksum(BOB)),)
    assert intent.transfers == () and intent.calls == ()
    assert intent.moved() == {ASSET: amount}
    assert intent.outflow() == {ASSET: amount, "ETH": 60_000 * 3 * 10**10}
    assert intent.recipients() == (checksum(BOB),)
    assert dict(intent.details)["function"] == function
    assert data == encode_approve(BOB, amount) or selector != APPROVE_SELECTOR


def test_approve_max_to_an_attacker_is_a_grant_of_everything() -> None:
    eve = b"\xee" * 20
    intent, _ = prepare(tx(TOKEN, 0, encode_approve(eve, MAX)))
    assert intent.kind is IntentKind.GRANT
    assert intent.grants == (Grant(ASSET, MAX, checksum(eve)),)


@pytest.mark.parametrize("data", [
    encode_approve(BOB, 7) + b"\x00",  # trailing byte
    APPROVE_SELECTOR + b"\x00" * 11 + b"\x01" + BOB + (7).to_bytes(32, "big"),  # dirty
    INCREASE_ALLOWANCE_SELECTOR + word(BOB) + (7).to_bytes(32, "big") + b"\x00" * 4,
])
def test_non_canonical_approvals_are_opaque_but_list_the_grant(data: bytes) -> None:
    intent, _ = prepare(tx(TOKEN, 0, data))
    assert intent.kind is IntentKind.CONTRACT_CALL and intent.calls == (checksum(TOKEN),)
    assert intent.grants == (Grant(ASSET, 7, checksum(BOB)),)


def test_approve_with_eth_attached_is_opaque() -> None:
    intent, _ = prepare(tx(TOKEN, 3, encode_approve(BOB, 7)))
    assert intent.kind is IntentKind.CONTRACT_CALL and intent.calls == (checksum(TOKEN),)
    assert intent.transfers == (Transfer("ETH", 3, checksum(TOKEN)),)
    assert intent.grants == (Grant(ASSET, 7, checksum(BOB)),)


def test_transfer_from_is_opaque_and_calls_the_token() -> None:
    data = TRANSFER_FROM_SELECTOR + word(b"\xaa" * 20) + word(BOB) + (9).to_bytes(32, "big")
    intent, _ = prepare(tx(TOKEN, 0, data))
    assert intent.kind is IntentKind.CONTRACT_CALL
    assert intent.calls == (checksum(TOKEN),)
    assert intent.transfers == () and intent.grants == ()
    assert dict(intent.details)["function"] == "transferFrom"


@pytest.mark.parametrize("to,value,data", [
    (TOKEN, 1, encode_transfer(BOB, 5)),  # ETH value with a token transfer
    (TOKEN, 0, encode_transfer(BOB, 5) + b"\x00"),  # not the exact ABI length
    (TOKEN, 0, TRANSFER_SELECTOR + b"\x01" + encode_transfer(BOB, 5)[5:]),  # dirty padding
    (TOKEN, 0, keccak256(b"decreaseAllowance(address,uint256)")[:4] + encode_transfer(BOB, 5)[4:]),
    (TOKEN, 0, TRANSFER_FROM_SELECTOR + b"\x00" * 96),
    (TOKEN, 0, APPROVE_SELECTOR + b"\x00" * 63),  # too short to be read at all
    (b"", 0, b"\x60\x00"),  # contract creation
    (b"", 7, b"\x60\x00"),  # contract creation with an endowment
    (BOB, 5, b"\x01"),  # ETH plus calldata
])
def test_everything_else_is_a_contract_call(to: bytes, value: int, data: bytes) -> None:
    intent, _ = prepare(tx(to, value, data))
    assert intent.kind is IntentKind.CONTRACT_CALL
    details = dict(intent.details)
    assert details["data"] == "0x" + data.hex()
    target = checksum(to) if to else "(contract creation)"
    assert details["to"] == target
    assert intent.calls == (target,)  # allowlists see the called contract
    assert intent.total("ETH") == value  # velocity still counts attached ETH
    assert all(t.destination == target for t in intent.transfers if t.asset == "ETH")


def test_nothing_that_moves_tokens_is_value_less_and_non_opaque() -> None:
    """Every calldata with a value-moving selector, in any length and padding, decodes to
    a TRANSFER or GRANT that carries it, or to an opaque CONTRACT_CALL."""
    selectors = [TRANSFER_SELECTOR, APPROVE_SELECTOR, INCREASE_ALLOWANCE_SELECTOR,
                 TRANSFER_FROM_SELECTOR]
    for selector in selectors:
        for body in (b"", b"\x00" * 31, word(BOB) + b"\x00" * 32, word(BOB) + b"\x01" * 33,
                     b"\x01" + word(BOB)[1:] + b"\x02" * 32):
            for value in (0, 1):
                intent, _ = prepare(tx(TOKEN, value, selector + body))
                if intent.kind is IntentKind.CONTRACT_CALL:
                    assert intent.calls == (checksum(TOKEN),)
                else:
                    assert intent.kind in (IntentKind.TRANSFER, IntentKind.GRANT)
                    assert intent.moved() and value == 0 and len(body) == 64


# -- fees: the decoded fee is the most the transaction can pay -----------------------


def test_eip1559_fee_bounds_every_base_fee() -> None:
    t = Eip1559Tx(CHAIN, 0, 2 * 10**9, 3 * 10**10, 60_000, BOB, 1)
    intent, _ = prepare(t)
    assert intent.fee == 60_000 * 3 * 10**10
    for base_fee in (0, 1, 10**9, 28 * 10**9, 3 * 10**10):
        effective = min(t.max_fee_per_gas, base_fee + t.max_priority_fee_per_gas)
        assert t.gas_limit * effective <= intent.fee  # gasUsed <= gasLimit


def test_a_priority_fee_above_the_fee_cap_is_refused() -> None:
    items = [rlp_int(CHAIN), rlp_int(0), rlp_int(10**10 + 1), rlp_int(10**10),
             rlp_int(21_000), rlp_bytes(BOB), rlp_int(1), rlp_bytes(b""), rlp_list([])]
    payload = b"\x02" + rlp_list(items)
    with pytest.raises(DecodeError, match="maxPriorityFeePerGas"):
        DEC.prepare(payload, View())
    with pytest.raises(DecodeError):
        DecoderRegistry([DEC]).prepare(DEC.payload_type, payload, View())


def test_legacy_fee_is_the_whole_gas_price() -> None:
    intent, _ = prepare(LegacyTx(CHAIN, 0, 7 * 10**9, 50_000, TOKEN, 0, encode_transfer(BOB, 1)))
    assert intent.fee == 7 * 10**9 * 50_000 and intent.fee_asset == "ETH" and intent.rent == 0


def test_long_calldata_is_shown_by_hash() -> None:
    data = b"\x42" * 5000
    details = dict(prepare(tx(TOKEN, 0, data))[0].details)
    assert "data" not in details and details["dataKeccak256"] == "0x" + keccak256(data).hex()


def test_refusals() -> None:
    with pytest.raises(DecodeError, match="chain id 1"):
        prepare(tx(chain=1))
    with pytest.raises(DecodeError, match="secp256k1"):
        DEC.prepare(serialize_unsigned(tx()), View(algorithm=KeyAlgorithm.ED25519))
    signed = assemble(tx(), bytes(View().key.sign_recoverable(keccak256(b"x"), hasher=None)))
    with pytest.raises(DecodeError, match="unsigned"):
        DEC.prepare(signed, View())
    with pytest.raises(ValueError):
        EthereumTxDecoder(0)


# -- fuzz: the decoder itself answers only DecodeError, as the registry does ----------

SAMPLES = [serialize_unsigned(tx()), serialize_unsigned(tx(TOKEN, 0, encode_transfer(BOB, 9))),
           serialize_unsigned(LegacyTx(CHAIN, 1, 2, 21000, BOB, 3))]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SAMPLES), st.integers(0, 500), st.binary(min_size=1, max_size=40),
       st.binary(max_size=200))
def test_fuzz_decoder(payload: bytes, cut: int, extra: bytes, noise: bytes) -> None:
    registry = DecoderRegistry([DEC])
    for bad in (payload[:cut % len(payload)], payload + extra, noise, b"\x02" + noise,
                payload + b"\x00" * 2_000_000):
        try:
            DEC.prepare(bad, View())
        except DecodeError:
            with pytest.raises(DecodeError):
                registry.prepare(DEC.payload_type, bad, View())
        else:  # a rare random valid unsigned transaction: it must re-encode exactly
            assert serialize_unsigned(decode(bad).tx) == bad


# -- EIP-712 ----------------------------------------------------------------------------

EIP712 = json.loads((VECTORS / "eip712.json").read_text())


def test_eip712_mail_example_verbatim() -> None:
    signable = encode_typed_data(full_message=EIP712["typedData"])
    assert "0x" + bytes(signable.header).hex() == EIP712["domainSeparator"]
    assert "0x" + bytes(signable.body).hex() == EIP712["hashStruct_Mail"]
    assert keccak256(EIP712["encodeType_Mail"].encode()).hex() == EIP712["typeHash_Mail"][2:]
    secret = keccak256(EIP712["private_key_preimage"].encode())
    view = View(secret)
    intent, items = Eip712Decoder(1).prepare(json.dumps(EIP712["typedData"]).encode(), view)
    assert "0x" + items[0].data.hex() == EIP712["signHash"]
    assert intent.kind is IntentKind.MESSAGE and intent.transfers == ()
    details = dict(intent.details)
    assert details["primaryType"] == "Mail" and details["signer"].lower() == EIP712["address"]
    sig = view.key.sign_recoverable(items[0].data, hasher=None)
    assert sig[64] + 27 == EIP712["sig"]["v"]
    assert "0x" + sig[:32].hex() == EIP712["sig"]["r"]
    assert "0x" + sig[32:64].hex() == EIP712["sig"]["s"]


def test_eip712_refusals() -> None:
    doc = EIP712["typedData"]
    dec = Eip712Decoder(1)
    for bad in ({**doc, "domain": {**doc["domain"], "chainId": 5}},
                {**doc, "extra": 1}, {k: v for k, v in doc.items() if k != "domain"},
                {**doc, "primaryType": "Person"}, [], "x"):
        with pytest.raises(DecodeError):
            dec.prepare(json.dumps(bad).encode(), View())
    with pytest.raises(DecodeError):
        Eip712Decoder(5).prepare(json.dumps(doc).encode(), View())
    with pytest.raises(DecodeError):
        dec.prepare(b"\xff\xfe", View())


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 2000))
def test_fuzz_eip712(noise: bytes, cut: int) -> None:
    payload = json.dumps(EIP712["typedData"]).encode()
    for bad in (noise, payload[:cut % len(payload)], payload + noise[:1] + b"x"):
        with pytest.raises(DecodeError):
            Eip712Decoder(1).prepare(bad, View())


# -- through the real HSM ---------------------------------------------------------------

WEI = 10**18


#: What a conditioned token lets a transaction cost (fee plus rent), in wei.
FEE_CAP = 10**16
EVE = b"\xee" * 20
CAROL = b"\xca" * 20  #: allowlisted by an allowlist-only auto tier


def eth_policy(traders: list[Approver]) -> dict[str, Any]:
    fee = [{"asset": "ETH", "max": FEE_CAP}]
    tokens = [
        token("small", [], conditions={"amounts": [{"asset": "ETH", "max": WEI},
                                                  {"asset": ASSET, "max": 10**6}],
                                       "maxFee": fee}),
        # allowlist- and velocity-only auto tiers: what the reviewer's findings attacked
        token("allowlisted", [], conditions={"destinations": [checksum(CAROL)],
                                             "maxFee": fee}),
        token("velocity", [], conditions={
            "velocity": [{"asset": "ETH", "max": 2 * WEI, "windowSeconds": 86400},
                         {"asset": ASSET, "max": 10**7, "windowSeconds": 86400}],
            "maxFee": fee}),
        token("small-grants", [], conditions={"kinds": ["grant"], "maxFee": fee,
                                              "amounts": [{"asset": ASSET, "max": 10**6}],
                                              "destinations": [checksum(BOB)]}),
        token("medium", [group("traders", 2, traders)], timeout=3600,
              conditions={"amounts": [{"asset": "ETH", "max": 50 * WEI}], "maxFee": fee}),
        token("any-call", [group("traders", 2, traders)], timeout=3600),
    ]
    admin = [token("admin", [group("admins", 1, traders)])]
    return {"ruleUse": {"tokens": tokens}, "ruleBlock": {"tokens": admin},
            "ruleUnblock": {"tokens": admin}, "ruleModify": {"tokens": admin},
            "networks": [f"ethereum:{CHAIN}"]}


@pytest.fixture
def eth_hsm(tmp_path: Path, clock: ManualClock, people: dict[str, Approver]) -> Any:
    registry = DecoderRegistry([EthereumTxDecoder(CHAIN), Eip712Decoder(CHAIN),
                                JsonTransferDecoder()])
    hsm = Hsm.open(tmp_path / "h.sqlite", TEST_PASSPHRASE, so_passphrase=SO, clock=clock,
                   decoders=registry)
    hsm.create_key("eth", "SECP256K1", policy=eth_policy([people["t1"], people["t2"],
                                                           people["t3"]]))
    yield hsm
    hsm.close()


def sender(hsm: Hsm) -> str:
    return hsm.address("eth", "ethereum", "mainnet")


def test_hsm_signs_small_transfer_at_once(eth_hsm: Hsm) -> None:
    t = tx(value=WEI // 2)
    result = eth_hsm.sign_now("eth", serialize_unsigned(t), DEC.payload_type)
    raw = assemble(t, result.signatures[0])
    assert decode(raw).sender() == sender(eth_hsm)
    assert address_of_public_key(eth_hsm.public_key("eth")) == sender(eth_hsm)


def test_hsm_medium_needs_approvals_and_accepts_fee_bump(eth_hsm: Hsm,
                                                         people: dict[str, Approver]) -> None:
    t = tx(value=5 * WEI)
    payload = serialize_unsigned(t)
    with pytest.raises(PolicyNotMet):
        eth_hsm.sign_now("eth", payload, DEC.payload_type)
    fee_cap = 2 * t.max_fee
    ch = eth_hsm.begin("eth", payload=payload, payload_type=DEC.payload_type, fee_cap=fee_cap)
    approvals = [people["t1"].approve(ch.envelope), people["t3"].approve(ch.envelope)]
    bumped = Eip1559Tx(CHAIN, 0, 2 * 10**9, 4 * 10**10, 60_000, BOB, 5 * WEI)
    result = eth_hsm.execute(ch.request_id, approvals, payload=serialize_unsigned(bumped))
    assert decode(assemble(bumped, result.signatures[0])).sender() == sender(eth_hsm)


def test_hsm_never_auto_signs_contract_calls_or_other_chains(eth_hsm: Hsm) -> None:
    call = tx(TOKEN, 0, TRANSFER_FROM_SELECTOR + b"\x00" * 96)
    with pytest.raises(PolicyNotMet):
        eth_hsm.sign_now("eth", serialize_unsigned(call), DEC.payload_type)
    with pytest.raises(DecodeError):
        eth_hsm.sign_now("eth", serialize_unsigned(tx(chain=1, value=1)), DEC.payload_type)
    small_token = tx(TOKEN, 0, encode_transfer(BOB, 10))
    eth_hsm.sign_now("eth", serialize_unsigned(small_token), DEC.payload_type)


@pytest.mark.parametrize("data", [
    encode_transfer(BOB, 10**9) + b"\x00",  # finding 1: a transfer with a trailing byte
    encode_transfer(EVE, 10**9) + b"\x00",
    encode_transfer(CAROL, 10**9) + b"\x00",
    encode_approve(CAROL, MAX),
    encode_approve(EVE, MAX),  # finding 2: approve(attacker, 2^256-1)
    encode_approve(BOB, MAX),
    INCREASE_ALLOWANCE_SELECTOR + word(BOB) + MAX.to_bytes(32, "big"),
    encode_approve(BOB, 5) + b"\x00",  # an approval in disguise
])
def test_hsm_auto_tiers_refuse_what_the_review_found(eth_hsm: Hsm, data: bytes) -> None:
    """No auto tier - amount band, allowlist-only, velocity-only, or one releasing small
    grants to an allowlisted spender - signs these."""
    with pytest.raises(PolicyNotMet):
        eth_hsm.sign_now("eth", serialize_unsigned(tx(TOKEN, 0, data)), DEC.payload_type)


def test_hsm_allowlist_only_tier_signs_plain_transfers_to_the_list(eth_hsm: Hsm) -> None:
    for t in (tx(CAROL, 10 * WEI), tx(TOKEN, 0, encode_transfer(CAROL, 10**9))):
        assert eth_hsm.sign_now("eth", serialize_unsigned(t), DEC.payload_type).token == (
            "allowlisted")


def test_hsm_releases_a_small_grant_only_where_a_token_names_grants(eth_hsm: Hsm) -> None:
    result = eth_hsm.sign_now("eth", serialize_unsigned(tx(TOKEN, 0, encode_approve(BOB, 10**6))),
                              DEC.payload_type)
    assert result.token == "small-grants"
    for too_much in (encode_approve(BOB, 10**6 + 1), encode_approve(EVE, 1)):
        with pytest.raises(PolicyNotMet):
            eth_hsm.sign_now("eth", serialize_unsigned(tx(TOKEN, 0, too_much)),
                             DEC.payload_type)


def test_hsm_fee_above_the_cap_is_refused(eth_hsm: Hsm) -> None:
    pricey = Eip1559Tx(CHAIN, 0, 10**9, FEE_CAP // 21_000 + 1, 21_000, BOB, 1)
    with pytest.raises(PolicyNotMet, match="fee"):
        eth_hsm.sign_now("eth", serialize_unsigned(pricey), DEC.payload_type)


def test_hsm_rebuilt_payload_must_keep_the_transfer(eth_hsm: Hsm,
                                                    people: dict[str, Approver]) -> None:
    payload = serialize_unsigned(tx(value=5 * WEI))
    ch = eth_hsm.begin("eth", payload=payload, payload_type=DEC.payload_type)
    approvals = [people["t1"].approve(ch.envelope), people["t2"].approve(ch.envelope)]
    with pytest.raises(IntentMismatch):
        eth_hsm.execute(ch.request_id, approvals,
                        payload=serialize_unsigned(tx(to=b"\xee" * 20, value=5 * WEI)))


def test_hsm_rebuilt_contract_call_must_keep_its_calldata(eth_hsm: Hsm,
                                                          people: dict[str, Approver]) -> None:
    approve_selector = keccak256(b"approve(address,uint256)")[:4]
    harmless = tx(TOKEN, 0, approve_selector + b"\x00" * 64)
    evil = tx(TOKEN, 0, approve_selector + b"\x00" * 12 + b"\xee" * 20 + b"\xff" * 32)
    ch = eth_hsm.begin("eth", payload=serialize_unsigned(harmless),
                       payload_type=DEC.payload_type)
    approvals = [people["t1"].approve(ch.envelope), people["t2"].approve(ch.envelope)]
    with pytest.raises(IntentMismatch):
        eth_hsm.execute(ch.request_id, approvals, payload=serialize_unsigned(evil))


def test_hsm_signs_typed_data_only_with_approvals(eth_hsm: Hsm,
                                                  people: dict[str, Approver]) -> None:
    doc = {**EIP712["typedData"], "domain": {**EIP712["typedData"]["domain"],
                                             "chainId": CHAIN}}
    payload = json.dumps(doc).encode()
    ptype = f"ETHEREUM_EIP712:eip155:{CHAIN}"
    with pytest.raises(PolicyNotMet):
        eth_hsm.sign_now("eth", payload, ptype)
    ch = eth_hsm.begin("eth", payload=payload, payload_type=ptype)
    result = eth_hsm.execute(ch.request_id, [people["t1"].approve(ch.envelope),
                                             people["t2"].approve(ch.envelope)])
    sig = result.signatures[0]
    recovered = Account._recover_hash(
        encode_and_hash(doc), vrs=(sig[64] + 27, int.from_bytes(sig[:32], "big"),
                                   int.from_bytes(sig[32:64], "big")))
    assert recovered == sender(eth_hsm)


def encode_and_hash(doc: dict[str, Any]) -> bytes:
    signable = encode_typed_data(full_message=doc)
    return keccak256(b"\x19\x01" + bytes(signable.header) + bytes(signable.body))


def test_pure_modules_import_no_network_code() -> None:
    import subprocess
    import sys
    code = ("import sys, chains.ethereum, chains.ethereum.signing, chains.ethereum.fees;"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'web3', 'requests', 'aiohttp', 'urllib3', 'http', 'websockets'});"
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stdout + result.stderr
