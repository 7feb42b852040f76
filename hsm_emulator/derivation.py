"""Hierarchical key derivation inside the HSM (BIP32 for secp256k1, SLIP-10 for ed25519).

The arithmetic is bip-utils' (``Bip32Slip10Secp256k1``, ``Bip32Slip10Ed25519``,
``Bip32PathParser``, ``Bip32KeyDeserializer``); this module only adds what an HSM needs
around it:

* strict inputs: a derivation path is parsed by one grammar, so ``"m/0'"``, ``"m/0h"`` and
  ``"m/0H"`` mean the same key and nothing else (no stray spaces, no ``p`` marker, no
  non-ASCII digits, no leading zeros) gets quietly accepted;
* one error type: every refusal is a :class:`~hsm_emulator.errors.DerivationError`, never a
  library exception, so the broker can map it to a stable code;
* key hygiene: :class:`ExtendedKey` never prints its secret halves.

Specifications:

* BIP32: https://github.com/bitcoin/bips/blob/master/bip-0032.mediawiki
* SLIP-10: https://github.com/satoshilabs/slips/blob/master/slip-0010.md
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from bip_utils import (
    Base58ChecksumError,
    Bip32KeyData,
    Bip32KeyError,
    Bip32KeyNetVersions,
    Bip32PathError,
    Bip32PathParser,
    Bip32Slip10Ed25519,
    Bip32Slip10Secp256k1,
    HmacSha512,
    Secp256k1PrivateKey,
)

from hsm_emulator.errors import DerivationError, InvalidInput

__all__ = [
    "HARDENED",
    "MAX_DEPTH",
    "Curve",
    "ExtendedKey",
    "derive",
    "fingerprint",
    "format_path",
    "from_extended",
    "master_from_seed",
    "parse_path",
    "public_key",
    "to_xprv",
    "to_xpub",
]

#: BIP32: indices >= 2^31 are hardened; ``i_H`` is written for ``i + 2^31``.
HARDENED = 0x8000_0000
#: BIP32 serializes the depth in one byte, so no key can sit deeper than 255.
MAX_DEPTH = 255
#: BIP32 "Master key generation": the seed is 128 to 512 bits.
SEED_MIN_BYTES, SEED_MAX_BYTES = 16, 64

# BIP32 "Serialization format" version bytes (xpub/xprv, tpub/tprv).
_MAINNET = Bip32KeyNetVersions(b"\x04\x88\xb2\x1e", b"\x04\x88\xad\xe4")
_TESTNET = Bip32KeyNetVersions(b"\x04\x35\x87\xcf", b"\x04\x35\x83\x94")
# An 82-byte Base58Check payload never needs more than 112 characters (BIP32).
_MAX_EXTENDED_KEY_CHARS = 112
# One path component: decimal without leading zeros, optional hardened marker.
_COMPONENT = re.compile(r"(0|[1-9][0-9]{0,9})(['hH]?)")
# Errors bip-utils raises for malformed input; each is turned into DerivationError.
_LIBRARY_ERRORS = (Bip32KeyError, Bip32PathError, Base58ChecksumError, ValueError, TypeError)


class Curve(StrEnum):
    """Curves the HSM derives on: BIP32 secp256k1 and SLIP-10 ed25519."""

    SECP256K1 = "secp256k1"
    ED25519 = "ed25519"


_CURVE_VALUES = frozenset(c.value for c in Curve)
_BIP32_CLASS: dict[Curve, Any] = {
    Curve.SECP256K1: Bip32Slip10Secp256k1,
    Curve.ED25519: Bip32Slip10Ed25519,
}


@dataclass(frozen=True, repr=False)
class ExtendedKey:
    """A private node of a BIP32/SLIP-10 tree: the key, its chain code and its position.

    Fields follow BIP32's serialization (depth, parent fingerprint, child index) so a
    secp256k1 node round-trips through :func:`to_xprv` / :func:`from_extended`. The private
    key and chain code are secret (the chain code plus any child private key reveals the
    parent), so ``repr`` leaves both out: key bytes must never land in logs.
    """

    curve: Curve
    private_key: bytes
    chain_code: bytes
    depth: int
    parent_fingerprint: bytes
    index: int

    def __post_init__(self) -> None:
        """Refuse structurally impossible nodes early, before any library sees them."""
        if not _is_curve(self.curve):
            raise InvalidInput(f"unsupported curve {self.curve!r}")
        object.__setattr__(self, "curve", Curve(self.curve))
        _check_bytes("private_key", self.private_key, 32)
        _check_bytes("chain_code", self.chain_code, 32)
        _check_bytes("parent_fingerprint", self.parent_fingerprint, 4)
        _check_int("depth", self.depth, MAX_DEPTH + 1)
        _check_int("index", self.index, 2 * HARDENED)

    def __repr__(self) -> str:
        """Show where the key sits in its tree, never its secret material."""
        return (
            f"ExtendedKey(curve={self.curve.value}, depth={self.depth}, "
            f"index={_format_index(self.index)}, "
            f"parent_fingerprint={self.parent_fingerprint.hex()}, "
            "private_key=<redacted>, chain_code=<redacted>)"
        )

    __str__ = __repr__


def _is_curve(value: object) -> bool:
    return isinstance(value, str) and value in _CURVE_VALUES


def _check_bytes(name: str, value: object, length: int) -> None:
    if not isinstance(value, bytes) or len(value) != length:
        raise InvalidInput(f"{name} must be {length} bytes")


def _check_int(name: str, value: object, limit: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
        raise InvalidInput(f"{name} must be an integer in [0, {limit})")


# --------------------------------------------------------------------------- paths


def parse_path(path: str) -> tuple[int, ...]:
    """Parse a BIP32 path (``"m/84'/0'/0'/0/5"``, ``"0/5"``, ``"m"``) into child indices.

    ``"m"`` and the empty relative path ``""`` both denote the key itself: ``()``.

    Hardened components take ``'``, ``h`` or ``H`` (BIP32 writes i_H, BIP44 uses ``'``).
    The grammar is deliberately narrower than bip-utils' parser, which would also take
    spaces, a ``p`` marker, leading zeros or non-ASCII digits: an HSM should not have two
    spellings of a path that an auditor might read differently. The normalized string is
    then handed to ``Bip32PathParser`` for the actual conversion.
    See https://github.com/bitcoin/bips/blob/master/bip-0032.mediawiki#the-key-tree
    """
    components = _split_path(path)
    normalized = "/".join(_normalize_component(c, pos) for pos, c in enumerate(components, 1))
    try:
        return tuple(Bip32PathParser.Parse(f"m/{normalized}" if normalized else "m").ToList())
    except _LIBRARY_ERRORS as exc:  # pragma: no cover - the grammar above already refused it
        raise DerivationError(f"invalid path {path!r}: {exc}") from exc


def _split_path(path: object) -> list[str]:
    """Split off the optional ``m`` root and enforce the depth limit before any parsing."""
    if not isinstance(path, str):
        raise DerivationError(f"path must be a str, got {type(path).__name__}")
    if path in ("", "m"):
        return []
    components = path.split("/")
    if components[0] == "m":
        components = components[1:]
    if len(components) > MAX_DEPTH:
        raise DerivationError(f"path is deeper than {MAX_DEPTH} levels ({len(components)})")
    return components


def _normalize_component(component: str, position: int) -> str:
    """Validate one component and return it with ``'`` as the hardened marker."""
    if not component:
        raise DerivationError(f"empty component at position {position}")
    match = _COMPONENT.fullmatch(component)
    if match is None:
        shown = component if len(component) <= 24 else component[:24] + "..."
        raise DerivationError(f"invalid component {shown!r} at position {position}")
    number, marker = match.groups()
    if int(number) >= HARDENED:
        raise DerivationError(f"index {number} at position {position} is not below 2^31")
    return number + ("'" if marker else "")


