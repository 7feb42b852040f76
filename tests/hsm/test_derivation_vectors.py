"""hsm_emulator.derivation against the published BIP32 / SLIP-10 / BIP39 / BIP84 / BIP86 vectors.

Expected values come only from tests/vectors/*.json (transcribed from the specs, see each
file's "source" and "note"); nothing here is computed with the code under test. Where a
vector uses another encoding (zprv, WIF, 0x00-prefixed ed25519 keys) it is converted with
the independent ``base58`` package or plain byte slicing.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import base58
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mnemonic import Mnemonic

from chains.bitcoin.wire import parse_path as builder_path
from chains.errors import ChainDecodeError
from hsm_emulator import derivation
from hsm_emulator.derivation import (
    HARDENED,
    MAX_DEPTH,
    Curve,
    ExtendedKey,
    derive,
    fingerprint,
    format_path,
    from_extended,
    master_from_seed,
    parse_path,
    public_key,
    to_xprv,
    to_xpub,
)
from hsm_emulator.errors import DerivationError, InvalidInput

VECTORS = Path(__file__).parents[1] / "vectors"


def load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


BIP32 = load("bip32.json")
SLIP10 = load("slip10.json")
BIP39 = load("bip39.json")
BIP84 = load("bip84.json")
BIP86 = load("bip86.json")

SECP_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def spec_path(chain: str) -> str:
    """The BIP/SLIP texts write hardened indices as i<sub>H</sub>; parse_path reads 'H'."""
    return chain.replace("<sub>H</sub>", "H")


def b58payload(s: str) -> bytes:
    return bytes(base58.b58decode_check(s))


@pytest.mark.parametrize(
    "name",
    ["bip32", "slip10", "bip39", "bip84", "bip86", "bip350", "eip55", "known_keys"],
)
def test_vector_files_carry_their_source(name: str) -> None:
    data = load(f"{name}.json")
    assert data["source"].startswith("https://")
    assert len(data["note"]) > 40


# ----------------------------------------------------------------------------- BIP32 1-4

BIP32_CHAINS = [
    pytest.param(v["seed_hex"], c, id=f"{v['name']}:{spec_path(c['chain'])}")
    for v in BIP32["vectors"]
    for c in v["chains"]
]


@pytest.mark.parametrize(("seed_hex", "chain"), BIP32_CHAINS)
def test_bip32_vector(seed_hex: str, chain: dict[str, str]) -> None:
    key = derive(
        master_from_seed(Curve.SECP256K1, bytes.fromhex(seed_hex)), spec_path(chain["chain"])
    )
    assert to_xprv(key) == chain["ext_prv"]
    assert to_xpub(key) == chain["ext_pub"]


@pytest.mark.parametrize(("seed_hex", "chain"), BIP32_CHAINS)
def test_bip32_vector_xprv_round_trip(seed_hex: str, chain: dict[str, str]) -> None:
    key = from_extended(chain["ext_prv"])
    assert to_xprv(key) == chain["ext_prv"]
    assert to_xpub(key) == chain["ext_pub"]
    payload = b58payload(chain["ext_pub"])
    assert public_key(key) == payload[45:]
    assert key.parent_fingerprint == payload[5:9]
    assert key.index == int.from_bytes(payload[9:13], "big")
    assert key.depth == payload[4]


@pytest.mark.parametrize("vector", BIP32["vectors"], ids=lambda v: v["name"])
def test_bip32_step_by_step_equals_whole_path(vector: dict[str, Any]) -> None:
    """Each chain is its predecessor plus one index; fingerprint() links parent and child."""
    parent = master_from_seed(Curve.SECP256K1, bytes.fromhex(vector["seed_hex"]))
    chains = vector["chains"]
    for previous, chain in itertools.pairwise(chains):
        step = parse_path(spec_path(chain["chain"]))[-1:]
        child = derive(parent, step)
        assert to_xprv(child) == chain["ext_prv"]
        assert child.parent_fingerprint == fingerprint(from_extended(previous["ext_prv"]))
        parent = child


# ----------------------------------------------------------------------------- BIP32 5


@pytest.mark.parametrize(
    ("key", "reason"),
    [(k["key"], k["reason"]) for k in BIP32["invalid_extended_keys"]],
    ids=[f"{i}:{k['reason']}" for i, k in enumerate(BIP32["invalid_extended_keys"])],
)
def test_bip32_vector5_invalid_keys_refused(key: str, reason: str) -> None:
    with pytest.raises(DerivationError) as info:
        from_extended(key)
    assert info.value.code == "hsm.derivation_error"
    # Refused for the vector's own reason, not by accident (e.g. merely for being an xpub).
    clue = next(c for prefix, c in VECTOR5_CLUES if reason.startswith(prefix))
    assert clue in info.value.reason.lower()


VECTOR5_CLUES = (
    ("pubkey version / prvkey mismatch", "public key"),
    ("prvkey version / pubkey mismatch", "private key"),
    ("invalid pubkey", "public key"),
    ("invalid prvkey", "private key"),
    ("zero depth with non-zero", "master key"),
    ("unknown extended key version", "version"),
    ("private key", "private key"),
    ("invalid checksum", "checksum"),
)


@pytest.mark.parametrize("ext_pub", [c["ext_pub"] for v in BIP32["vectors"] for c in v["chains"]])
def test_from_extended_refuses_public_keys(ext_pub: str) -> None:
    with pytest.raises(DerivationError, match="public"):
        from_extended(ext_pub)


@pytest.mark.parametrize("value", ["", "x" * 113, None, 42, b"xprv"])
def test_from_extended_refuses_non_keys(value: Any) -> None:
    with pytest.raises(DerivationError):
        from_extended(value)


def test_testnet_serialization_round_trip() -> None:
    chain = BIP32["vectors"][0]["chains"][3]
    key = from_extended(chain["ext_prv"])
    tprv, tpub = to_xprv(key, testnet=True), to_xpub(key, testnet=True)
    assert tprv.startswith("tprv") and tpub.startswith("tpub")
    # BIP32 "Serialization format": testnet 0x04358394 private, 0x043587CF public.
    assert b58payload(tprv)[:4].hex() == "04358394"
    assert b58payload(tpub)[:4].hex() == "043587cf"
    assert b58payload(tprv)[4:] == b58payload(chain["ext_prv"])[4:]
    assert from_extended(tprv) == key
    with pytest.raises(DerivationError, match="public"):
        from_extended(tpub)


# ----------------------------------------------------------------------------- SLIP-10

SLIP10_CHAINS = [
    pytest.param(Curve(v["curve"]), v["seed_hex"], c, id=f"{v['name']}:{spec_path(c['chain'])}")
    for v in SLIP10["vectors"]
    for c in v["chains"]
]


@pytest.mark.parametrize(("curve", "seed_hex", "chain"), SLIP10_CHAINS)
def test_slip10_vector(curve: Curve, seed_hex: str, chain: dict[str, str]) -> None:
    key = derive(master_from_seed(curve, bytes.fromhex(seed_hex)), spec_path(chain["chain"]))
    assert key.chain_code.hex() == chain["chain_code"]
    assert key.private_key.hex() == chain["private"]
    assert key.parent_fingerprint.hex() == chain["fingerprint"]
    expected_public = chain["public"]
    if curve is Curve.ED25519:
        # SLIP-10 prints ed25519 keys as 0x00 || 32-byte key; public_key() returns the 32 bytes.
        assert expected_public.startswith("00")
        expected_public = expected_public[2:]
    assert public_key(key).hex() == expected_public


@pytest.mark.parametrize("vector", SLIP10["vectors"], ids=lambda v: v["name"])
def test_slip10_fingerprint_of_parent(vector: dict[str, Any]) -> None:
    curve = Curve(vector["curve"])
    master = master_from_seed(curve, bytes.fromhex(vector["seed_hex"]))
    chains = vector["chains"]
    for parent_chain, child_chain in itertools.pairwise(chains):
        parent = derive(master, spec_path(parent_chain["chain"]))
        assert fingerprint(parent).hex() == child_chain["fingerprint"]


def test_ed25519_refuses_normal_derivation() -> None:
    master = master_from_seed(Curve.ED25519, bytes(range(16)))
    with pytest.raises(DerivationError, match="hardened"):
        derive(master, "m/0")
    with pytest.raises(DerivationError, match="hardened"):
        derive(master, [HARDENED, 1])


def test_ed25519_has_no_bip32_serialization() -> None:
    master = master_from_seed(Curve.ED25519, bytes(range(16)))
    with pytest.raises(DerivationError):
        to_xprv(master)
    with pytest.raises(DerivationError):
        to_xpub(master)


# ----------------------------------------------------------------------------- BIP39

BIP39_CASES = [
    pytest.param(lang, *entry, id=f"{lang}-{i}")
    for lang, entries in BIP39["vectors"].items()
    for i, entry in enumerate(entries)
]


@pytest.mark.parametrize(("lang", "entropy", "words", "seed_hex", "xprv"), BIP39_CASES)
def test_bip39_seed_feeds_master(
    lang: str, entropy: str, words: str, seed_hex: str, xprv: str
) -> None:
    assert Mnemonic(lang).to_mnemonic(bytes.fromhex(entropy)) == words
    seed = Mnemonic.to_seed(words, passphrase=BIP39["passphrase"])
    assert seed.hex() == seed_hex
    assert to_xprv(master_from_seed(Curve.SECP256K1, seed)) == xprv


# ----------------------------------------------------------------------------- BIP84 / BIP86


def bip39_master(vector: dict[str, Any]) -> ExtendedKey:
    seed = Mnemonic.to_seed(vector["mnemonic"], passphrase="")
    return master_from_seed(Curve.SECP256K1, seed)


def test_bip84_root_key() -> None:
    master = bip39_master(BIP84)
    # zprv/zpub differ from xprv/xpub only in the 4 version bytes (BIP84).
    assert b58payload(BIP84["rootpriv"])[:4].hex() == "04b2430c"
    assert b58payload(BIP84["rootpriv"])[4:] == b58payload(to_xprv(master))[4:]
    assert b58payload(BIP84["rootpub"])[:4].hex() == "04b24746"
    assert b58payload(BIP84["rootpub"])[4:] == b58payload(to_xpub(master))[4:]


def test_bip84_account_key() -> None:
    block = BIP84["blocks"][0]
    account = derive(bip39_master(BIP84), block["path"])
    assert b58payload(block["xpriv"])[4:] == b58payload(to_xprv(account))[4:]
    assert b58payload(block["xpub"])[4:] == b58payload(to_xpub(account))[4:]


@pytest.mark.parametrize("block", BIP84["blocks"][1:], ids=lambda b: b["path"])
def test_bip84_address_keys(block: dict[str, str]) -> None:
    from hsm_emulator.addresses import AddressKind, Network, address

    key = derive(bip39_master(BIP84), block["path"])
    # WIF: 0x80 || key || 0x01 (compressed), Base58Check.
    assert b58payload(block["privkey"]) == b"\x80" + key.private_key + b"\x01"
    assert public_key(key).hex() == block["pubkey"]
    assert address(AddressKind.P2WPKH, Network.MAINNET, public_key(key)) == block["address"]


def test_bip84_relative_derivation_from_account() -> None:
    """Account key + relative '0/1' must equal the absolute m/84'/0'/0'/0/1 vector."""
    account = derive(bip39_master(BIP84), BIP84["blocks"][0]["path"])
    second = BIP84["blocks"][2]
    assert second["path"].endswith("/0/1")
    assert public_key(derive(account, "0/1")).hex() == second["pubkey"]
    with pytest.raises(DerivationError, match="absolute"):
        derive(account, "m/0/1")


