"""Transactions and blocks in consensus encoding, with their hashes, size and weight.

Formats: the transaction and block encodings of the Bitcoin protocol and the segwit
serialization of BIP144 (https://github.com/bitcoin/bips/blob/master/bip-0144.mediawiki).
Reading is as strict as :class:`~chains.bitcoin.wire.Reader` (truncation, non-canonical
compact sizes and trailing bytes are :class:`~chains.errors.ChainDecodeError`); output
amounts are not range-checked here, that is a consensus rule for the caller.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from chains.errors import ChainDecodeError

from .wire import Reader, TxOut, compact_size, sha256d, var_bytes

NULL_HASH = bytes(32)
COINBASE_INDEX = 0xFFFFFFFF
WITNESS_SCALE_FACTOR = 4


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
        out = [struct.pack("<i", self.version), b"\x00\x01" if with_witness else b""]
        out.append(compact_size(len(self.inputs)))
        for i in self.inputs:
            out += [i.prev_txid, struct.pack("<I", i.prev_index), var_bytes(i.script_sig),
                    struct.pack("<I", i.sequence)]
        out.append(compact_size(len(self.outputs)))
        out += [o.serialize() for o in self.outputs]
        if with_witness:
            for i in self.inputs:
                out += [compact_size(len(i.witness)), *map(var_bytes, i.witness)]
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
    version = r.i32()
    n_in = r.compact_size()
    segwit = False
    if n_in == 0:  # BIP144 marker, then flag 0x01
        if r.read(1) != b"\x01":
            raise ChainDecodeError("bad segwit flag")
        segwit, n_in = True, r.compact_size()
    raw_in = [(r.read(32), r.u32(), r.var_bytes(), r.u32()) for _ in range(n_in)]
    outputs = tuple(TxOut.read(r) for _ in range(r.compact_size()))
    witnesses: list[tuple[bytes, ...]] = [()] * n_in
    if segwit:
        witnesses = [tuple(r.var_bytes() for _ in range(r.compact_size())) for _ in range(n_in)]
        if not any(witnesses):
            raise ChainDecodeError("superfluous witness record")
    inputs = tuple(TxIn(*raw, witness=w) for raw, w in zip(raw_in, witnesses, strict=True))
    return Tx(version, inputs, outputs, r.u32())


def parse_tx(data: bytes) -> Tx:
    """Exactly one transaction, no trailing bytes."""
    r = Reader(data)
    tx = read_tx(r)
    r.done("transaction")
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
        raise ChainDecodeError("a block header is 80 bytes")
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
    header = parse_header(r.read(80))
    txs = tuple(read_tx(r) for _ in range(r.compact_size()))
    r.done("block")
    return Block(header, txs)


def merkle_root(hashes: list[bytes]) -> bytes:
    """The Bitcoin merkle tree: pairs hashed with SHA256d, an odd last one doubled."""
    level = list(hashes) or [NULL_HASH]
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [sha256d(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]
