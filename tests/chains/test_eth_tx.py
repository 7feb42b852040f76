"""Ethereum transactions against outside references: the EIP-155 example, ethereum/tests
TransactionTests cases, and eth-account (byte for byte, across random transactions)."""

from __future__ import annotations

import json
from pathlib import Path

import coincurve
import pytest
import rlp
from Crypto.Hash import keccak
from eth_account import Account
from hypothesis import given, settings
from hypothesis import strategies as st
from rlp.sedes import Binary, CountableList, List, big_endian_int, binary

from chains.errors import BuildError, ChainDecodeError
from chains.ethereum import encoding
from chains.ethereum.encoding import (
    address_bytes,
    address_of_public_key,
    checksum,
    keccak256,
    rlp_access_list,
    rlp_bytes,
    rlp_int,
)
from chains.ethereum.parse import decode, decode_unsigned, tx_hash
from chains.ethereum.signing import sign_with, sign_with_local_key_unsafe, tx_from_dict
from chains.ethereum.tx import (
    Eip1559Tx,
    LegacyTx,
    Signature,
    assemble,
    serialize_unsigned,
    signing_hash,
)
from custody.bench_eth import bench_eth_sign, check_identical

VECTORS = Path(__file__).parents[1] / "vectors"


def h(x: str) -> bytes:
    return bytes.fromhex(x.removeprefix("0x"))


# -- EIP-155, verbatim ----------------------------------------------------------------


def eip155() -> dict:
    return json.loads((VECTORS / "eip155.json").read_text())["example"]


def test_eip155_example_signing_data_hash_and_signed_tx() -> None:
    v = eip155()
    tx = LegacyTx(v["chain_id"], v["nonce"], 20 * 10**9, v["startgas"], h(v["to"]), 10**18)
    assert serialize_unsigned(tx) == h(v["signing_data"])
    assert signing_hash(tx) == h(v["signing_hash"])
    key = coincurve.PrivateKey(h(v["private_key"]))
    assert sign_with_local_key_unsafe(tx, key) == h(v["signed_tx"])
    vv, r, s = (int(x) for x in v["vrs"].strip("()").split(","))
    assert vv == 37
    sig = Signature(r, s, vv - 35 - 2 * v["chain_id"])
    assert assemble(tx, sig) == h(v["signed_tx"])


def test_eip155_signed_tx_decodes_to_the_example() -> None:
    v = eip155()
    decoded = decode(h(v["signed_tx"]))
    assert decoded.tx == LegacyTx(1, 9, 20 * 10**9, 21000, h(v["to"]), 10**18)
    pub = coincurve.PrivateKey(h(v["private_key"])).public_key.format()
    assert decoded.sender() == address_of_public_key(pub)
    assert decode_unsigned(h(v["signing_data"])) == decoded.tx


# -- ethereum/tests TransactionTests ----------------------------------------------------


CASES = json.loads((VECTORS / "eth_transaction_tests.json").read_text())["cases"]


@pytest.mark.parametrize("case", CASES, ids=[c["file"].rsplit("/", 1)[1] for c in CASES])
def test_ethereum_tests_transaction_cases(case: dict) -> None:
    raw = h(case["txbytes"])
    if "exception" in case["result"]:
        with pytest.raises(ChainDecodeError):
            decode(raw)
        return
    decoded = decode(raw)
    assert tx_hash(raw) == case["result"]["hash"]
    assert decoded.sender().lower() == case["result"]["sender"]
    assert assemble(decoded.tx, decoded.signature) == raw  # symmetric encode/decode


# -- eth-account, byte for byte ---------------------------------------------------------

uint = st.integers(min_value=0, max_value=2**64 - 2)
addresses = st.binary(min_size=20, max_size=20)
secrets = st.integers(min_value=1, max_value=2**255).map(
    lambda n: n.to_bytes(32, "big"))


