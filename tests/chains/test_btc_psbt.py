"""BIP174 codec strictness, and the decoder fuzzed: it answers only with DecodeError."""

from __future__ import annotations

import base64
import contextlib
import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chains.bitcoin import BitcoinPsbtDecoder, ChangeKey, Payment, build_psbt
from chains.bitcoin.ownership import key_fingerprint
from chains.bitcoin.psbt import (
    I_TAP_BIP32_DERIVATION,
    I_TAP_INTERNAL_KEY,
    I_TAP_KEY_SIG,
    I_TAP_LEAF_SCRIPT,
    I_TAP_MERKLE_ROOT,
    I_TAP_SCRIPT_SIG,
    MAX_IO,
    O_TAP_TREE,
    Psbt,
    key,
    tap_tree_ok,
)
from chains.bitcoin.scripts import ScriptKind
from chains.bitcoin.wire import compact_size, var_bytes
from chains.errors import ChainDecodeError
from hsm_emulator.addresses import AddressKind, Network, address
from hsm_emulator.errors import DecodeError
from hsm_emulator.keys import KeyMaterial, MaterialView
from hsm_emulator.model import KeyAlgorithm
from tests.chains.test_btc_support import coin

MATERIAL = KeyMaterial.generate(KeyAlgorithm.SECP256K1)
VIEW = MaterialView(MATERIAL, may_derive=True)
OTHER = KeyMaterial.generate(KeyAlgorithm.SECP256K1)
DECODER = BitcoinPsbtDecoder("regtest")


def _sample() -> bytes:
    coins = [coin(VIEW.public_key, "0/0", 700_000), coin(VIEW.public_key, "0/1", 500_000,
                                                          ScriptKind.P2TR)]
    dest = address(AddressKind.P2TR, Network.REGTEST, OTHER.derive("0").public_key)
    change = ChangeKey("1/0", VIEW.public_key("1/0"), ScriptKind.P2TR)
    return build_psbt("regtest", coins, [Payment(dest, 1_000_000)], change, 2,
                      key_fingerprint(VIEW.public_key())).serialize()


SAMPLE = _sample()


def test_sample_decodes_and_roundtrips() -> None:
    intent, items = DECODER.prepare(SAMPLE, VIEW)
    assert intent.total("BTC") == 1_000_000 and len(items) == 2
    assert Psbt.parse(SAMPLE).serialize() == SAMPLE
    assert Psbt.from_base64(base64.b64encode(SAMPLE).decode()).serialize() == SAMPLE


def test_unknown_and_proprietary_keys_survive() -> None:
    psbt = Psbt.parse(SAMPLE)
    psbt.globals[key(0xFC, b"\x03acme\x01")] = b"kept"
    psbt.inputs[0][key(0x42, b"abc")] = b"unknown input field"
    psbt.outputs[1][key(0x99)] = b"unknown output field"
    again = Psbt.parse(psbt.serialize())
    assert again.globals[key(0xFC, b"\x03acme\x01")] == b"kept"
    assert again.inputs[0][key(0x42, b"abc")] == b"unknown input field"
    assert again.serialize() == psbt.serialize()
    DECODER.decode(psbt.serialize(), VIEW)  # still decodes


def _with_extra_input_entry(raw_key: bytes, value: bytes) -> bytes:
    """SAMPLE with one more entry at the start of input 0's map (by splicing bytes)."""
    psbt = Psbt.parse(SAMPLE)
    head = Psbt(psbt.tx, psbt.globals, [], []).serialize()
    return head + var_bytes(raw_key) + var_bytes(value) + SAMPLE[len(head):]


def test_duplicate_key_is_refused() -> None:
    psbt = Psbt.parse(SAMPLE)
    witness_utxo = psbt.inputs[0][key(0x01)]
    with pytest.raises(ChainDecodeError, match="duplicate"):
        Psbt.parse(_with_extra_input_entry(key(0x01), witness_utxo))


@pytest.mark.parametrize("raw", [
    b"", b"psbt", b"psbx\xff\x00", SAMPLE + b"\x00", SAMPLE[:-1], SAMPLE[:40],
    b"psbt\xff" + var_bytes(b"\x00") + var_bytes(b"") + b"\x00",  # an empty tx
])
def test_malformed_psbts_are_refused(raw: bytes) -> None:
    with pytest.raises(ChainDecodeError):
        Psbt.parse(raw)
    with pytest.raises(DecodeError):
        DECODER.decode(raw, VIEW)


def test_psbt_v2_fields_and_versions_are_refused() -> None:
    psbt = Psbt.parse(SAMPLE)
    psbt.globals[key(0x02)] = b"\x02\x00\x00\x00"  # PSBT_GLOBAL_TX_VERSION
    with pytest.raises(ChainDecodeError, match="v2"):
        Psbt.parse(psbt.serialize())
    psbt = Psbt.parse(SAMPLE)
    psbt.globals[key(0xFB)] = b"\x02\x00\x00\x00"
    with pytest.raises(ChainDecodeError, match="version"):
        Psbt.parse(psbt.serialize())