def format_path(indices: Sequence[int], absolute: bool = False) -> str:
    """Write indices in BIP32 notation with ``'`` for hardened: ``"0/5'"`` or ``"m/0/5'"``.

    ``'`` rather than ``h`` because it is what BIP44-style wallets display. The empty path
    is ``""`` (relative) or ``"m"`` (absolute); :func:`parse_path` reads both back as ``()``.
    """
    body = "/".join(_format_index(i) for i in _check_indices(indices))
    if not absolute:
        return body
    return f"m/{body}" if body else "m"


def _format_index(index: int) -> str:
    return f"{index - HARDENED}'" if index >= HARDENED else str(index)


def _check_indices(indices: object) -> tuple[int, ...]:
    """Accept only a sequence of 32-bit child numbers, at most MAX_DEPTH of them."""
    if isinstance(indices, str | bytes) or not isinstance(indices, Sequence):
        raise DerivationError("indices must be a sequence of integers")
    if len(indices) > MAX_DEPTH:
        raise DerivationError(f"path is deeper than {MAX_DEPTH} levels ({len(indices)})")
    for pos, index in enumerate(indices, 1):
        if isinstance(index, bool) or not isinstance(index, int):
            raise DerivationError(f"index at position {pos} is not an integer")
        if not 0 <= index < 2 * HARDENED:
            raise DerivationError(f"index {index} at position {pos} is outside [0, 2^32)")
    return tuple(indices)