def test_bip86_root_key() -> None:
    master = bip39_master(BIP86)
    assert to_xprv(master) == BIP86["rootpriv"]
    assert to_xpub(master) == BIP86["rootpub"]


@pytest.mark.parametrize("block", BIP86["blocks"], ids=lambda b: b["path"])
def test_bip86_keys_and_addresses(block: dict[str, str]) -> None:
    from hsm_emulator.addresses import AddressKind, Network, address

    key = derive(bip39_master(BIP86), block["path"])
    assert to_xprv(key) == block["xprv"]
    assert to_xpub(key) == block["xpub"]
    if "address" in block:
        assert public_key(key)[1:].hex() == block["internal_key"]
        assert address(AddressKind.P2TR, Network.MAINNET, public_key(key)) == block["address"]


# ----------------------------------------------------------------------------- paths


PATHS = [
    ("m", ()),
    ("", ()),
    ("m/84'/0'/0'/0/5", (84 + HARDENED, HARDENED, HARDENED, 0, 5)),
    ("m/84h/0H/0'/0/5", (84 + HARDENED, HARDENED, HARDENED, 0, 5)),
    ("0/5", (0, 5)),
    ("0/5'", (0, 5 + HARDENED)),
    ("2147483647'", (2**32 - 1,)),
    ("2147483647", (2**31 - 1,)),
]


