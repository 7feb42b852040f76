"""Consensus serialization of transactions and blocks, just what the node needs.

Parsing here is only for indexing and for RPC views: every byte a block or a
transaction carries is judged by Bitcoin Core's own code (``pbk``) before the node
keeps it. Formats: the transaction and block encodings of the Bitcoin protocol and
the segwit serialization of BIP144
(https://github.com/bitcoin/bips/blob/master/bip-0144.mediawiki).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

NULL_HASH = bytes(32)
COINBASE_INDEX = 0xFFFFFFFF
WITNESS_SCALE_FACTOR = 4


class WireError(ValueError):
    """Bytes that are not a transaction or block in consensus encoding."""


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def compact_size(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + struct.pack("<H", n)
    if n <= 0xFFFFFFFF:
        return b"\xfe" + struct.pack("<I", n)
    return b"\xff" + struct.pack("<Q", n)


class Reader:
    """A cursor over bytes that refuses to read past the end."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise WireError("unexpected end of data")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack("<Q", self.take(8))[0])

    def varint(self) -> int:
        first = self.take(1)[0]
        if first < 0xFD:
            return first
        size = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
        return int.from_bytes(self.take(size), "little")

    def var_bytes(self) -> bytes:
        return self.take(self.varint())

    def at_end(self) -> bool:
        return self.pos == len(self.data)


@dataclass(frozen=True)
class TxIn:
    prev_txid: bytes  #: internal (little-endian) byte order
    prev_index: int
    script_sig: bytes
    sequence: int
    witness: tuple[bytes, ...] = ()

    @property
    def is_null(self) -> bool:
        return self.prev_txid == NULL_HASH and self.prev_index == COINBASE_INDEX


@dataclass(frozen=True)
class TxOut:
    value: int
    script_pubkey: bytes


@dataclass(frozen=True)
class Tx:
    version: int
    inputs: tuple[TxIn, ...]
    outputs: tuple[TxOut, ...]
    locktime: int

    @property
    def has_witness(self) -> bool:
        return any(i.witness for i in self.inputs)

    @property
    def is_coinbase(self) -> bool:
        return len(self.inputs) == 1 and self.inputs[0].is_null

    def serialize(self, *, witness: bool = True) -> bytes:
        with_witness = witness and self.has_witness
        out = [struct.pack("<i", self.version)]
        if with_witness:
            out.append(b"\x00\x01")
        out.append(compact_size(len(self.inputs)))
        for i in self.inputs:
            out += [i.prev_txid, struct.pack("<I", i.prev_index)]
            out += [compact_size(len(i.script_sig)), i.script_sig, struct.pack("<I", i.sequence)]
        out.append(compact_size(len(self.outputs)))
        for o in self.outputs:
            out += [struct.pack("<q", o.value), compact_size(len(o.script_pubkey)), o.script_pubkey]
        if with_witness:
            for i in self.inputs:
                out.append(compact_size(len(i.witness)))
                out += [compact_size(len(item)) + item for item in i.witness]
        out.append(struct.pack("<I", self.locktime))
        return b"".join(out)

    @property
    def txid(self) -> bytes:
        """Internal byte order; display order is reversed."""
        return sha256d(self.serialize(witness=False))

    @property
    def wtxid(self) -> bytes:
        return sha256d(self.serialize())

    @property
    def weight(self) -> int:
        """BIP141 weight: base size * 3 + total size."""
        return len(self.serialize(witness=False)) * 3 + len(self.serialize())

    @property
    def vsize(self) -> int:
        return (self.weight + WITNESS_SCALE_FACTOR - 1) // WITNESS_SCALE_FACTOR


def read_tx(r: Reader) -> Tx:
    version = struct.unpack("<i", r.take(4))[0]
    n_in = r.varint()
    segwit = False
    if n_in == 0:  # BIP144 marker, then flag 0x01
        if r.take(1) != b"\x01":
            raise WireError("bad segwit flag")
        segwit, n_in = True, r.varint()
    raw_in = [(r.take(32), r.u32(), r.var_bytes(), r.u32()) for _ in range(n_in)]
    outputs = tuple(
        TxOut(struct.unpack("<q", r.take(8))[0], r.var_bytes()) for _ in range(r.varint())
    )
    witnesses: list[tuple[bytes, ...]] = [()] * n_in
    if segwit:
        witnesses = [tuple(r.var_bytes() for _ in range(r.varint())) for _ in range(n_in)]
        if not any(witnesses):
            raise WireError("superfluous witness record")
    inputs = tuple(TxIn(*raw, witness=w) for raw, w in zip(raw_in, witnesses, strict=True))
    return Tx(version, inputs, outputs, r.u32())


def parse_tx(data: bytes) -> Tx:
    """Exactly one transaction, no trailing bytes."""
    r = Reader(data)
    tx = read_tx(r)
    if not r.at_end():
        raise WireError("trailing bytes after transaction")
    return tx


@dataclass(frozen=True)
class Header:
    version: int
    prev_hash: bytes
    merkle_root: bytes
    time: int
    bits: int
    nonce: int

    def serialize(self) -> bytes:
        return (
            struct.pack("<i", self.version)
            + self.prev_hash
            + self.merkle_root
            + struct.pack("<III", self.time, self.bits, self.nonce)
        )

    @property
    def hash(self) -> bytes:
        return sha256d(self.serialize())


def parse_header(data: bytes) -> Header:
    if len(data) != 80:
        raise WireError("a block header is 80 bytes")
    version = struct.unpack("<i", data[:4])[0]
    time, bits, nonce = struct.unpack("<III", data[68:80])
    return Header(version, data[4:36], data[36:68], time, bits, nonce)


@dataclass(frozen=True)
class Block:
    header: Header
    txs: tuple[Tx, ...]

    def serialize(self) -> bytes:
        body = b"".join(tx.serialize() for tx in self.txs)
        return self.header.serialize() + compact_size(len(self.txs)) + body


def parse_block(data: bytes) -> Block:
    r = Reader(data)
    header = parse_header(r.take(80))
    txs = tuple(read_tx(r) for _ in range(r.varint()))
    if not r.at_end():
        raise WireError("trailing bytes after block")
    return Block(header, txs)


def merkle_root(hashes: list[bytes]) -> bytes:
    """The Bitcoin merkle tree: pairs hashed with SHA256d, an odd last one doubled."""
    level = list(hashes) or [NULL_HASH]
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [sha256d(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]