@st.composite
def eip1559_dicts(draw: st.DrawFn) -> dict:
    fee = draw(st.integers(min_value=0, max_value=10**15))
    access = draw(st.lists(st.tuples(addresses, st.lists(st.binary(min_size=32, max_size=32),
                                                         max_size=2)), max_size=2))
    to = draw(st.one_of(st.none(), addresses))
    d = {"type": 2, "chainId": draw(st.integers(1, 2**32)), "nonce": draw(uint),
         "maxFeePerGas": fee, "maxPriorityFeePerGas": draw(st.integers(0, fee)),
         "gas": draw(st.integers(0, 30_000_000)), "value": draw(st.integers(0, 2**200)),
         "data": draw(st.binary(max_size=100)),
         "accessList": [{"address": checksum(a), "storageKeys": ["0x" + k.hex() for k in ks]}
                        for a, ks in access]}
    if to is not None:
        d["to"] = checksum(to)
    return d


@st.composite
def legacy_dicts(draw: st.DrawFn) -> dict:
    return {"chainId": draw(st.integers(1, 2**32)), "nonce": draw(uint),
            "gasPrice": draw(st.integers(0, 10**15)), "gas": draw(st.integers(0, 30_000_000)),
            "to": checksum(draw(addresses)), "value": draw(st.integers(0, 2**200)),
            "data": draw(st.binary(max_size=100))}


@settings(max_examples=150, deadline=None)
@given(eip1559_dicts(), secrets)
def test_fast_path_is_eth_account_byte_for_byte_eip1559(d: dict, secret: bytes) -> None:
    ours = sign_with_local_key_unsafe(tx_from_dict(d), coincurve.PrivateKey(secret))
    assert ours == bytes(Account.sign_transaction(dict(d), secret).raw_transaction)
    assert decode(ours).tx == tx_from_dict(d)


@settings(max_examples=150, deadline=None)
@given(legacy_dicts(), secrets)
def test_fast_path_is_eth_account_byte_for_byte_legacy(d: dict, secret: bytes) -> None:
    ours = sign_with_local_key_unsafe(tx_from_dict(d), coincurve.PrivateKey(secret))
    assert ours == bytes(Account.sign_transaction(dict(d), secret).raw_transaction)
    assert decode(ours).sender() == Account.from_key(secret).address


@settings(max_examples=100, deadline=None)
@given(eip1559_dicts(), secrets)
def test_hsm_shaped_signer_and_assemble_agree(d: dict, secret: bytes) -> None:
    key = coincurve.PrivateKey(secret)
    tx = tx_from_dict(d)
    raw = sign_with(tx, lambda digest: bytes(key.sign_recoverable(digest, hasher=None)))
    sig = key.sign_recoverable(signing_hash(tx), hasher=None)
    assert raw == assemble(tx, bytes(sig))


_ACCESS = CountableList(List([Binary.fixed_length(20), CountableList(Binary.fixed_length(32))]))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**256 - 1), st.binary(max_size=300),
       st.lists(st.tuples(addresses, st.lists(st.binary(min_size=32, max_size=32),
                                              max_size=3)), max_size=3))
def test_encoder_matches_pyrlp(n: int, data: bytes, access: list) -> None:
    assert rlp_int(n) == rlp.encode(n, big_endian_int)
    assert rlp_bytes(data) == rlp.encode(data, binary)
    assert rlp_access_list(tuple((a, tuple(k)) for a, k in access)) == rlp.encode(
        [[a, k] for a, k in access], _ACCESS)


def test_bench_sample_is_identical_and_bench_runs() -> None:
    check_identical([{"type": 2, "chainId": 1, "nonce": 1, "maxPriorityFeePerGas": 1,
                      "maxFeePerGas": 2, "gas": 21000, "to": checksum(b"\x01" * 20),
                      "value": 5, "data": b"", "accessList": []}], b"\x07" * 32)
    records = list(bench_eth_sign(iterations=20, rounds=1))
    assert records[-1]["headline"] is True and records[-1]["speedup"] > 0


# -- refusals ---------------------------------------------------------------------------


def test_signatures_nodes_would_reject_are_refused() -> None:
    tx = LegacyTx(1, 0, 1, 21000, b"\x01" * 20, 1)
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    high_s = (1).to_bytes(32, "big") + (n - 1).to_bytes(32, "big") + b"\x00"
    for bad in (b"\x00" * 65, high_s, b"\x01" * 64 + b"\x02", b"\x01" * 64):
        with pytest.raises(BuildError):
            assemble(tx, bad)


