"""RLP encoding of transaction fields, keccak, and account addresses. Pure.

Encoding is the small, fixed part of RLP (integers, byte strings, one list level, the
EIP-2930 access list): a few lines written here because signing throughput depends on it
(pyrlp's generic serializer costs more than the secp256k1 signature itself; see
``custody/bench_eth.py``). It is checked byte for byte against pyrlp's sedes and
eth-account in ``tests/test_eth_tx.py``. *Decoding* - where malformed input lives - is
pyrlp's strict decoder with sedes (``chains/ethereum/parse.py``).

RLP: https://ethereum.org/en/developers/docs/data-structures-and-encoding/rlp/
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import coincurve
from Crypto.Hash import keccak as _keccak
from Crypto.Util import _raw_api

from chains.errors import InvalidAddress

#: A 20-byte account, the EIP-2930 access list entry shape.
AccessList = tuple[tuple[bytes, tuple[bytes, ...]], ...]


_HEX_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


def keccak256(data: bytes) -> bytes:
    """Ethereum's keccak-256 (the pre-standard Keccak, not NIST SHA3-256).

    pycryptodome's Keccak (what ``keccak.new(digest_bits=256)`` returns, and what
    eth-hash wraps), called through its C functions directly where pycryptodome loaded
    them with cffi - ``Keccak_Hash``'s pointer and size wrappers cost as much as the
    hash itself for transaction-sized inputs; else through ``Keccak_Hash``. Checked
    against the empty-input vector and, through transactions, against eth-account
    (``tests/chains/test_eth_tx.py``).
    """
    if _ffi is None:
        return bytes(_keccak.Keccak_Hash(data, 32, False).digest())
    holder = _ffi.new("void **")
    if _lib.keccak_init(holder, 64, 24):  # capacity 2 x 32 bytes, 24 rounds
        raise ValueError("keccak could not start")
    state = holder[0]
    try:
        out = _ffi.new("uint8_t[32]")
        if _lib.keccak_absorb(state, data, len(data)) or _lib.keccak_digest(
                state, out, 32, 0x01):  # 0x01: Keccak's padding (SHA-3's is 0x06)
            raise ValueError("keccak failed")
        return bytes(_ffi.buffer(out))
    finally:
        _lib.keccak_destroy(state)


def _raw_keccak() -> tuple[Any, Any]:
    """pycryptodome's cffi handle and its Keccak library, or (None, None) if it loaded
    them another way (ctypes)."""
    if getattr(_raw_api, "backend", None) != "cffi":
        return None, None
    return _raw_api.ffi, getattr(_keccak, "_raw_keccak_lib")  # noqa: B009 - private name


_ffi, _lib = _raw_keccak()


def _length_prefix(length: int, offset: int) -> bytes:
    if length < 56:
        return bytes((offset + length,))
    size = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((offset + 55 + len(size),)) + size


def rlp_bytes(data: bytes) -> bytes:
    """A byte string: itself when one byte below 0x80, else a length prefix and it."""
    if len(data) == 1 and data[0] < 0x80:
        return data
    return _length_prefix(len(data), 0x80) + data


def rlp_int(value: int) -> bytes:
    """A non-negative integer as its minimal big-endian bytes (0 is the empty string)."""
    if value < 0:
        raise ValueError("RLP integers are non-negative")
    if value < 0x80:
        return b"\x80" if value == 0 else bytes((value,))
    return rlp_bytes(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def rlp_list(encoded_items: Sequence[bytes]) -> bytes:
    """A list of already-encoded items."""
    body = b"".join(encoded_items)
    return _length_prefix(len(body), 0xC0) + body


def rlp_list_body(body: bytes) -> bytes:
    """The list prefix for an already-joined body (used to splice in a signature)."""
    return _length_prefix(len(body), 0xC0) + body


def rlp_access_list(access_list: AccessList) -> bytes:
    """EIP-2930: ``[[address, [storageKey, ...]], ...]``."""
    return rlp_list([
        rlp_list([rlp_bytes(address), rlp_list([rlp_bytes(k) for k in keys])])
        for address, keys in access_list
    ])


def strip_list_prefix(encoded: bytes) -> bytes:
    """The body of an encoded list (the caller built it, so it is well formed)."""
    first = encoded[0]
    if first < 0xF8:
        return encoded[1:]
    return encoded[1 + first - 0xF7:]


# ------------------------------------------------------------------------- addresses


def address_bytes(address: str) -> bytes:
    """The 20 bytes of a ``0x`` address; mixed case must be its EIP-55 checksum.

    EIP-55: https://eips.ethereum.org/EIPS/eip-55 - all-lower or all-upper hex carries
    no checksum and is accepted as such.
    """
    if not isinstance(address, str) or _HEX_ADDRESS.fullmatch(address) is None:
        raise InvalidAddress(f"not an Ethereum address (0x and 40 hex digits): {address!r}")
    digits = address[2:]
    lower = digits.lower()
    if digits not in (lower, digits.upper()) and _eip55(lower) != digits:
        raise InvalidAddress(f"{address} fails its EIP-55 checksum")
    return bytes.fromhex(lower)


#: Distinct addresses whose EIP-55 spelling is kept (a desk pays a few thousand at most).
EIP55_CACHE = 4096


@lru_cache(maxsize=EIP55_CACHE)
def _eip55(lower_hex: str) -> str:
    """EIP-55: upper-case the i-th letter when nibble i of keccak256(lower-case hex) >= 8.

    Kept per address (a pure function of its argument, always a plain lower-case ``str``
    made here): checking a destination's checksum took a keccak and a 40-character
    rebuild per transaction, a quarter of the CPU of signing one (``custody bench
    eth-sign``), and a desk pays the same addresses again and again."""
    nibbles = keccak256(lower_hex.encode()).hex()
    return "".join(c.upper() if n > "7" else c for c, n in zip(lower_hex, nibbles, strict=False))


def checksum(address: bytes) -> str:
    """EIP-55 spelling of 20 address bytes."""
    if len(address) != 20:
        raise ValueError("an address is 20 bytes")
    return "0x" + _eip55(address.hex())


def address_of_public_key(public_key: bytes) -> str:
    """keccak256(x || y)[12:] of a secp256k1 key (33-byte compressed or 65-byte form)."""
    point = coincurve.PublicKey(public_key).format(compressed=False)
    return checksum(keccak256(point[1:])[12:])