@pytest.mark.parametrize(("text", "expected"), PATHS)
def test_parse_path_accepts(text: str, expected: tuple[int, ...]) -> None:
    assert parse_path(text) == expected


BAD_PATHS = [
    ("m/", "empty component"),
    ("m//0", "empty component"),
    ("/0", "empty component"),
    ("0/", "empty component"),
    ("m/0'/", "empty component"),
    ("x", "invalid component"),
    ("M/0", "invalid component"),
    ("mm", "invalid component"),
    ("m/0/m", "invalid component"),
    ("m/a", "invalid component"),
    ("m/-1", "invalid component"),
    ("m/+1", "invalid component"),
    ("m/0x1", "invalid component"),
    ("m/1.5", "invalid component"),
    ("m/ 1", "invalid component"),
    ("m/1 ", "invalid component"),
    ("m/01", "invalid component"),
    ("m/0p", "invalid component"),
    ("m/0''", "invalid component"),
    ("m/0h'", "invalid component"),
    ("m/0\n", "invalid component"),
    ("m/\u0661", "invalid component"),  # ARABIC-INDIC DIGIT ONE: str.isnumeric() is true
    ("m/\u00b2", "invalid component"),  # SUPERSCRIPT TWO
    ("1" * 5000, "invalid component"),
    ("m/2147483648", "not below 2^31"),
    ("m/2147483648'", "not below 2^31"),
    ("m/4294967295", "not below 2^31"),
    ("m/9999999999", "not below 2^31"),
    ("m/" + "/".join(["0"] * (MAX_DEPTH + 1)), "deeper than 255"),
    ("/".join(["1'"] * (MAX_DEPTH + 1)), "deeper than 255"),
]