def test_out_of_range_fields_are_build_errors() -> None:
    with pytest.raises(BuildError):
        Eip1559Tx(1, 0, 2, 1, 21000, b"\x01" * 20, 0)  # tip above fee cap
    with pytest.raises(BuildError):
        LegacyTx(0, 0, 1, 21000, b"\x01" * 20, 0)  # chain id 0
    with pytest.raises(BuildError):
        LegacyTx(1, 2**64 - 1, 1, 21000, b"\x01" * 20, 0)  # EIP-2681
    with pytest.raises(BuildError):
        Eip1559Tx(1, 0, 0, 1, 21000, b"\x01" * 19, 0)


def test_pre_eip155_and_unsupported_types_are_refused() -> None:
    pre155 = rlp.encode([0, 1, 21000, b"\x01" * 20, 0, b"", 27, 1, 1])
    unsigned6 = rlp.encode([0, 1, 21000, b"\x01" * 20, 0, b""])
    for raw in (pre155, unsigned6, b"\x01" + rlp.encode([]), b"\x03\xc0", b"\x7f", b""):
        with pytest.raises(ChainDecodeError):
            decode(raw)
    signed = h(eip155()["signed_tx"])
    with pytest.raises(ChainDecodeError):
        decode_unsigned(signed)


def test_addresses_mixed_case_must_be_eip55() -> None:
    good = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"  # EIP-55's own example
    assert checksum(address_bytes(good)) == good
    assert address_bytes(good.lower()) == address_bytes(good)
    for bad in ("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD", "5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
                "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beae", None):
        with pytest.raises(Exception) as err:
            address_bytes(bad)  # type: ignore[arg-type]
        assert err.type.__name__ == "InvalidAddress"
    assert keccak256(b"") == h("c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470")


# -- fuzz: only ChainDecodeError, never a partial result --------------------------------


def _valid_samples() -> list[bytes]:
    v = eip155()
    t2 = serialize_unsigned(Eip1559Tx(1, 3, 1, 10, 50_000, b"\x02" * 20, 7, b"\xaa" * 70,
                                      ((b"\x03" * 20, (b"\x04" * 32,)),)))
    return [h(v["signed_tx"]), h(v["signing_data"]), t2, *(h(c["txbytes"]) for c in CASES[:3])]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_valid_samples()), st.integers(0, 400), st.binary(min_size=1,
                                                                         max_size=8))
def test_fuzz_truncated_and_trailing(raw: bytes, cut: int, extra: bytes) -> None:
    for mutated in (raw[:cut % len(raw)], raw + extra):
        with pytest.raises(ChainDecodeError):
            decode(mutated)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.binary(max_size=300).map(lambda b: b"\x02" + b)),
       )
def test_fuzz_random_bytes(raw: bytes) -> None:
    try:
        decoded = decode(raw)
    except ChainDecodeError:
        return
    # the rare valid parse must re-encode to exactly the same bytes
    if decoded.signature is None:
        assert serialize_unsigned(decoded.tx) == raw
    else:
        assert assemble(decoded.tx, decoded.signature) == raw


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(_valid_samples()), st.integers(0, 10_000), st.integers(1, 255))
def test_fuzz_bit_flips(raw: bytes, pos: int, flip: int) -> None:
    i = pos % len(raw)
    mutated = raw[:i] + bytes((raw[i] ^ flip,)) + raw[i + 1:]
    try:
        decoded = decode(mutated)
    except ChainDecodeError:
        return
    again = serialize_unsigned(decoded.tx) if decoded.signature is None else assemble(
        decoded.tx, decoded.signature)
    assert again == mutated


def test_oversized_fields_are_refused() -> None:
    big = rlp.encode([2**256, 1, 21000, b"\x01" * 20, 0, b"", 1, 0, 0])
    with pytest.raises(ChainDecodeError):
        decode(big)


@given(st.binary(max_size=600))
def test_keccak_through_the_c_functions_is_pycryptodomes_keccak(data: bytes) -> None:
    """Both ways ``keccak256`` may run - pycryptodome's C functions called directly, or
    its ``Keccak_Hash`` - give what ``keccak.new(digest_bits=256)`` gives."""
    expected = keccak.new(data=data, digest_bits=256).digest()
    assert keccak256(data) == expected
    saved = encoding._ffi
    encoding._ffi = None
    try:
        assert keccak256(data) == expected
    finally:
        encoding._ffi = saved
