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

from chains.errors import ChainDecodeError
from chains.ethereum import Eip712Decoder, EthereumTxDecoder
from chains.ethereum.encoding import address_of_public_key, checksum, keccak256
from chains.ethereum.erc20 import TRANSFER_SELECTOR, encode_transfer
from chains.ethereum.parse import decode
from chains.ethereum.tx import Eip1559Tx, LegacyTx, assemble, serialize_unsigned
from hsm_emulator import Hsm, ManualClock
from hsm_emulator.decoders import DecoderRegistry, JsonTransferDecoder
from hsm_emulator.errors import DecodeError, IntentMismatch, PolicyNotMet
from hsm_emulator.model import IntentKind, KeyAlgorithm, Transfer
from tests.conftest import SO, TEST_PASSPHRASE
from tests.helpers import Approver, group, token

VECTORS = Path(__file__).parent / "vectors"
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


@pytest.mark.parametrize("to,value,data", [
    (TOKEN, 1, encode_transfer(BOB, 5)),  # ETH value with a token transfer
    (TOKEN, 0, encode_transfer(BOB, 5) + b"\x00"),  # not the exact ABI length
    (TOKEN, 0, TRANSFER_SELECTOR + b"\x01" + encode_transfer(BOB, 5)[5:]),  # dirty padding
    (TOKEN, 0, keccak256(b"approve(address,uint256)")[:4] + encode_transfer(BOB, 5)[4:]),
    (TOKEN, 0, keccak256(b"transferFrom(address,address,uint256)")[:4] + b"\x00" * 96),
    (b"", 0, b"\x60\x00"),  # contract creation
    (BOB, 5, b"\x01"),  # ETH plus calldata
])
def test_everything_else_is_a_contract_call(to: bytes, value: int, data: bytes) -> None:
    intent, _ = prepare(tx(to, value, data))
    assert intent.kind is IntentKind.CONTRACT_CALL
    details = dict(intent.details)
    assert details["data"] == "0x" + data.hex()
    assert details["to"] == (checksum(to) if to else "(contract creation)")
    assert intent.total("ETH") == value  # velocity still counts attached ETH


def test_long_calldata_is_shown_by_hash() -> None:
    data = b"\x42" * 5000
    details = dict(prepare(tx(TOKEN, 0, data))[0].details)
    assert "data" not in details and details["dataKeccak256"] == "0x" + keccak256(data).hex()


def test_refusals() -> None:
    with pytest.raises(ChainDecodeError, match="chain id 1"):
        prepare(tx(chain=1))
    with pytest.raises(ChainDecodeError, match="secp256k1"):
        DEC.prepare(serialize_unsigned(tx()), View(algorithm=KeyAlgorithm.ED25519))
    signed = assemble(tx(), bytes(View().key.sign_recoverable(keccak256(b"x"), hasher=None)))
    with pytest.raises(ChainDecodeError, match="unsigned"):
        DEC.prepare(signed, View())
    with pytest.raises(ValueError):
        EthereumTxDecoder(0)


# -- fuzz: the decoder answers only ChainDecodeError, the registry only DecodeError -----

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
        except ChainDecodeError:
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
        with pytest.raises(ChainDecodeError):
            dec.prepare(json.dumps(bad).encode(), View())
    with pytest.raises(ChainDecodeError):
        Eip712Decoder(5).prepare(json.dumps(doc).encode(), View())
    with pytest.raises(ChainDecodeError):
        dec.prepare(b"\xff\xfe", View())


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 2000))
def test_fuzz_eip712(noise: bytes, cut: int) -> None:
    payload = json.dumps(EIP712["typedData"]).encode()
    for bad in (noise, payload[:cut % len(payload)], payload + noise[:1] + b"x"):
        with pytest.raises(ChainDecodeError):
            Eip712Decoder(1).prepare(bad, View())


# -- through the real HSM ---------------------------------------------------------------

WEI = 10**18


def eth_policy(traders: list[Approver]) -> dict[str, Any]:
    tokens = [
        token("small", [], conditions={"amounts": [{"asset": "ETH", "max": WEI},
                                                  {"asset": "ERC20:0x" + TOKEN.hex(),
                                                   "max": 10**6}]}),
        token("medium", [group("traders", 2, traders)], timeout=3600,
              conditions={"amounts": [{"asset": "ETH", "max": 50 * WEI}]}),
        token("any-call", [group("traders", 2, traders)], timeout=3600),
    ]
    admin = [token("admin", [group("admins", 1, traders)])]
    return {"ruleUse": {"tokens": tokens}, "ruleBlock": {"tokens": admin},
            "ruleUnblock": {"tokens": admin}, "ruleModify": {"tokens": admin}}


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
    call = tx(TOKEN, 0, keccak256(b"approve(address,uint256)")[:4] + b"\x00" * 64)
    with pytest.raises(PolicyNotMet):
        eth_hsm.sign_now("eth", serialize_unsigned(call), DEC.payload_type)
    with pytest.raises(DecodeError):
        eth_hsm.sign_now("eth", serialize_unsigned(tx(chain=1, value=1)), DEC.payload_type)
    small_token = tx(TOKEN, 0, encode_transfer(BOB, 10))
    eth_hsm.sign_now("eth", serialize_unsigned(small_token), DEC.payload_type)


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
                            check=False, cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stdout + result.stderr
