"""BIP174 partially signed transactions, version 0: strict parse, exact serialize.

https://github.com/bitcoin/bips/blob/master/bip-0174.mediawiki

python-bitcoinlib 0.12 has no PSBT support, so the container is written here; the
unsigned transaction inside is python-bitcoinlib's ``CTransaction``. Each map keeps
every entry as raw ``key -> value`` bytes in its original order, so unknown and
proprietary keys survive a round trip untouched; the fields the wallet uses are parsed
(and so validated) when the PSBT is read. Refused: a bad magic, duplicate keys,
truncation, non-canonical compact sizes, trailing bytes, PSBTv2-only fields, a signed
or witness-carrying unsigned transaction, and more than :data:`MAX_IO` inputs or outputs.

BIP371's taproot fields are held to their sizes as Bitcoin Core's ``psbt.h`` holds them
(https://github.com/bitcoin/bips/blob/master/bip-0371.mediawiki#specification): key-path
and script-path signatures of 64 or 65 bytes, a script signature keyed by an x-only key
and a leaf hash, a leaf script keyed by a BIP341 control block (33 + 32m bytes, m <= 128),
32-byte internal keys and merkle roots, x-only derivation keys, and an output tap tree
that is a complete tree of valid leaves. A wallet that read a malformed field its own way
could disagree with another about what the PSBT says, so every one is refused here.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bitcoin.core import CTransaction

from chains.errors import ChainDecodeError

from .wire import KeyOrigin, Reader, TxOut, compact_size, var_bytes

MAGIC = b"psbt\xff"
MAX_IO = 256  #: inputs or outputs: far beyond a custody transfer, bounds the work

# Key types (BIP174 / BIP371 tables).
G_UNSIGNED_TX, G_XPUB, G_VERSION = 0x00, 0x01, 0xFB
I_NON_WITNESS_UTXO, I_WITNESS_UTXO, I_PARTIAL_SIG, I_SIGHASH_TYPE = 0x00, 0x01, 0x02, 0x03
I_BIP32_DERIVATION, I_FINAL_SCRIPTSIG, I_FINAL_SCRIPTWITNESS = 0x06, 0x07, 0x08
I_TAP_KEY_SIG, I_TAP_SCRIPT_SIG, I_TAP_LEAF_SCRIPT = 0x13, 0x14, 0x15
I_TAP_BIP32_DERIVATION, I_TAP_INTERNAL_KEY, I_TAP_MERKLE_ROOT = 0x16, 0x17, 0x18
O_BIP32_DERIVATION, O_TAP_INTERNAL_KEY, O_TAP_TREE, O_TAP_BIP32_DERIVATION = (
    0x02, 0x05, 0x06, 0x07)
#: BIP341: a control block is 33 + 32m bytes for a leaf at depth m <= 128.
TAPROOT_CONTROL_BASE, TAPROOT_MAX_DEPTH = 33, 128

#: PSBTv2 fields that "MUST be excluded" from a version 0 PSBT.
_V2_ONLY = {"global": range(0x02, 0x07), "input": range(0x0E, 0x13), "output": range(0x03, 0x05)}
#: Key types whose key is the type alone, per map.
_KEYLESS: dict[str, set[int]] = {
    "global": {G_UNSIGNED_TX, G_VERSION},
    "input": {I_NON_WITNESS_UTXO, I_WITNESS_UTXO, I_SIGHASH_TYPE, 0x04, 0x05,
              I_FINAL_SCRIPTSIG, I_FINAL_SCRIPTWITNESS, I_TAP_KEY_SIG, I_TAP_INTERNAL_KEY,
              I_TAP_MERKLE_ROOT},
    "output": {0x00, 0x01, O_TAP_INTERNAL_KEY, O_TAP_TREE},
}


@dataclass(frozen=True)
class Rule:
    """What a field's key data or value must be: a test and the words for a refusal."""

    ok: Callable[[bytes], bool]
    what: str


def _sizes(*sizes: int) -> Rule:
    return Rule(lambda b: len(b) in sizes, " or ".join(map(str, sizes)) + " bytes")


def _control_block(data: bytes) -> bool:
    extra = len(data) - TAPROOT_CONTROL_BASE
    return 0 <= extra <= 32 * TAPROOT_MAX_DEPTH and extra % 32 == 0


def tap_tree_ok(value: bytes) -> bool:
    """BIP371 ``PSBT_OUT_TAP_TREE``: one or more (depth, leaf version, script) leaves in
    depth-first order that make a complete binary tree - Core's ``TaprootBuilder`` check."""
    r, depths = Reader(value), []
    try:
        while not r.at_end():
            depth, leaf_version = r.read(2)
            r.var_bytes()
            if depth > TAPROOT_MAX_DEPTH or leaf_version & 1:
                return False
            depths.append(depth)
    except ChainDecodeError:
        return False
    return bool(depths) and _complete(depths)