def test_keyless_field_with_key_data_is_refused() -> None:
    with pytest.raises(ChainDecodeError, match="no key data"):
        Psbt.parse(_with_extra_input_entry(key(0x03, b"x"), b"\x01\x00\x00\x00"))


def test_non_canonical_compact_size_is_refused() -> None:
    # The magic, then a key length of 1 written in 3 bytes.
    with pytest.raises(ChainDecodeError, match="non-canonical"):
        Psbt.parse(b"psbt\xff\xfd\x01\x00\x00")


def test_signed_unsigned_tx_is_refused() -> None:
    psbt = Psbt.parse(SAMPLE)
    raw_tx = bytearray(psbt.tx.serialize())
    # Give input 0 a one-byte scriptSig: version(4) count(1) outpoint(36) then length.
    raw_tx[41:42] = b"\x01\x51"
    bad = b"psbt\xff" + var_bytes(key(0x00)) + var_bytes(bytes(raw_tx)) + b"\x00"
    with pytest.raises(ChainDecodeError, match="unsigned"):
        Psbt.parse(bad)


def test_too_many_outputs_are_refused() -> None:
    from bitcoin.core import CMutableTransaction, CTransaction, CTxOut
    from bitcoin.core.script import CScript

    psbt = Psbt.parse(SAMPLE)
    mtx = CMutableTransaction.from_tx(psbt.tx)
    mtx.vout += [CTxOut(0, CScript(b"\x6a"))] * MAX_IO
    psbt.tx = CTransaction.from_tx(mtx)
    psbt.outputs += [{} for _ in range(MAX_IO)]
    with pytest.raises(ChainDecodeError, match="more than"):
        Psbt.parse(psbt.serialize())


def test_bad_base64_is_refused() -> None:
    with pytest.raises(ChainDecodeError):
        Psbt.from_base64("cHNidP8=!")


# -- BIP371: taproot fields held to their sizes ------------------------------------------

BIP371 = json.loads((Path(__file__).parents[1] / "vectors" / "bip371.json").read_text())


def _vector_bytes(v: dict[str, str]) -> bytes:
    """The base64 form; its hex twin must be the same bytes (the BIP's stray '<' aside)."""
    raw = base64.b64decode(v["base64"], validate=True)
    assert bytes.fromhex(v["hex"].removeprefix("<")) == raw
    return raw


@pytest.mark.parametrize("vector", BIP371["invalid"], ids=lambda v: v["case"])
def test_bip371_invalid_vectors_are_refused(vector: dict[str, str]) -> None:
    field = re.search(r"<tt>(\w+)</tt>", vector["case"])
    assert field is not None
    # The BIP calls PSBT_IN_TAP_KEY_SIG "PSBT_KEY_PATH_SIG" in two case titles.
    name = field.group(1).replace("PSBT_KEY_PATH_SIG", "PSBT_IN_TAP_KEY_SIG")
    with pytest.raises(ChainDecodeError, match=rf"\({name}\): (key data|value) of \d+ bytes"):
        Psbt.parse(_vector_bytes(vector))
    with pytest.raises(DecodeError):
        DECODER.decode(_vector_bytes(vector), VIEW)


@pytest.mark.parametrize("vector", BIP371["valid"], ids=lambda v: v["case"])
def test_bip371_valid_vectors_parse_and_roundtrip(vector: dict[str, str]) -> None:
    raw = _vector_bytes(vector)
    assert Psbt.parse(raw).serialize() == raw
    assert Psbt.from_base64(vector["base64"]).serialize() == raw


def _leaf(depth: int, version: int = 0xC0, script: bytes = b"\x51") -> bytes:
    return bytes([depth, version]) + var_bytes(script)


@pytest.mark.parametrize("depths", [[0], [1, 1], [1, 2, 2], [2, 2, 1], [2, 2, 2, 2],
                                    [1, 2, 3, 3]])
def test_complete_tap_trees_are_accepted(depths: list[int]) -> None:
    assert tap_tree_ok(b"".join(_leaf(d) for d in depths))


@pytest.mark.parametrize("tree", [
    b"",  # empty
    _leaf(1),  # a lone leaf below the root: the tree is not complete
    _leaf(0) + _leaf(0),  # two roots
    _leaf(1) + _leaf(1) + _leaf(1),  # a third leaf with nowhere to go
    _leaf(1) + _leaf(2) + _leaf(2) + _leaf(2),
    _leaf(2) + _leaf(1) + _leaf(2),  # not depth-first: a shallower leaf mid-branch
    _leaf(0, version=0xC1),  # odd leaf version (BIP341 reserves the low bit)
    _leaf(129),  # deeper than BIP341's 128
    _leaf(0)[:-1],  # truncated script
], ids=["empty", "lone-deep-leaf", "two-roots", "three-at-depth-1", "overfull",
        "not-depth-first", "odd-leaf-version", "too-deep", "truncated"])