# --------------------------------------------------------------------------- derivation


def master_from_seed(curve: Curve, seed: bytes) -> ExtendedKey:
    """Derive the master node m from a 16..64-byte seed (BIP32, or SLIP-10 for ed25519).

    For secp256k1 BIP32 says a master whose I_L is 0 or >= n "is invalid"; bip-utils would
    instead retry SLIP-10 style and silently yield a different key, so that (2^-127) case
    is refused here.
    https://github.com/bitcoin/bips/blob/master/bip-0032.mediawiki#master-key-generation
    https://github.com/satoshilabs/slips/blob/master/slip-0010.md#master-key-generation
    """
    cls = _bip32_class(curve)
    if not isinstance(seed, bytes) or not SEED_MIN_BYTES <= len(seed) <= SEED_MAX_BYTES:
        raise DerivationError(f"seed must be {SEED_MIN_BYTES} to {SEED_MAX_BYTES} bytes")
    if curve == Curve.SECP256K1:
        _refuse_invalid_bip32_master(seed)
    try:
        return _from_bip32(Curve(curve), cls.FromSeed(seed))
    except _LIBRARY_ERRORS as exc:
        raise DerivationError(f"invalid master key: {exc}") from exc


def _refuse_invalid_bip32_master(seed: bytes) -> None:
    i_left = HmacSha512.QuickDigest(b"Bitcoin seed", seed)[:32]
    if not Secp256k1PrivateKey.IsValidBytes(i_left):
        raise DerivationError("invalid master key: I_L is 0 or not below n (BIP32)")


def derive(key: ExtendedKey, path: Sequence[int] | str) -> ExtendedKey:
    """Derive the private descendant of ``key`` at ``path`` (CKDpriv, applied per index).

    A string path starting with ``m`` is absolute, so it is only accepted from a master
    node; deriving ``"m/..."`` from an account key would silently produce a different
    key than the caller wrote. ed25519 has hardened derivation only (SLIP-10). bip-utils
    does not detect BIP32's I_L >= n child case (probability below 2^-127), in which BIP32
    says to skip to the next index.
    https://github.com/bitcoin/bips/blob/master/bip-0032.mediawiki#private-parent-key--private-child-key
    """
    indices = _path_indices(key, path)
    if key.depth + len(indices) > MAX_DEPTH:
        raise DerivationError(f"derived key would be deeper than {MAX_DEPTH}")
    if key.curve is Curve.ED25519 and any(i < HARDENED for i in indices):
        raise DerivationError("ed25519 (SLIP-10) only supports hardened indices")
    node = _to_bip32(key)
    try:
        for index in indices:
            node = node.ChildKey(index)
    except _LIBRARY_ERRORS as exc:
        raise DerivationError(f"derivation failed: {exc}") from exc
    return _from_bip32(key.curve, node)


def _path_indices(key: ExtendedKey, path: Sequence[int] | str) -> tuple[int, ...]:
    if not isinstance(key, ExtendedKey):
        raise DerivationError("key must be an ExtendedKey")
    if not isinstance(path, str):
        return _check_indices(path)
    if (path == "m" or path.startswith("m/")) and key.depth != 0:
        raise DerivationError("absolute path 'm/...' given for a key that is not a master key")
    return parse_path(path)


def public_key(key: ExtendedKey) -> bytes:
    """Public key: 33-byte SEC1 compressed for secp256k1, 32-byte raw for ed25519.

    SLIP-10 prints ed25519 public keys with a 0x00 prefix to make them 33 bytes; that
    prefix is an artefact of reusing BIP32's layout, and RFC 8032 / Solana use 32 bytes.
    """
    raw = _to_bip32(key).PublicKey().RawCompressed().ToBytes()
    return bytes(raw[1:] if key.curve is Curve.ED25519 else raw)


