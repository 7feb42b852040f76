"""Destination addresses per network: BIP350's vectors, base58, and wrong-network refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from chains.bitcoin import ChangeKey, Payment, build_psbt
from chains.bitcoin.addresses import address_to_script, script_to_address, validate_address
from chains.errors import InvalidAddress
from hsm_emulator.addresses import AddressKind, Network, address
from hsm_emulator.keys import KeyMaterial
from hsm_emulator.model import KeyAlgorithm

BIP350 = json.loads((Path(__file__).parents[1] / "vectors" / "bip350.json").read_text())
HRP_NET = {"bc": "mainnet", "tb": "testnet", "bcrt": "regtest"}
#: The output templates this wallet pays to; other witness versions are refused.
PAYABLE = {("00", 22), ("00", 34), ("51", 34)}


@pytest.mark.parametrize("vector", BIP350["valid"], ids=lambda v: v["address"][:14])
def test_bip350_valid_addresses(vector: dict[str, Any]) -> None:
    addr, spk = vector["address"], vector["scriptPubKey"]
    net = HRP_NET[addr.lower().rsplit("1", 1)[0]]
    if (spk[:2], len(spk) // 2) in PAYABLE:
        assert address_to_script(net, addr).hex() == spk
        assert validate_address(net, addr) == addr.lower()
        assert script_to_address(net, bytes.fromhex(spk)) == addr.lower()
    else:  # witness v2..v16 and odd lengths: valid BIP350, refused as a destination
        with pytest.raises(InvalidAddress):
            address_to_script(net, addr)


@pytest.mark.parametrize("vector", BIP350["invalid"], ids=lambda v: v["reason"][:30])
@pytest.mark.parametrize("net", ["mainnet", "testnet", "regtest"])
def test_bip350_invalid_addresses(vector: dict[str, Any], net: str) -> None:
    with pytest.raises(InvalidAddress):
        address_to_script(net, vector["address"])


KEY = KeyMaterial.generate(KeyAlgorithm.SECP256K1).public_key


@pytest.mark.parametrize("kind", [AddressKind.P2WPKH, AddressKind.P2TR])
def test_segwit_addresses_only_on_their_network(kind: AddressKind) -> None:
    for own in Network:
        addr = address(kind, own, KEY)
        for net in ("mainnet", "testnet", "signet", "regtest"):
            same = {"signet": "testnet"}.get(net, net) == own.value
            if same:
                assert validate_address(net, addr) == addr
            else:
                with pytest.raises(InvalidAddress):
                    validate_address(net, addr)


# Widely published base58 addresses (Bitcoin wiki / Bitcoin Core's key_io tests).
MAINNET_P2PKH = "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2"
MAINNET_P2SH = "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy"
TESTNET_P2PKH = "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn"
TESTNET_P2SH = "2MzQwSSnBHWHqSAqtTVQ6v47XtaisrJa1Vc"


@pytest.mark.parametrize(("addr", "net", "prefix"), [
    (MAINNET_P2PKH, "mainnet", "76a914"), (MAINNET_P2SH, "mainnet", "a914"),
    (TESTNET_P2PKH, "testnet", "76a914"), (TESTNET_P2SH, "testnet", "a914"),
    (TESTNET_P2PKH, "regtest", "76a914"), (TESTNET_P2SH, "signet", "a914"),
])
def test_base58_addresses(addr: str, net: str, prefix: str) -> None:
    script = address_to_script(net, addr)
    assert script.hex().startswith(prefix)
    assert script_to_address(net, script) == addr


@pytest.mark.parametrize(("addr", "net"), [
    (MAINNET_P2PKH, "testnet"), (MAINNET_P2SH, "regtest"), (TESTNET_P2PKH, "mainnet"),
    (TESTNET_P2SH, "mainnet"), (MAINNET_P2PKH[:-1] + "3", "mainnet"), ("", "mainnet"),
    ("bc1" + "q" * 100, "mainnet"), ("OP_RETURN:00", "mainnet"), ("\u00e9", "mainnet"),
])
def test_bad_or_wrong_network_base58_is_refused(addr: str, net: str) -> None:
    with pytest.raises(InvalidAddress):
        address_to_script(net, addr)


def test_unknown_network_is_refused() -> None:
    with pytest.raises(InvalidAddress):
        validate_address("litecoin", MAINNET_P2PKH)


def test_op_return_renders_its_data() -> None:
    assert script_to_address("mainnet", b"\x6a\x03abc") == "OP_RETURN:03" + b"abc".hex()


def test_wrong_network_destination_is_refused_before_building() -> None:
    change = ChangeKey("1/0", KEY)
    with pytest.raises(InvalidAddress):
        build_psbt("regtest", [], [Payment(address(AddressKind.P2WPKH, Network.MAINNET, KEY),
                                           10_000)], change, 1, b"\0\0\0\0")
