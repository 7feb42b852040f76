"""Addresses to scriptPubKeys and back, the way Core's DecodeDestination does it.

Segwit addresses follow BIP173 (bech32, witness v0) and BIP350 (bech32m, v1+):
https://github.com/bitcoin/bips/blob/master/bip-0350.mediawiki - the checksum
code below is the reference implementation's algorithm. Legacy addresses are
Base58Check with Core's regtest/test version bytes (111 for P2PKH, 196 for P2SH).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32_CONST, _BECH32M_CONST = 1, 0x2BC830A3
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
OP_0, OP_1, OP_DUP, OP_HASH160, OP_EQUAL, OP_EQUALVERIFY, OP_CHECKSIG = (
    0x00,
    0x51,
    0x76,
    0xA9,
    0x87,
    0x88,
    0xAC,
)


class AddressError(ValueError):
    """Not an address of this network."""


def _polymod(values: list[int]) -> int:
    gen = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= gen[i] if (top >> i) & 1 else 0
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convertbits(data: bytes | list[int], frombits: int, tobits: int, *, pad: bool) -> list[int]:
    acc = bits = 0
    out: list[int] = []
    maxv = (1 << tobits) - 1
    for value in data:
        acc = (acc << frombits) | value
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & maxv)
    if pad and bits:
        out.append((acc << (tobits - bits)) & maxv)
    elif not pad and (bits >= frombits or (acc << (tobits - bits)) & maxv):
        raise AddressError("invalid padding")
    return out


def _bech32_decode(addr: str) -> tuple[str, list[int], int]:
    if addr.lower() != addr and addr.upper() != addr:
        raise AddressError("mixed case")
    addr = addr.lower()
    pos = addr.rfind("1")
    if (
        pos < 1
        or pos + 7 > len(addr)
        or len(addr) > 90
        or any(not 33 <= ord(c) <= 126 for c in addr)
    ):
        raise AddressError("not bech32")
    if any(c not in _CHARSET for c in addr[pos + 1 :]):
        raise AddressError("invalid bech32 character")
    hrp, data = addr[:pos], [_CHARSET.find(c) for c in addr[pos + 1 :]]
    const = _polymod(_hrp_expand(hrp) + data)
    if const not in (_BECH32_CONST, _BECH32M_CONST):
        raise AddressError("bad bech32 checksum")
    return hrp, data[:-6], const


def decode_segwit(hrp: str, addr: str) -> tuple[int, bytes]:
    """(witness version, program) or AddressError; BIP350 picks the checksum constant."""
    got_hrp, data, const = _bech32_decode(addr)
    if got_hrp != hrp or not data:
        raise AddressError("wrong network")
    version, prog = data[0], bytes(_convertbits(data[1:], 5, 8, pad=False))
    if version > 16 or not 2 <= len(prog) <= 40 or (version == 0 and len(prog) not in (20, 32)):
        raise AddressError("invalid witness program")
    if const != (_BECH32_CONST if version == 0 else _BECH32M_CONST):
        raise AddressError("wrong checksum variant")
    return version, prog


def encode_segwit(hrp: str, version: int, program: bytes) -> str:
    data = [version, *_convertbits(program, 8, 5, pad=True)]
    const = _BECH32_CONST if version == 0 else _BECH32M_CONST
    mod = _polymod([*_hrp_expand(hrp), *data, 0, 0, 0, 0, 0, 0]) ^ const
    return (
        hrp
        + "1"
        + "".join(_CHARSET[d] for d in data + [(mod >> 5 * (5 - i)) & 31 for i in range(6)])
    )


def _b58check_decode(addr: str) -> bytes:
    if any(c not in _B58 for c in addr):
        raise AddressError("not base58")
    num = 0
    for c in addr:
        num = num * 58 + _B58.index(c)
    raw = b"\x00" * (len(addr) - len(addr.lstrip("1"))) + num.to_bytes(
        (num.bit_length() + 7) // 8, "big"
    )
    payload, check = raw[:-4], raw[-4:]
    if len(raw) < 5 or hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4] != check:
        raise AddressError("bad base58 checksum")
    return payload


def _b58check_encode(payload: bytes) -> str:
    raw = payload + hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]
    num, out = int.from_bytes(raw, "big"), ""
    while num:
        num, rem = divmod(num, 58)
        out = _B58[rem] + out
    return "1" * (len(raw) - len(raw.lstrip(b"\x00"))) + out


class Network:
    """Address parameters of one network (Core's chainparams)."""

    def __init__(self, hrp: str, p2pkh: int, p2sh: int) -> None:
        self.hrp, self.p2pkh, self.p2sh = hrp, p2pkh, p2sh

    def to_script(self, addr: str) -> bytes:
        """The scriptPubKey an address pays to, or AddressError."""
        if addr.lower().startswith(self.hrp + "1"):
            version, prog = decode_segwit(self.hrp, addr)
            return bytes([0x50 + version if version else OP_0, len(prog)]) + prog
        payload = _b58check_decode(addr)
        if len(payload) == 21 and payload[0] == self.p2pkh:
            return (
                bytes([OP_DUP, OP_HASH160, 20]) + payload[1:] + bytes([OP_EQUALVERIFY, OP_CHECKSIG])
            )
        if len(payload) == 21 and payload[0] == self.p2sh:
            return bytes([OP_HASH160, 20]) + payload[1:] + bytes([OP_EQUAL])
        raise AddressError("not an address of this network")

    def from_script(self, spk: bytes) -> str | None:
        """The address of a standard scriptPubKey, None for scripts without one."""
        kind = script_type(spk)
        if kind == "pubkeyhash":
            return _b58check_encode(bytes([self.p2pkh]) + spk[3:23])
        if kind == "scripthash":
            return _b58check_encode(bytes([self.p2sh]) + spk[2:22])
        if kind.startswith("witness_") or kind == "anchor":
            version = spk[0] - 0x50 if spk[0] else 0
            return encode_segwit(self.hrp, version, spk[2:])
        return None


REGTEST = Network("bcrt", 111, 196)


#: Core's fixed script templates (Solver in src/script/solver.cpp), first match wins.
_TEMPLATES: tuple[tuple[Callable[[bytes], bool], str], ...] = (
    (lambda s: len(s) == 25 and s[:3] == bytes([OP_DUP, OP_HASH160, 20])
     and s[23:] == bytes([OP_EQUALVERIFY, OP_CHECKSIG]), "pubkeyhash"),
    (lambda s: len(s) == 23 and s[:2] == bytes([OP_HASH160, 20]) and s[22] == OP_EQUAL,
     "scripthash"),
    (lambda s: len(s) in (35, 67) and s[0] == len(s) - 2 and s[-1] == OP_CHECKSIG, "pubkey"),
    (lambda s: bool(s) and s[0] == 0x6A, "nulldata"),
    (lambda s: s == bytes([OP_1, 2, 0x4E, 0x73]), "anchor"),
)


def script_type(spk: bytes) -> str:
    """Core's GetTxnOutputType names for the shapes a wallet meets."""
    for match, name in _TEMPLATES:
        if match(spk):
            return name
    n = len(spk)
    if 4 <= n <= 42 and (spk[0] == OP_0 or OP_1 <= spk[0] <= OP_1 + 15) and spk[1] == n - 2:
        return _witness_type(spk[0], n - 2)
    return "nonstandard"


def _witness_type(op: int, size: int) -> str:
    if op == OP_0 and size == 20:
        return "witness_v0_keyhash"
    if op == OP_0 and size == 32:
        return "witness_v0_scripthash"
    if op == OP_1 and size == 32:
        return "witness_v1_taproot"
    return "nonstandard" if op == OP_0 else "witness_unknown"
