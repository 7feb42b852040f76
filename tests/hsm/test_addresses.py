"""hsm_emulator.addresses against BIP84 / BIP86 / BIP350 / EIP-55 and well-known keys.

Expected addresses come from tests/vectors/*.json; public keys are taken from the vectors
themselves (BIP84 prints them, BIP86 keys are read out of the printed xpubs with the
independent ``base58`` package), so the address encoders are tested on their own.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import base58
import coincurve
import pytest
from bip_utils import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm_emulator.addresses import AddressKind, Network, address, validate_address
from hsm_emulator.errors import InvalidInput

VECTORS = Path(__file__).parents[1] / "vectors"


def load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


BIP84 = load("bip84.json")
BIP86 = load("bip86.json")
BIP350 = load("bip350.json")
EIP55 = load("eip55.json")
KNOWN = load("known_keys.json")

BIP84_ADDRESSES = [b for b in BIP84["blocks"] if "address" in b]
BIP86_ADDRESSES = [b for b in BIP86["blocks"] if "address" in b]
HRP_NETWORK = {"bc": Network.MAINNET, "tb": Network.TESTNET, "bcrt": Network.REGTEST}
SEGWIT_KINDS = (AddressKind.P2WPKH, AddressKind.P2TR)
BITCOIN_KEY = bytes.fromhex(BIP84_ADDRESSES[0]["pubkey"])
SOLANA_KEY = bytes.fromhex(KNOWN["solana"]["public_key_hex"])


def xpub_key(xpub: str) -> bytes:
    """The 33-byte compressed key at the end of a BIP32 xpub payload."""
    return bytes(base58.b58decode_check(xpub))[45:]


def other_networks(network: Network) -> list[Network]:
    return [n for n in Network if n is not network]


# ----------------------------------------------------------------------------- P2WPKH (BIP84)


@pytest.mark.parametrize("block", BIP84_ADDRESSES, ids=lambda b: b["path"])
def test_bip84_p2wpkh_address(block: dict[str, str]) -> None:
    key = bytes.fromhex(block["pubkey"])
    assert address(AddressKind.P2WPKH, Network.MAINNET, key) == block["address"]
    assert (
        validate_address(AddressKind.P2WPKH, Network.MAINNET, block["address"]) == block["address"]
    )
    upper = block["address"].upper()
    assert validate_address(AddressKind.P2WPKH, Network.MAINNET, upper) == block["address"]


@pytest.mark.parametrize("block", BIP84_ADDRESSES, ids=lambda b: b["path"])
def test_mainnet_address_refused_on_other_networks(block: dict[str, str]) -> None:
    for network in other_networks(Network.MAINNET):
        with pytest.raises(InvalidInput, match="HRP"):
            validate_address(AddressKind.P2WPKH, network, block["address"])


@pytest.mark.parametrize("network", list(Network))
def test_each_network_accepts_only_its_own_prefix(network: Network) -> None:
    for kind in SEGWIT_KINDS:
        mine = address(kind, network, BITCOIN_KEY)
        assert mine.startswith({"mainnet": "bc1", "testnet": "tb1", "regtest": "bcrt1"}[network])
        assert validate_address(kind, network, mine) == mine
        for other in other_networks(network):
            with pytest.raises(InvalidInput):
                validate_address(kind, other, mine)


def test_p2wpkh_and_p2tr_do_not_accept_each_other() -> None:
    p2wpkh = BIP84_ADDRESSES[0]["address"]
    p2tr = BIP86_ADDRESSES[0]["address"]
    with pytest.raises(InvalidInput):
        validate_address(AddressKind.P2TR, Network.MAINNET, p2wpkh)
    with pytest.raises(InvalidInput):
        validate_address(AddressKind.P2WPKH, Network.MAINNET, p2tr)


# ----------------------------------------------------------------------------- P2TR (BIP86)


def tagged_hash(tag: str, data: bytes) -> bytes:
    """BIP340 tagged hash, written out here so the BIP86 check does not use bip-utils."""
    tag_hash = hashlib.sha256(tag.encode()).digest()
    return hashlib.sha256(tag_hash + tag_hash + data).digest()


@pytest.mark.parametrize("block", BIP86_ADDRESSES, ids=lambda b: b["path"])
def test_bip86_p2tr_address(block: dict[str, str]) -> None:
    key = xpub_key(block["xpub"])
    assert key[1:].hex() == block["internal_key"]
    assert address(AddressKind.P2TR, Network.MAINNET, key) == block["address"]
    assert validate_address(AddressKind.P2TR, Network.MAINNET, block["address"]) == block["address"]


@pytest.mark.parametrize("block", BIP86_ADDRESSES, ids=lambda b: b["path"])
def test_bip86_output_key_is_the_empty_tree_tweak(block: dict[str, str]) -> None:
    """Cross-check the vector itself with coincurve: Q = lift_x(P) + hashTapTweak(P)G."""
    internal = bytes.fromhex(block["internal_key"])
    tweak = tagged_hash("TapTweak", internal)
    output = coincurve.PublicKey(b"\x02" + internal).add(tweak).format()[1:]
    assert output.hex() == block["output_key"]
    assert block["scriptPubKey"] == "5120" + block["output_key"]


# ----------------------------------------------------------------------------- BIP350 vectors


def kind_of_script(script_hex: str) -> AddressKind | None:
    """scriptPubKey template -> the one address kind it is, if any."""
    script = bytes.fromhex(script_hex)
    if script[:2] == b"\x00\x14" and len(script) == 22:
        return AddressKind.P2WPKH
    if script[:2] == b"\x51\x20" and len(script) == 34:
        return AddressKind.P2TR
    return None


@pytest.mark.parametrize("vector", BIP350["valid"], ids=lambda v: v["address"][:20])
def test_bip350_valid_segwit_addresses(vector: dict[str, str]) -> None:
    addr = vector["address"]
    network = HRP_NETWORK[addr.lower().rsplit("1", 1)[0]]
    expected_kind = kind_of_script(vector["scriptPubKey"])
    for kind in SEGWIT_KINDS:
        if kind is expected_kind:
            assert validate_address(kind, network, addr) == addr.lower()
        else:  # valid segwit, but P2WSH / future versions are not this kind
            with pytest.raises(InvalidInput):
                validate_address(kind, network, addr)
        for other in other_networks(network):
            with pytest.raises(InvalidInput):
                validate_address(kind, other, addr)


@pytest.mark.parametrize("vector", BIP350["invalid"], ids=lambda v: v["reason"])
def test_bip350_invalid_segwit_addresses(vector: dict[str, str]) -> None:
    for kind in SEGWIT_KINDS:
        for network in Network:
            with pytest.raises(InvalidInput):
                validate_address(kind, network, vector["address"])


@pytest.mark.parametrize("kind", SEGWIT_KINDS)
def test_corrupted_bech32_refused(kind: AddressKind) -> None:
    good = address(kind, Network.MAINNET, BITCOIN_KEY)
    last = "q" if good[-1] != "q" else "p"
    for bad in (
        good[:-1] + last,
        good[:10] + good[11] + good[10] + good[12:],
        good[:-1],
        good + "q",
    ):
        with pytest.raises(InvalidInput):
            validate_address(kind, Network.MAINNET, bad)
    mixed = good[:5] + good[5:].upper()
    with pytest.raises(InvalidInput, match="mixed case"):
        validate_address(kind, Network.MAINNET, mixed)


# ----------------------------------------------------------------------------- Ethereum (EIP-55)

EIP55_CASES = [a for group in EIP55["test_cases"].values() for a in group]


@pytest.mark.parametrize("addr", EIP55_CASES)
def test_eip55_test_cases(addr: str) -> None:
    assert validate_address(AddressKind.ETHEREUM, Network.MAINNET, addr) == addr
    # The unchecked (single-case) spellings normalize to the checksummed one.
    assert validate_address(AddressKind.ETHEREUM, Network.MAINNET, addr.lower()) == addr
    hex_upper = "0x" + addr[2:].upper()
    assert validate_address(AddressKind.ETHEREUM, Network.TESTNET, hex_upper) == addr


@pytest.mark.parametrize("addr", EIP55["test_cases"]["Normal"])
def test_eip55_wrong_checksum_refused(addr: str) -> None:
    letters = [i for i, c in enumerate(addr) if i >= 2 and c.isalpha()]
    for i in letters:
        flipped = addr[:i] + addr[i].swapcase() + addr[i + 1 :]
        with pytest.raises(InvalidInput, match="EIP-55"):
            validate_address(AddressKind.ETHEREUM, Network.MAINNET, flipped)


@pytest.mark.parametrize(
    "bad",
    [
        "5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "0X5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAe",
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAedd",
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeg",
        " 0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed\n",
        "",
    ],
)
def test_malformed_ethereum_addresses_refused(bad: str) -> None:
    with pytest.raises(InvalidInput):
        validate_address(AddressKind.ETHEREUM, Network.MAINNET, bad)


def test_ethereum_address_of_private_key_one() -> None:
    vector = KNOWN["ethereum"]
    compressed = bytes.fromhex(vector["public_key_compressed_hex"])
    secret = bytes.fromhex(vector["private_key_hex"])
    assert coincurve.PrivateKey(secret).public_key.format() == compressed
    uncompressed = coincurve.PublicKey(compressed).format(compressed=False)
    for key in (compressed, uncompressed):
        for network in Network:  # an Ethereum address does not depend on the network
            assert address(AddressKind.ETHEREUM, network, key) == vector["address"]


# ----------------------------------------------------------------------------- Solana


def test_solana_address_of_rfc8032_test1_key() -> None:
    vector = KNOWN["solana"]
    secret = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vector["secret_key_hex"]))
    assert secret.public_key().public_bytes_raw() == SOLANA_KEY
    assert base58.b58encode(SOLANA_KEY).decode() == vector["address"]
    for network in Network:
        assert address(AddressKind.SOLANA, network, SOLANA_KEY) == vector["address"]
        assert validate_address(AddressKind.SOLANA, network, vector["address"]) == vector["address"]


def test_solana_accepts_off_curve_program_derived_addresses() -> None:
    off_curve = next(
        bytes([i]) * 32 for i in range(256) if not Ed25519PublicKey.IsValidBytes(bytes([i]) * 32)
    )
    pda = base58.b58encode(off_curve).decode()
    assert validate_address(AddressKind.SOLANA, Network.MAINNET, pda) == pda
    with pytest.raises(InvalidInput):  # but no address is ever *made* from a non-point
        address(AddressKind.SOLANA, Network.MAINNET, off_curve)


@pytest.mark.parametrize(
    "bad",
    [
        base58.b58encode(bytes(range(1, 32))).decode(),
        base58.b58encode(bytes(range(1, 34))).decode(),
        "FVen3X669xLzsi6N2V91DoiyzHzg1uAgqiT8jZ9nS96O",  # 'O' is not base58
        "FVen3X669xLzsi6N2V91DoiyzHzg1uAgqiT8jZ9nS96Z1",
        "0x" + "ab" * 20,
        "",
        "\uff26" * 44,  # FULLWIDTH LATIN CAPITAL LETTER F: not ASCII
    ],
)
def test_malformed_solana_addresses_refused(bad: str) -> None:
    with pytest.raises(InvalidInput):
        validate_address(AddressKind.SOLANA, Network.MAINNET, bad)


# ----------------------------------------------------------------------------- bad keys


@pytest.mark.parametrize(
    ("kind", "key", "problem"),
    [
        (AddressKind.P2WPKH, bytes(0), "33-byte"),
        (AddressKind.P2WPKH, SOLANA_KEY, "33-byte"),
        (AddressKind.P2WPKH, coincurve.PublicKey(BITCOIN_KEY).format(compressed=False), "33-byte"),
        (AddressKind.P2TR, BITCOIN_KEY[1:], "33-byte"),
        (AddressKind.ETHEREUM, SOLANA_KEY, "33 or 65-byte"),
        (AddressKind.ETHEREUM, BITCOIN_KEY + b"\x00", "33 or 65-byte"),
        (AddressKind.SOLANA, BITCOIN_KEY, "32-byte"),
        (AddressKind.SOLANA, b"\x00" + SOLANA_KEY, "32-byte"),
        (AddressKind.P2WPKH, b"\x04" + BITCOIN_KEY[1:], "prefix"),
        (AddressKind.ETHEREUM, b"\x02" + bytes(64), "prefix"),
        # BIP32 vector 5's "invalid pubkey 0200...07": x = 7 is not on secp256k1.
        (AddressKind.P2WPKH, bytes.fromhex("02" + "00" * 31 + "07"), "not a valid secp256k1"),
        (AddressKind.P2TR, bytes.fromhex("02" + "00" * 31 + "07"), "not a valid secp256k1"),
        (AddressKind.ETHEREUM, bytes.fromhex("02" + "00" * 31 + "07"), "not a valid secp256k1"),
    ],
)
def test_wrong_keys_refused(kind: AddressKind, key: bytes, problem: str) -> None:
    with pytest.raises(InvalidInput, match=problem):
        address(kind, Network.MAINNET, key)


@pytest.mark.parametrize("key", [BIP84_ADDRESSES[0]["pubkey"], None, 5, list(BITCOIN_KEY)])
def test_non_bytes_keys_refused(key: Any) -> None:
    with pytest.raises(InvalidInput, match="bytes"):
        address(AddressKind.P2WPKH, Network.MAINNET, key)


def test_string_values_and_enums_are_both_accepted() -> None:
    expected = BIP84_ADDRESSES[0]["address"]
    assert address("p2wpkh", "mainnet", BITCOIN_KEY) == expected  # type: ignore[arg-type]
    assert validate_address("p2wpkh", "mainnet", expected) == expected  # type: ignore[arg-type]
    key = bytearray(BITCOIN_KEY)
    assert address(AddressKind.P2WPKH, Network.MAINNET, key) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "network"), [("p2pkh", "mainnet"), ("p2wpkh", "signet"), (None, None)]
)
def test_unknown_kind_or_network_refused(kind: Any, network: Any) -> None:
    with pytest.raises(InvalidInput, match="unknown"):
        address(kind, network, BITCOIN_KEY)
    with pytest.raises(InvalidInput, match="unknown"):
        validate_address(kind, network, BIP84_ADDRESSES[0]["address"])


@pytest.mark.parametrize("value", [None, 5, b"bc1q", "bc1q\u00e9"])
def test_non_ascii_or_non_string_addresses_refused(value: Any) -> None:
    with pytest.raises(InvalidInput):
        validate_address(AddressKind.P2WPKH, Network.MAINNET, value)


# ----------------------------------------------------------------------------- properties


@given(st.sampled_from(list(AddressKind)), st.sampled_from(list(Network)), st.text(max_size=100))
@settings(max_examples=400)
def test_property_validate_only_raises_invalid_input(
    kind: AddressKind, network: Network, text: str
) -> None:
    try:
        normalized = validate_address(kind, network, text)
    except InvalidInput:
        return
    assert validate_address(kind, network, normalized) == normalized


@given(st.sampled_from(list(AddressKind)), st.binary(max_size=70))
def test_property_address_only_raises_invalid_input(kind: AddressKind, key: bytes) -> None:
    try:
        result = address(kind, Network.MAINNET, key)
    except InvalidInput:
        return
    assert validate_address(kind, Network.MAINNET, result) == result
