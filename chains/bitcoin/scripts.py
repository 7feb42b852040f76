"""Output scripts the wallet pays to and spends from, and the keys behind them.

The wallet spends two kinds of coins, both single-key and both derived from the HSM key:

* P2WPKH, ``OP_0 <HASH160(pubkey)>`` (BIP141):
  https://github.com/bitcoin/bips/blob/master/bip-0141.mediawiki#p2wpkh
* P2TR key path with no script tree, BIP86: the output key is the internal key tweaked
  by ``hashTapTweak(x(P))``:
  https://github.com/bitcoin/bips/blob/master/bip-0086.mediawiki#address-derivation

:func:`script_type` names any output script as Bitcoin Core does (``GetTxnOutputType``
in src/script/solver.cpp); :func:`classify` narrows that to the templates the decoder
accepts and refuses anything else (bare multisig, P2PK, non-standard scripts, unknown
witness versions).
"""

from __future__ import annotations

import hashlib
from enum import StrEnum

import coincurve

from chains.errors import ChainDecodeError
from hsm_emulator.decoding import tagged_hash


class ScriptKind(StrEnum):
    P2PKH = "p2pkh"
    P2SH = "p2sh"
    P2WPKH = "p2wpkh"
    P2WSH = "p2wsh"
    P2TR = "p2tr"
    OP_RETURN = "op_return"


OP_RETURN = 0x6A
#: Bitcoin Core's -datacarriersize default before v30 (83 bytes of script). Larger
#: OP_RETURN outputs are refused: they would not relay everywhere.
MAX_OP_RETURN_SCRIPT = 83
#: Consensus MAX_SCRIPT_SIZE: a longer output script can never be spent.
MAX_SCRIPT_SIZE = 10_000


def hash160(data: bytes) -> bytes:
    return hashlib.new("ripemd160", hashlib.sha256(data).digest()).digest()


def p2wpkh_script(public_key: bytes) -> bytes:
    """``OP_0 <20-byte HASH160>`` of a compressed key (BIP143 relays only those)."""
    _compressed(public_key)
    return b"\x00\x14" + hash160(public_key)


def p2tr_script(public_key: bytes) -> bytes:
    """``OP_1 <32-byte output key>`` of a BIP86 key-path-only output."""
    return b"\x51\x20" + taproot_output_key(x_only(public_key))


def p2pkh_code(public_key: bytes) -> bytes:
    """BIP143's scriptCode for P2WPKH: the P2PKH script of the same key hash."""
    return b"\x76\xa9\x14" + hash160(public_key) + b"\x88\xac"


def x_only(public_key: bytes) -> bytes:
    """BIP340's 32-byte x-only key of a compressed key (the parity is dropped)."""
    _compressed(public_key)
    return public_key[1:]


def taproot_output_key(internal: bytes, merkle_root: bytes = b"") -> bytes:
    """BIP341 ``taproot_tweak_pubkey``: x(lift_x(P) + hashTapTweak(P || root)·G).

    https://github.com/bitcoin/bips/blob/master/bip-0341.mediawiki#constructing-and-spending-taproot-outputs
    """
    if len(internal) != 32:
        raise ChainDecodeError("an x-only key is 32 bytes")
    tweak = tagged_hash("TapTweak", internal + merkle_root)
    try:
        point = coincurve.PublicKey(b"\x02" + internal).add(tweak)
    except ValueError as exc:  # not on the curve, or tweak out of range
        raise ChainDecodeError(f"invalid taproot internal key: {exc}") from None
    return bytes(point.format(compressed=True)[1:])


def is_unspendable(script: bytes) -> bool:
    """Core's ``CScript::IsUnspendable``: such outputs never enter the UTXO set."""
    return (bool(script) and script[0] == OP_RETURN) or len(script) > MAX_SCRIPT_SIZE


def witness_version(script: bytes) -> int | None:
    """BIP141's witness program test: a version opcode and one 2-40 byte push."""
    n = len(script)
    if 4 <= n <= 42 and (script[0] == 0 or 0x51 <= script[0] <= 0x60) and script[1] == n - 2:
        return script[0] - 0x50 if script[0] else 0
    return None


def witness_script(version: int, program: bytes) -> bytes:
    """``OP_n <program>``: the output script of a witness program."""
    return bytes([0x50 + version if version else 0, len(program)]) + program


#: Core's names of the witness programs with a meaning, by (version, program).
_WITNESS_TYPES = {(0, 20): "witness_v0_keyhash", (0, 32): "witness_v0_scripthash",
                  (1, 32): "witness_v1_taproot"}
ANCHOR = b"\x51\x02\x4e\x73"  #: pay-to-anchor, ``OP_1 <0x4e73>``


def script_type(script: bytes) -> str:
    """Core's ``GetTxnOutputType`` name of an output script (bare multisig is not told
    apart: it is "nonstandard" here, as it is to this wallet)."""
    n = len(script)
    if n == 25 and script[:3] == b"\x76\xa9\x14" and script[23:] == b"\x88\xac":
        return "pubkeyhash"
    if n == 23 and script[:2] == b"\xa9\x14" and script[22] == 0x87:
        return "scripthash"
    if n in (35, 67) and script[0] == n - 2 and script[-1] == 0xAC:
        return "pubkey"
    if n and script[0] == OP_RETURN:
        return "nulldata"
    return _witness_type(script)


def _witness_type(script: bytes) -> str:
    version = witness_version(script)
    if version is None:
        return "nonstandard"
    if script == ANCHOR:
        return "anchor"
    default = "nonstandard" if version == 0 else "witness_unknown"
    return _WITNESS_TYPES.get((version, len(script) - 2), default)


_KINDS = {"pubkeyhash": ScriptKind.P2PKH, "scripthash": ScriptKind.P2SH,
          "witness_v0_keyhash": ScriptKind.P2WPKH, "witness_v0_scripthash": ScriptKind.P2WSH,
          "witness_v1_taproot": ScriptKind.P2TR, "nulldata": ScriptKind.OP_RETURN}


def classify(script: bytes) -> ScriptKind:
    """The template of an output script, or :class:`ChainDecodeError`."""
    kind = _KINDS.get(script_type(script))
    if kind is None:
        raise ChainDecodeError(f"unsupported output script {script[:40].hex()}")
    if kind is ScriptKind.OP_RETURN and len(script) > MAX_OP_RETURN_SCRIPT:
        raise ChainDecodeError(f"OP_RETURN script longer than {MAX_OP_RETURN_SCRIPT} bytes")
    return kind


def _compressed(public_key: bytes) -> None:
    if len(public_key) != 33 or public_key[0] not in (2, 3):
        raise ChainDecodeError("expected a 33-byte compressed secp256k1 key")