def fingerprint(key: ExtendedKey) -> bytes:
    """First 4 bytes of HASH160 of the (33-byte) public key: BIP32's key fingerprint.

    https://github.com/bitcoin/bips/blob/master/bip-0032.mediawiki#key-identifiers
    """
    return bytes(_to_bip32(key).FingerPrint().ToBytes())


# --------------------------------------------------------------------------- serialization


def to_xprv(key: ExtendedKey, testnet: bool = False) -> str:
    """BIP32 extended private key (``xprv``/``tprv``) of a secp256k1 node.

    https://github.com/bitcoin/bips/blob/master/bip-0032.mediawiki#serialization-format
    """
    return str(_serializable(key, testnet).PrivateKey().ToExtended())


def to_xpub(key: ExtendedKey, testnet: bool = False) -> str:
    """BIP32 extended public key (``xpub``/``tpub``) of a secp256k1 node."""
    return str(_serializable(key, testnet).PublicKey().ToExtended())


def _serializable(key: ExtendedKey, testnet: bool) -> Any:
    if not isinstance(key, ExtendedKey) or key.curve is not Curve.SECP256K1:
        raise DerivationError("BIP32 serialization is defined for secp256k1 keys only")
    return _to_bip32(key, _TESTNET if testnet else _MAINNET)


def from_extended(s: str) -> ExtendedKey:
    """Parse a BIP32 ``xprv``/``tprv`` into a secp256k1 node, refusing anything else.

    bip-utils checks the Base58Check checksum, the version bytes, the 0x00 private-key
    prefix, the scalar range 1..n-1, public key points and the master-node invariants
    (depth 0 => zero parent fingerprint and index) - the invalid keys of BIP32 test
    vector 5. Extended *public* keys are refused too: the HSM imports secrets only.
    https://github.com/bitcoin/bips/blob/master/bip-0032.mediawiki#test-vector-5
    """
    if not isinstance(s, str) or not 0 < len(s) <= _MAX_EXTENDED_KEY_CHARS:
        raise DerivationError("extended key must be a non-empty string of at most 112 chars")
    node = _deserialize(s)
    if node.IsPublicOnly():
        raise DerivationError("an extended public key was given where a private key is required")
    return _from_bip32(Curve.SECP256K1, node)


def _deserialize(s: str) -> Any:
    """Try mainnet then testnet version bytes; report the mainnet error if both fail."""
    try:
        return Bip32Slip10Secp256k1.FromExtendedKey(s, _MAINNET)
    except _LIBRARY_ERRORS as exc:
        first = exc
    try:
        return Bip32Slip10Secp256k1.FromExtendedKey(s, _TESTNET)
    except _LIBRARY_ERRORS:
        raise DerivationError(f"invalid extended key: {first}") from first


# --------------------------------------------------------------------------- bip-utils glue


def _bip32_class(curve: object) -> Any:
    if not _is_curve(curve):
        raise DerivationError(f"unsupported curve {curve!r}")
    return _BIP32_CLASS[Curve(str(curve))]


def _to_bip32(key: ExtendedKey, net: Bip32KeyNetVersions = _MAINNET) -> Any:
    """Rebuild the bip-utils node; a private key outside the curve's range is refused."""
    if not isinstance(key, ExtendedKey):
        raise DerivationError("key must be an ExtendedKey")
    data = Bip32KeyData(
        chain_code=key.chain_code,
        depth=key.depth,
        index=key.index,
        parent_fprint=key.parent_fingerprint,
    )
    try:
        return _bip32_class(key.curve).FromPrivateKey(key.private_key, data, net)
    except _LIBRARY_ERRORS as exc:
        raise DerivationError(f"invalid private key: {exc}") from exc


def _from_bip32(curve: Curve, node: Any) -> ExtendedKey:
    return ExtendedKey(
        curve=curve,
        private_key=bytes(node.PrivateKey().Raw().ToBytes()),
        chain_code=bytes(node.ChainCode().ToBytes()),
        depth=int(node.Depth().ToInt()),
        parent_fingerprint=bytes(node.ParentFingerPrint().ToBytes()),
        index=int(node.Index().ToInt()),
    )