def test_malformed_tap_trees_are_refused(tree: bytes) -> None:
    assert not tap_tree_ok(tree)
    psbt = Psbt.parse(SAMPLE)
    psbt.outputs[0][key(O_TAP_TREE)] = tree
    with pytest.raises(ChainDecodeError, match="PSBT_OUT_TAP_TREE"):
        Psbt.parse(psbt.serialize())


@pytest.mark.parametrize(("key_type", "key_data", "value", "name"), [
    (I_TAP_MERKLE_ROOT, b"", bytes(31), "PSBT_IN_TAP_MERKLE_ROOT"),
    (I_TAP_MERKLE_ROOT, b"", bytes(33), "PSBT_IN_TAP_MERKLE_ROOT"),
    (I_TAP_INTERNAL_KEY, b"", bytes(31), "PSBT_IN_TAP_INTERNAL_KEY"),
    (I_TAP_KEY_SIG, b"", b"", "PSBT_IN_TAP_KEY_SIG"),
    (I_TAP_SCRIPT_SIG, bytes(63), bytes(64), "PSBT_IN_TAP_SCRIPT_SIG"),
    (I_TAP_LEAF_SCRIPT, bytes(33), b"", "PSBT_IN_TAP_LEAF_SCRIPT"),  # no leaf version
    (I_TAP_LEAF_SCRIPT, bytes(33 + 32 * 129), b"\x51\xc0", "PSBT_IN_TAP_LEAF_SCRIPT"),
    (I_TAP_BIP32_DERIVATION, bytes(31), bytes(5), "PSBT_IN_TAP_BIP32_DERIVATION"),
])
def test_taproot_input_fields_of_the_wrong_size_are_refused(key_type: int, key_data: bytes,
                                                            value: bytes, name: str) -> None:
    with pytest.raises(ChainDecodeError, match=rf"\({name}\)"):
        Psbt.parse(_with_extra_input_entry(key(key_type, key_data), value))


@pytest.mark.parametrize(("key_type", "key_data", "value"), [
    (I_TAP_KEY_SIG, b"", bytes(64)), (I_TAP_KEY_SIG, b"", bytes(65)),
    (I_TAP_SCRIPT_SIG, bytes(64), bytes(65)),
    (I_TAP_LEAF_SCRIPT, bytes(33), b"\xc0"), (I_TAP_LEAF_SCRIPT, bytes(33 + 32 * 128), b"\xc0"),
    (I_TAP_MERKLE_ROOT, b"", bytes(32)),
])
def test_taproot_input_fields_of_the_right_size_parse(key_type: int, key_data: bytes,
                                                      value: bytes) -> None:
    raw = _with_extra_input_entry(key(key_type, key_data), value)
    assert Psbt.parse(raw).serialize() == raw


def test_compact_size_roundtrip() -> None:
    from chains.bitcoin.wire import Reader

    for n in (0, 0xFC, 0xFD, 0xFFFF, 0x10000, 0xFFFF_FFFF, 0x1_0000_0000):
        r = Reader(compact_size(n))
        assert r.compact_size() == n and r.at_end()


# -- fuzzing: any input is either decoded or refused with DecodeError ---------------------

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decode_or_refuse(payload: bytes) -> None:
    with contextlib.suppress(DecodeError):
        DECODER.prepare(payload, VIEW)


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(data: bytes) -> None:
    _decode_or_refuse(data)
    _decode_or_refuse(b"psbt\xff" + data)


@FUZZ
@given(st.integers(min_value=0, max_value=len(SAMPLE) - 1))
def test_fuzz_truncated(n: int) -> None:
    with pytest.raises(DecodeError):
        DECODER.prepare(SAMPLE[:n], VIEW)


@FUZZ
@given(st.binary(min_size=1, max_size=64))
def test_fuzz_trailing_bytes(tail: bytes) -> None:
    with pytest.raises(DecodeError):
        DECODER.prepare(SAMPLE + tail, VIEW)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(SAMPLE) - 1), st.integers(0, 255)),
                min_size=1, max_size=4))
def test_fuzz_mutated(flips: list[tuple[int, int]]) -> None:
    data = bytearray(SAMPLE)
    for pos, value in flips:
        data[pos] = value
    _decode_or_refuse(bytes(data))


@FUZZ
@given(st.binary(max_size=200), st.integers(0, 0x30), st.binary(max_size=40))
def test_fuzz_inserted_entries(value: bytes, key_type: int, key_data: bytes) -> None:
    _decode_or_refuse(_with_extra_input_entry(key(key_type, key_data), value))