@pytest.mark.parametrize(("text", "problem"), BAD_PATHS)
def test_parse_path_refuses(text: str, problem: str) -> None:
    with pytest.raises(DerivationError, match=re.escape(problem)):
        parse_path(text)


@pytest.mark.parametrize(("text", "expected"), PATHS)
def test_the_bitcoin_builders_path_reader_agrees(text: str, expected: tuple[int, ...]) -> None:
    """The broker's builder reads paths itself (it may not import the HSM's derivation);
    it reads them as the HSM does."""
    assert builder_path(text) == expected


@pytest.mark.parametrize(("text", "problem"), BAD_PATHS)
def test_the_bitcoin_builders_path_reader_refuses_alike(text: str, problem: str) -> None:
    with pytest.raises(ChainDecodeError, match=re.escape(problem)):
        builder_path(text)


@pytest.mark.parametrize("value", [None, 5, b"m/0", ["m", "0"]])
def test_parse_path_refuses_non_strings(value: Any) -> None:
    with pytest.raises(DerivationError, match="must be a str"):
        parse_path(value)


def test_parse_path_max_depth_is_accepted() -> None:
    assert parse_path("m/" + "/".join(["7'"] * MAX_DEPTH)) == (7 + HARDENED,) * MAX_DEPTH


@pytest.mark.parametrize(
    ("indices", "relative", "absolute"),
    [
        ((), "", "m"),
        ((0, 5 + HARDENED), "0/5'", "m/0/5'"),
        ((84 + HARDENED, HARDENED, HARDENED, 0, 5), "84'/0'/0'/0/5", "m/84'/0'/0'/0/5"),
        ((2**32 - 1,), "2147483647'", "m/2147483647'"),
    ],
)
def test_format_path(indices: tuple[int, ...], relative: str, absolute: str) -> None:
    assert format_path(indices) == relative
    assert format_path(list(indices), absolute=True) == absolute


@pytest.mark.parametrize("indices", [[-1], [2**32], ["1"], [True], [1.0], "0/1", None, [0] * 256])
def test_format_path_refuses(indices: Any) -> None:
    with pytest.raises(DerivationError):
        format_path(indices)


INDEX = st.integers(min_value=0, max_value=2**32 - 1)


@given(st.lists(INDEX, max_size=40), st.booleans())
def test_property_parse_inverts_format(indices: list[int], absolute: bool) -> None:
    assert parse_path(format_path(indices, absolute=absolute)) == tuple(indices)


@given(st.one_of(st.text(), st.from_regex(r"\Am?(/[0-9hH'pm ]{0,12}){0,6}\Z")))
@settings(max_examples=500)
def test_property_parse_path_only_raises_derivation_error(text: str) -> None:
    try:
        result = parse_path(text)
    except DerivationError:
        return
    assert all(0 <= i < 2**32 for i in result)
    assert parse_path(format_path(result)) == result


@given(st.text(max_size=120))
def test_property_from_extended_only_raises_derivation_error(text: str) -> None:
    with pytest.raises(DerivationError):
        from_extended(text)


# ----------------------------------------------------------------------------- derive / master


def test_absolute_path_only_from_master() -> None:
    master = master_from_seed(Curve.SECP256K1, bytes(range(16)))
    child = derive(master, "m/1")
    assert derive(master, "m") == master
    assert derive(child, "") == child
    with pytest.raises(DerivationError, match="absolute"):
        derive(child, "m/1")
    with pytest.raises(DerivationError, match="absolute"):
        derive(child, "m")