def _complete(depths: list[int]) -> bool:
    """Whether leaves at these depths, in depth-first order, fill a binary tree exactly.
    ``waiting[d]``: a node at depth d waits for its sibling (Core's ``m_branch``)."""
    waiting: list[bool] = []
    for leaf_depth in depths:
        if leaf_depth + 1 < len(waiting):
            return False  # a shallower leaf while a deeper branch is unfinished
        depth = leaf_depth
        while len(waiting) > depth and waiting[depth]:
            waiting.pop()  # the sibling found: the pair is one node a level up
            if depth == 0:
                return False  # nothing above the root
            depth -= 1
        waiting += [False] * (depth + 1 - len(waiting))
        waiting[depth] = True
    return waiting in ([], [True])


#: Names of the fields held to a shape, for refusals a person can act on.
_NAMES = {
    ("global", G_XPUB): "PSBT_GLOBAL_XPUB",
    ("input", I_PARTIAL_SIG): "PSBT_IN_PARTIAL_SIG",
    ("input", I_BIP32_DERIVATION): "PSBT_IN_BIP32_DERIVATION",
    ("input", I_TAP_KEY_SIG): "PSBT_IN_TAP_KEY_SIG",
    ("input", I_TAP_SCRIPT_SIG): "PSBT_IN_TAP_SCRIPT_SIG",
    ("input", I_TAP_LEAF_SCRIPT): "PSBT_IN_TAP_LEAF_SCRIPT",
    ("input", I_TAP_BIP32_DERIVATION): "PSBT_IN_TAP_BIP32_DERIVATION",
    ("input", I_TAP_INTERNAL_KEY): "PSBT_IN_TAP_INTERNAL_KEY",
    ("input", I_TAP_MERKLE_ROOT): "PSBT_IN_TAP_MERKLE_ROOT",
    ("output", O_BIP32_DERIVATION): "PSBT_OUT_BIP32_DERIVATION",
    ("output", O_TAP_INTERNAL_KEY): "PSBT_OUT_TAP_INTERNAL_KEY",
    ("output", O_TAP_TREE): "PSBT_OUT_TAP_TREE",
    ("output", O_TAP_BIP32_DERIVATION): "PSBT_OUT_TAP_BIP32_DERIVATION",
}
_SIG, _XONLY = _sizes(64, 65), _sizes(32)
#: Key-data rules of keyed fields, per map (BIP174 and BIP371 tables).
_KEYED: dict[str, dict[int, Rule]] = {
    "global": {G_XPUB: _sizes(78)},
    "input": {I_PARTIAL_SIG: _sizes(33, 65), I_BIP32_DERIVATION: _sizes(33, 65),
              I_TAP_SCRIPT_SIG: _sizes(64),  # x-only key || leaf hash
              I_TAP_LEAF_SCRIPT: Rule(_control_block, "a control block of 33 + 32m bytes"),
              I_TAP_BIP32_DERIVATION: _XONLY},
    "output": {O_BIP32_DERIVATION: _sizes(33, 65), O_TAP_BIP32_DERIVATION: _XONLY},
}
#: Value rules of the BIP371 fields whose value has a fixed shape.
_VALUES: dict[str, dict[int, Rule]] = {
    "global": {},
    "input": {I_TAP_KEY_SIG: _SIG, I_TAP_SCRIPT_SIG: _SIG,
              I_TAP_LEAF_SCRIPT: Rule(bool, "a script and its leaf version byte"),
              I_TAP_INTERNAL_KEY: _XONLY, I_TAP_MERKLE_ROOT: _sizes(32)},
    "output": {O_TAP_INTERNAL_KEY: _XONLY,
               O_TAP_TREE: Rule(tap_tree_ok, "a complete tree of valid leaves")},
}


def key(key_type: int, key_data: bytes = b"") -> bytes:
    return compact_size(key_type) + key_data


def split_key(raw: bytes) -> tuple[int, bytes]:
    r = Reader(raw)
    key_type = r.compact_size()
    return key_type, raw[r.pos:]


