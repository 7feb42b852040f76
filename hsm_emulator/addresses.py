"""Addresses of HSM keys, and validation of addresses that callers hand in.

Encoding and decoding are bip-utils' (``P2WPKHAddrEncoder``, ``P2TRAddrEncoder``,
``EthAddrEncoder``, ``SolAddrEncoder`` and their decoders); this module pins down which key
shapes each kind accepts, which network each Bitcoin prefix belongs to, and turns every
refusal into :class:`~hsm_emulator.errors.InvalidInput` so a typo in a withdrawal address
is reported instead of sending funds to the wrong chain.

Specifications:

* P2WPKH, BIP84/BIP141/BIP173: https://github.com/bitcoin/bips/blob/master/bip-0084.mediawiki
* P2TR key path, BIP86/BIP341/BIP350: https://github.com/bitcoin/bips/blob/master/bip-0086.mediawiki
* Ethereum checksum, EIP-55: https://eips.ethereum.org/EIPS/eip-55
* Solana: the address is the base58 of the 32-byte ed25519 public key.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from bip_utils import (
    Base58Decoder,
    Base58Encoder,
    Bech32ChecksumError,
    EthAddrDecoder,
    EthAddrEncoder,
    Kekkak256,
    P2TRAddrDecoder,
    P2TRAddrEncoder,
    P2WPKHAddrDecoder,
    P2WPKHAddrEncoder,
    SolAddrEncoder,
)

from hsm_emulator.errors import InvalidInput

__all__ = ["AddressKind", "Network", "address", "validate_address"]


class AddressKind(StrEnum):
    """The address types the custody wallet pays to and receives on."""

    P2WPKH = "p2wpkh"
    P2TR = "p2tr"
    ETHEREUM = "ethereum"
    SOLANA = "solana"


class Network(StrEnum):
    """Bitcoin network; it picks the bech32 prefix. Ethereum/Solana addresses ignore it."""

    MAINNET = "mainnet"
    TESTNET = "testnet"
    REGTEST = "regtest"


#: BIP173 human-readable parts (regtest's "bcrt" is Bitcoin Core's).
_HRP = {Network.MAINNET: "bc", Network.TESTNET: "tb", Network.REGTEST: "bcrt"}
#: BIP173: a bech32 string is at most 90 characters.
_BECH32_MAX_CHARS = 90
#: base58 of 32 bytes is at most 44 characters.
_SOLANA_MAX_CHARS = 44
_ETH_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
# Errors bip-utils raises for malformed input; each is turned into InvalidInput.
_LIBRARY_ERRORS = (ValueError, TypeError, Bech32ChecksumError)


# --------------------------------------------------------------------------- encoding


def address(kind: AddressKind, network: Network, public_key: bytes) -> str:
    """The address of ``public_key`` for ``kind`` on ``network``.

    Key shapes: P2WPKH and P2TR take a 33-byte compressed secp256k1 key (segwit v0 only
    relays compressed keys, BIP143; BIP86 starts from the same key), ETHEREUM also takes
    the 65-byte uncompressed form, SOLANA a 32-byte ed25519 key. Anything else - or a
    key that is not a point of its curve - is InvalidInput.
    """
    kind, network = _kind(kind), _network(network)
    key = _checked_key(kind, public_key)
    try:
        return _ENCODERS[kind](key, _HRP[network])
    except _LIBRARY_ERRORS as exc:
        raise InvalidInput(f"public key is not a valid {_CURVE[kind]} point: {exc}") from exc


def _encode_p2wpkh(key: bytes, hrp: str) -> str:
    """BIP141 P2WPKH: witness v0 program HASH160(compressed key), bech32 (BIP173)."""
    return str(P2WPKHAddrEncoder.EncodeKey(key, hrp=hrp))


def _encode_p2tr(key: bytes, hrp: str) -> str:
    """BIP86 key path: output key = P + hashTapTweak(x(P))G, no script tree; bech32m."""
    return str(P2TRAddrEncoder.EncodeKey(key, hrp=hrp))


def _encode_ethereum(key: bytes, _hrp: str) -> str:
    """Last 20 bytes of keccak256(x || y), EIP-55 checksummed."""
    return str(EthAddrEncoder.EncodeKey(key))


def _encode_solana(key: bytes, _hrp: str) -> str:
    """The 32 public-key bytes in base58 (Bitcoin alphabet)."""
    return str(SolAddrEncoder.EncodeKey(key))


_ENCODERS: dict[AddressKind, Callable[[bytes, str], str]] = {
    AddressKind.P2WPKH: _encode_p2wpkh,
    AddressKind.P2TR: _encode_p2tr,
    AddressKind.ETHEREUM: _encode_ethereum,
    AddressKind.SOLANA: _encode_solana,
}
_CURVE = {
    AddressKind.P2WPKH: "secp256k1",
    AddressKind.P2TR: "secp256k1",
    AddressKind.ETHEREUM: "secp256k1",
    AddressKind.SOLANA: "ed25519",
}
_KEY_LENGTHS = {
    AddressKind.P2WPKH: (33,),
    AddressKind.P2TR: (33,),
    AddressKind.ETHEREUM: (33, 65),
    AddressKind.SOLANA: (32,),
}


def _checked_key(kind: AddressKind, public_key: object) -> bytes:
    """Refuse a key of the wrong length or SEC1 prefix before any library parses it."""
    if not isinstance(public_key, bytes | bytearray):
        raise InvalidInput("public key must be bytes")
    key = bytes(public_key)
    lengths = _KEY_LENGTHS[kind]
    if len(key) not in lengths:
        wanted = " or ".join(str(n) for n in lengths)
        raise InvalidInput(
            f"{kind.value} needs a {wanted}-byte {_CURVE[kind]} public key, got {len(key)} bytes"
        )
    prefixes = {33: (2, 3), 65: (4,)}.get(len(key))
    if prefixes is not None and key[0] not in prefixes:
        raise InvalidInput(f"{len(key)}-byte secp256k1 key has invalid SEC1 prefix {key[0]:#04x}")
    return key


# --------------------------------------------------------------------------- validation


def validate_address(kind: AddressKind, network: Network, address: str) -> str:
    """Check ``address`` is a well-formed ``kind`` address for ``network``; return it normalized.

    Normal forms: bech32/bech32m lower case, Ethereum EIP-55 checksummed, Solana as given
    (base58 has a single spelling). A Bitcoin address of another network is refused: its
    prefix is part of the checksum, so this is exactly the mistake the prefix exists to catch.
    """
    kind, network = _kind(kind), _network(network)
    if not isinstance(address, str) or not address.isascii():
        raise InvalidInput("address must be an ASCII string")
    return _VALIDATORS[kind](address, network)


def _validate_p2wpkh(addr: str, network: Network) -> str:
    """Witness v0, bech32 checksum (BIP173), 20-byte program (a 32-byte one is P2WSH)."""
    program = _decode_segwit(P2WPKHAddrDecoder, addr, network)
    if len(program) != 20:
        raise InvalidInput(f"not a P2WPKH address: witness program is {len(program)} bytes")
    return addr.lower()


def _validate_p2tr(addr: str, network: Network) -> str:
    """Witness v1, bech32m checksum (BIP350), 32-byte program (BIP341)."""
    _decode_segwit(P2TRAddrDecoder, addr, network)
    return addr.lower()


def _decode_segwit(decoder: Any, addr: str, network: Network) -> bytes:
    if len(addr) > _BECH32_MAX_CHARS:
        raise InvalidInput(f"bech32 address longer than {_BECH32_MAX_CHARS} characters")
    try:
        return bytes(decoder.DecodeAddr(addr, hrp=_HRP[network]))
    except _LIBRARY_ERRORS as exc:
        raise InvalidInput(f"invalid {network.value} segwit address: {exc}") from exc


def _validate_ethereum(addr: str, _network: Network) -> str:
    """``0x`` + 40 hex digits; mixed case must be the EIP-55 checksum, one case is unchecked."""
    if _ETH_ADDRESS.fullmatch(addr) is None:
        raise InvalidInput("Ethereum address must be 0x followed by 40 hex digits")
    digits = addr[2:]
    mixed_case = digits != digits.lower() and digits != digits.upper()
    try:
        EthAddrDecoder.DecodeAddr(addr, skip_chksum_enc=not mixed_case)
    except _LIBRARY_ERRORS as exc:
        raise InvalidInput(f"Ethereum address fails its EIP-55 checksum: {exc}") from exc
    return "0x" + _eip55(digits)


def _eip55(hex_digits: str) -> str:
    """EIP-55: upper-case the i-th letter when nibble i of keccak256(lower-case hex) >= 8."""
    lower = hex_digits.lower()
    nibbles = bytes(Kekkak256.QuickDigest(lower)).hex()[: len(lower)]
    return "".join(c.upper() if int(h, 16) >= 8 else c for c, h in zip(lower, nibbles, strict=True))


def _validate_solana(addr: str, _network: Network) -> str:
    """base58 of exactly 32 bytes, in its one canonical spelling.

    The point is deliberately not required to be on the ed25519 curve (bip-utils'
    ``SolAddrDecoder`` would): program-derived addresses, such as associated token
    accounts, are off-curve by construction and are legitimate destinations.
    """
    if not 0 < len(addr) <= _SOLANA_MAX_CHARS:
        raise InvalidInput(f"Solana address must be 1 to {_SOLANA_MAX_CHARS} characters")
    try:
        raw = bytes(Base58Decoder.Decode(addr))
    except _LIBRARY_ERRORS as exc:
        raise InvalidInput(f"Solana address is not base58: {exc}") from exc
    if len(raw) != 32:
        raise InvalidInput(f"Solana address must decode to 32 bytes, got {len(raw)}")
    if Base58Encoder.Encode(raw) != addr:
        raise InvalidInput("Solana address is not in canonical base58 form")
    return addr


_VALIDATORS: dict[AddressKind, Callable[[str, Network], str]] = {
    AddressKind.P2WPKH: _validate_p2wpkh,
    AddressKind.P2TR: _validate_p2tr,
    AddressKind.ETHEREUM: _validate_ethereum,
    AddressKind.SOLANA: _validate_solana,
}


# --------------------------------------------------------------------------- arguments


def _kind(kind: object) -> AddressKind:
    if isinstance(kind, str) and kind in _KIND_VALUES:
        return AddressKind(kind)
    raise InvalidInput(f"unknown address kind {kind!r}")


def _network(network: object) -> Network:
    if isinstance(network, str) and network in _NETWORK_VALUES:
        return Network(network)
    raise InvalidInput(f"unknown network {network!r}")


_KIND_VALUES = frozenset(k.value for k in AddressKind)
_NETWORK_VALUES = frozenset(n.value for n in Network)