def test_depth_limit() -> None:
    master = master_from_seed(Curve.ED25519, bytes(range(16)))
    deepest = derive(master, [HARDENED] * MAX_DEPTH)
    assert deepest.depth == MAX_DEPTH
    with pytest.raises(DerivationError, match="deeper"):
        derive(deepest, [HARDENED])


@pytest.mark.parametrize("path", [[-1], [2**32], ["0"], [None], "m/x", 7, None])
def test_derive_refuses_bad_paths(path: Any) -> None:
    master = master_from_seed(Curve.SECP256K1, bytes(range(16)))
    with pytest.raises(DerivationError):
        derive(master, path)


def test_derive_refuses_non_keys() -> None:
    with pytest.raises(DerivationError):
        derive("xprv...", "m/0")  # type: ignore[arg-type]


@pytest.mark.parametrize("curve", list(Curve))
@pytest.mark.parametrize("seed", [b"", bytes(15), bytes(65), "00" * 16, None])
def test_master_refuses_bad_seeds(curve: Curve, seed: Any) -> None:
    with pytest.raises(DerivationError, match="seed"):
        master_from_seed(curve, seed)


@pytest.mark.parametrize("curve", ["nist256p1", "ED25519", None, 1, ["ed25519"]])
def test_master_refuses_unknown_curves(curve: Any) -> None:
    with pytest.raises(DerivationError, match="curve"):
        master_from_seed(curve, bytes(16))


def test_curve_values_are_accepted_as_strings() -> None:
    key = master_from_seed("ed25519", bytes(16))  # type: ignore[arg-type]
    assert key.curve is Curve.ED25519
    again = ExtendedKey("ed25519", key.private_key, key.chain_code, 0, bytes(4), 0)  # type: ignore[arg-type]
    assert again == key and again.curve is Curve.ED25519


@pytest.mark.parametrize("bad_left", [bytes(32), SECP_N.to_bytes(32, "big"), b"\xff" * 32])
def test_invalid_bip32_master_is_refused(monkeypatch: pytest.MonkeyPatch, bad_left: bytes) -> None:
    """BIP32: 'In case I_L is 0 or >= n, the master key is invalid' (no SLIP-10 retry)."""

    class FakeHmac:
        @staticmethod
        def QuickDigest(key: bytes, data: bytes) -> bytes:
            assert key == b"Bitcoin seed"
            return bad_left + bytes(32)

    monkeypatch.setattr(derivation, "HmacSha512", FakeHmac)
    with pytest.raises(DerivationError, match="invalid master"):
        master_from_seed(Curve.SECP256K1, bytes(range(16)))


def test_seed_bounds_are_inclusive() -> None:
    for size in (16, 64):
        assert master_from_seed(Curve.SECP256K1, bytes(size)).depth == 0
        assert master_from_seed(Curve.ED25519, bytes(size)).depth == 0


# ----------------------------------------------------------------------------- ExtendedKey


def test_repr_hides_secrets() -> None:
    chain = BIP32["vectors"][0]["chains"][3]
    key = from_extended(chain["ext_prv"])
    for text in (repr(key), str(key), f"{key}", f"{key!r}"):
        assert key.private_key.hex() not in text
        assert key.chain_code.hex() not in text
        assert "redacted" in text
        assert "2'" in text  # the index, written the BIP32 way


@pytest.mark.parametrize(
    "field",
    [
        {"curve": "nist256p1"},
        {"curve": None},
        {"curve": ["secp256k1"]},
        {"private_key": bytes(31)},
        {"chain_code": "00" * 32},
        {"parent_fingerprint": bytes(5)},
        {"depth": 256},
        {"depth": -1},
        {"index": 2**32},
        {"index": True},
    ],
)
def test_extended_key_refuses_malformed_fields(field: dict[str, Any]) -> None:
    good: dict[str, Any] = {
        "curve": Curve.SECP256K1,
        "private_key": b"\x01" * 32,
        "chain_code": bytes(32),
        "depth": 0,
        "parent_fingerprint": bytes(4),
        "index": 0,
    }
    with pytest.raises(InvalidInput):
        ExtendedKey(**(good | field))


@pytest.mark.parametrize("secret", [bytes(32), SECP_N.to_bytes(32, "big")])
def test_out_of_range_private_key_is_refused(secret: bytes) -> None:
    key = ExtendedKey(Curve.SECP256K1, secret, bytes(32), 0, bytes(4), 0)
    with pytest.raises(DerivationError):
        public_key(key)
    with pytest.raises(DerivationError):
        derive(key, [0])
