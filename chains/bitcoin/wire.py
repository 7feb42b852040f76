"""Strict readers and writers for Bitcoin's wire encodings (compact sizes, outputs, paths).

Transactions and blocks built on these are in :mod:`chains.bitcoin.blocks`.

Every reader refuses what Bitcoin Core's ``serialize.h`` refuses - truncation and
non-canonical compact sizes ("non-canonical ReadCompactSize()") - and callers check
:meth:`Reader.done` so trailing bytes are an error, never ignored.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass

from chains.errors import ChainDecodeError

#: 21 million BTC in satoshis: an amount above is invalid (consensus ``MoneyRange``).
MAX_MONEY = 21_000_000 * 100_000_000
HARDENED = 0x8000_0000
#: BIP32 serialises depth in one byte.
MAX_DEPTH = 255
#: One path component: decimal without leading zeros, optional hardened marker.
_COMPONENT = re.compile(r"(0|[1-9][0-9]{0,9})(['hH]?)")


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def read(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ChainDecodeError("truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def compact_size(self) -> int:
        first = self.read(1)[0]
        if first < 0xFD:
            return first
        size = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
        value = int.from_bytes(self.read(size), "little")
        if value < {2: 0xFD, 4: 0x1_0000, 8: 0x1_0000_0000}[size]:
            raise ChainDecodeError("non-canonical compact size")
        return value

    def var_bytes(self) -> bytes:
        return self.read(self.compact_size())

    def u32(self) -> int:
        return int(struct.unpack("<I", self.read(4))[0])

    def i32(self) -> int:
        return int(struct.unpack("<i", self.read(4))[0])

    def at_end(self) -> bool:
        return self.pos == len(self.data)

    def done(self, what: str) -> None:
        if not self.at_end():
            raise ChainDecodeError(f"{what}: {len(self.data) - self.pos} trailing bytes")


def compact_size(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "little")
    if n <= 0xFFFF_FFFF:
        return b"\xfe" + n.to_bytes(4, "little")
    return b"\xff" + n.to_bytes(8, "little")


def var_bytes(data: bytes) -> bytes:
    return compact_size(len(data)) + data


@dataclass(frozen=True)
class TxOut:
    """An output: ``amount`` in satoshis and its script."""

    amount: int
    script: bytes

    def serialize(self) -> bytes:
        return self.amount.to_bytes(8, "little", signed=True) + var_bytes(self.script)

    @classmethod
    def read(cls, r: Reader) -> TxOut:
        """One output as a transaction carries it; the amount is not range-checked."""
        return cls(int.from_bytes(r.read(8), "little", signed=True), r.var_bytes())

    @classmethod
    def parse(cls, data: bytes) -> TxOut:
        r = Reader(data)
        out = cls.read(r)
        r.done("output")
        if not 0 <= out.amount <= MAX_MONEY:
            raise ChainDecodeError(f"output amount {out.amount} outside [0, 21e14]")
        return out


@dataclass(frozen=True)
class KeyOrigin:
    """BIP174 key origin: a 4-byte fingerprint and the derivation path from it."""

    fingerprint: bytes
    path: tuple[int, ...]

    def serialize(self) -> bytes:
        return self.fingerprint + b"".join(i.to_bytes(4, "little") for i in self.path)

    @classmethod
    def parse(cls, data: bytes) -> KeyOrigin:
        if len(data) < 4 or len(data) % 4:
            raise ChainDecodeError("key origin must be a fingerprint and 4-byte indices")
        path = tuple(int.from_bytes(data[i:i + 4], "little") for i in range(4, len(data), 4))
        return cls(data[:4], path)

    def path_str(self) -> str:
        """The path as :func:`parse_path` reads it (``0/5``)."""
        return "/".join(f"{i - HARDENED}'" if i >= HARDENED else str(i) for i in self.path)


def parse_path(path: str) -> tuple[int, ...]:
    """A BIP32 path (``"0/5"``, ``"m/84'/0'/0'"``, ``""`` or ``"m"`` for the key itself)
    as child indices: the inverse of :meth:`KeyOrigin.path_str`.

    The grammar is the HSM's (decimal without leading zeros, ``'``/``h``/``H`` for
    hardened, indices below 2^31, at most 255 levels), written here so that the broker's
    builder does not reach into the HSM's derivation code; the HSM checks every path it
    derives again. See https://github.com/bitcoin/bips/blob/master/bip-0032.mediawiki
    """
    if path in ("", "m"):
        return ()
    components = path.split("/")
    if components[0] == "m":
        components = components[1:]
    if len(components) > MAX_DEPTH:
        raise ChainDecodeError(f"path is deeper than {MAX_DEPTH} levels ({len(components)})")
    out = []
    for position, component in enumerate(components, 1):
        if not component:
            raise ChainDecodeError(f"empty component at position {position}")
        match = _COMPONENT.fullmatch(component)
        if match is None:
            shown = component if len(component) <= 24 else component[:24] + "..."
            raise ChainDecodeError(f"invalid component {shown!r} at position {position}")
        index = int(match.group(1))
        if index >= HARDENED:
            raise ChainDecodeError(f"index {index} at position {position} is not below 2^31")
        out.append(index + HARDENED if match.group(2) else index)
    return tuple(out)