@dataclass(frozen=True)
class TapOrigin:
    """BIP371 ``PSBT_*_TAP_BIP32_DERIVATION`` value: leaf hashes and the key origin."""

    leaf_hashes: tuple[bytes, ...]
    origin: KeyOrigin

    def serialize(self) -> bytes:
        return compact_size(len(self.leaf_hashes)) + b"".join(self.leaf_hashes) + \
            self.origin.serialize()

    @classmethod
    def parse(cls, data: bytes) -> TapOrigin:
        r = Reader(data)
        n = r.compact_size()
        if n > len(data) // 32:
            raise ChainDecodeError("truncated leaf hashes")
        leaves = tuple(r.read(32) for _ in range(n))
        return cls(leaves, KeyOrigin.parse(data[r.pos:]))


@dataclass
class Psbt:
    """A version 0 PSBT. Maps are ``{raw key: value}``; use the accessors for fields."""

    tx: Any  #: python-bitcoinlib CTransaction, unsigned
    globals: dict[bytes, bytes] = field(default_factory=dict)  #: without the unsigned tx
    inputs: list[dict[bytes, bytes]] = field(default_factory=list)
    outputs: list[dict[bytes, bytes]] = field(default_factory=list)

    # -- codec ------------------------------------------------------------------------

    @classmethod
    def parse(cls, data: bytes) -> Psbt:
        """Strict BIP174 v0 parse; :class:`ChainDecodeError` for anything else."""
        if not isinstance(data, bytes):
            raise ChainDecodeError("a PSBT is bytes")
        if data[:5] != MAGIC:
            raise ChainDecodeError("not a PSBT: bad magic")
        r = Reader(data)
        r.read(5)
        globals_ = _read_map(r, "global")
        raw_tx = globals_.pop(key(G_UNSIGNED_TX), None)
        if raw_tx is None:
            raise ChainDecodeError("PSBT has no unsigned transaction")
        tx = parse_unsigned_tx(raw_tx)
        inputs = [_read_map(r, "input") for _ in tx.vin]
        outputs = [_read_map(r, "output") for _ in tx.vout]
        r.done("PSBT")
        psbt = cls(tx, globals_, inputs, outputs)
        psbt.check()
        return psbt

    def serialize(self) -> bytes:
        parts = [MAGIC, _write_map({key(G_UNSIGNED_TX): self.tx.serialize(), **self.globals})]
        parts += [_write_map(m) for m in self.inputs]
        parts += [_write_map(m) for m in self.outputs]
        return b"".join(parts)

    def to_base64(self) -> str:
        return base64.b64encode(self.serialize()).decode()

    @classmethod
    def from_base64(cls, text: str) -> Psbt:
        try:
            return cls.parse(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError, TypeError):
            raise ChainDecodeError("PSBT is not valid base64") from None

    def check(self) -> None:
        """Parse every field the wallet reads, so a malformed one fails here."""
        version = self.globals.get(key(G_VERSION))
        if version is not None and version != b"\0\0\0\0":
            raise ChainDecodeError("only PSBT version 0 is supported")
        for i in range(len(self.inputs)):
            self.witness_utxo(i)
            self.non_witness_utxo(i)
            self.input_derivations(i)
            self.input_tap_derivations(i)
            self.input_tap_internal_key(i)
            self.sighash_type(i)
        for o in range(len(self.outputs)):
            self.output_derivations(o)
            self.output_tap_derivations(o)

    # -- input fields -----------------------------------------------------------------

    def witness_utxo(self, i: int) -> TxOut | None:
        raw = self.inputs[i].get(key(I_WITNESS_UTXO))
        return None if raw is None else TxOut.parse(raw)

    def non_witness_utxo(self, i: int) -> Any:
        raw = self.inputs[i].get(key(I_NON_WITNESS_UTXO))
        return None if raw is None else parse_tx(raw)

    def sighash_type(self, i: int) -> int | None:
        raw = self.inputs[i].get(key(I_SIGHASH_TYPE))
        if raw is None:
            return None
        if len(raw) != 4:
            raise ChainDecodeError("sighash type is a 4-byte integer")
        return int.from_bytes(raw, "little")

    def input_derivations(self, i: int) -> dict[bytes, KeyOrigin]:
        return _derivations(self.inputs[i], I_BIP32_DERIVATION)

    def output_derivations(self, o: int) -> dict[bytes, KeyOrigin]:
        return _derivations(self.outputs[o], O_BIP32_DERIVATION)

    def input_tap_derivations(self, i: int) -> dict[bytes, TapOrigin]:
        """BIP371: x-only key -> leaf hashes and origin."""
        return _tap_derivations(self.inputs[i], I_TAP_BIP32_DERIVATION)

    def output_tap_derivations(self, o: int) -> dict[bytes, TapOrigin]:
        return _tap_derivations(self.outputs[o], O_TAP_BIP32_DERIVATION)

    def input_tap_internal_key(self, i: int) -> bytes | None:
        raw = self.inputs[i].get(key(I_TAP_INTERNAL_KEY))
        if raw is not None and len(raw) != 32:
            raise ChainDecodeError("a taproot internal key is 32 bytes")
        return raw


def _derivations(m: dict[bytes, bytes], key_type: int) -> dict[bytes, KeyOrigin]:
    return {k: KeyOrigin.parse(v) for k, v in _typed(m, key_type)}


def _tap_derivations(m: dict[bytes, bytes], key_type: int) -> dict[bytes, TapOrigin]:
    return {k: TapOrigin.parse(v) for k, v in _typed(m, key_type)}


def _typed(m: dict[bytes, bytes], key_type: int) -> list[tuple[bytes, bytes]]:
    """(key data, value) of the entries of one key type."""
    out = []
    for raw, value in m.items():
        t, key_data = split_key(raw)
        if t == key_type:
            out.append((key_data, value))
    return out


def _read_map(r: Reader, kind: str) -> dict[bytes, bytes]:
    entries: dict[bytes, bytes] = {}
    while True:
        raw_key = r.var_bytes()
        if not raw_key:
            return entries
        value = r.var_bytes()
        if raw_key in entries:
            raise ChainDecodeError(f"duplicate key {raw_key[:40].hex()} in a {kind} map")
        _check_entry(kind, raw_key, value)
        entries[raw_key] = value


def _check_entry(kind: str, raw_key: bytes, value: bytes) -> None:
    key_type, key_data = split_key(raw_key)
    if key_type in _V2_ONLY[kind]:
        raise ChainDecodeError(f"{kind} key type {key_type:#04x} is PSBTv2-only")
    if key_type in _KEYLESS[kind] and key_data:
        raise ChainDecodeError(f"{kind} key type {key_type:#04x} takes no key data")
    name = f"{kind} key type {key_type:#04x} ({_NAMES.get((kind, key_type), 'unknown')})"
    rule = _KEYED[kind].get(key_type)
    if rule is not None and not rule.ok(key_data):
        raise ChainDecodeError(f"{name}: key data of {len(key_data)} bytes, not {rule.what}")
    rule = _VALUES[kind].get(key_type)
    if rule is not None and not rule.ok(value):
        raise ChainDecodeError(f"{name}: value of {len(value)} bytes, not {rule.what}")


def _write_map(m: dict[bytes, bytes]) -> bytes:
    return b"".join(var_bytes(k) + var_bytes(v) for k, v in m.items()) + b"\x00"


def parse_tx(raw: bytes) -> Any:
    """A transaction in its canonical encoding (python-bitcoinlib), or ChainDecodeError."""
    try:
        tx = CTransaction.deserialize(raw)
    except Exception as exc:  # python-bitcoinlib raises struct.error, ValueError, its own
        raise ChainDecodeError(f"invalid transaction: {exc}") from None
    if tx.serialize() != raw:
        raise ChainDecodeError("transaction is not in its canonical encoding")
    return tx


def spent_output(prev: Any, txid: bytes, n: int) -> TxOut:
    """Output ``n`` of ``prev``, if ``prev`` is the transaction ``txid`` (internal byte
    order) names. The txid hashes everything but the witness, so the amount and script
    read here are the ones the chain holds - what a segwit v0 signature does not commit
    to for the other inputs (BIP143; CVE-2020-14199)."""
    if prev.GetTxid() != txid:
        raise ChainDecodeError("its previous transaction (non_witness_utxo) does not hash "
                               "to the txid it spends from")
    if n >= len(prev.vout):
        raise ChainDecodeError(f"its previous transaction has no output {n}")
    out = prev.vout[n]
    return TxOut(int(out.nValue), bytes(out.scriptPubKey))


def without_witness(raw: bytes) -> bytes:
    """A transaction serialized without its witness: the txid's preimage, and how Bitcoin
    Core writes a ``non_witness_utxo`` (smaller, and the witness proves nothing here)."""
    tx = parse_tx(raw)
    return bytes(CTransaction(tx.vin, tx.vout, tx.nLockTime, tx.nVersion).serialize())


def parse_unsigned_tx(raw: bytes) -> Any:
    tx = parse_tx(raw)
    if not tx.vin or not tx.vout:
        raise ChainDecodeError("the unsigned transaction needs inputs and outputs")
    if len(tx.vin) > MAX_IO or len(tx.vout) > MAX_IO:
        raise ChainDecodeError(f"more than {MAX_IO} inputs or outputs")
    if not tx.wit.is_null() or any(len(i.scriptSig) for i in tx.vin):
        raise ChainDecodeError("the PSBT's transaction must be unsigned (BIP174)")
    return tx
