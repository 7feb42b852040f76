"""Bitcoin addresses per network: parse a destination into its script, render a script.

Encodings are bip-utils' (``SegwitBech32Decoder``/``Encoder`` for BIP173 bech32 and
BIP350 bech32m, ``Base58Decoder.CheckDecode`` for base58check); this module pins down
which network each prefix belongs to and which witness programs the wallet pays to.

* BIP173/BIP350: https://github.com/bitcoin/bips/blob/master/bip-0350.mediawiki
* Version bytes: Bitcoin Core ``src/kernel/chainparams.cpp`` (``base58Prefixes``).

A wrong-network address is refused with :class:`~chains.errors.InvalidAddress` before
anything is built. Two limits of the formats themselves: testnet and signet share every
prefix, and regtest shares the base58 version bytes with them (only bech32 differs).
The wallet refuses witness versions 2 to 16 (:func:`address_to_script`): they are
anyone-can-spend until a soft fork gives them meaning, so paying to one is almost
certainly a mistake. The regtest node takes every address Core takes
(:func:`destination_script`, :func:`destination_address`).
"""

from __future__ import annotations

from dataclasses import dataclass

from bip_utils import (
    Base58ChecksumError,
    Base58Decoder,
    Base58Encoder,
    Bech32ChecksumError,
    SegwitBech32Decoder,
    SegwitBech32Encoder,
)

from chains.errors import ChainDecodeError, InvalidAddress

from .scripts import ScriptKind, classify, script_type, witness_script, witness_version


@dataclass(frozen=True)
class NetworkParams:
    name: str
    hrp: str  #: BIP173 human-readable part
    p2pkh: int  #: base58 version byte
    p2sh: int


NETWORKS = {
    "mainnet": NetworkParams("mainnet", "bc", 0x00, 0x05),
    "testnet": NetworkParams("testnet", "tb", 0x6F, 0xC4),
    "signet": NetworkParams("signet", "tb", 0x6F, 0xC4),
    "regtest": NetworkParams("regtest", "bcrt", 0x6F, 0xC4),
}
#: BIP173: a bech32 string is at most 90 characters; base58 P2PKH/P2SH at most 35.
_MAX_CHARS = 90
_LIBRARY_ERRORS = (ValueError, TypeError, Bech32ChecksumError, Base58ChecksumError)


def network_params(network: str) -> NetworkParams:
    try:
        return NETWORKS[network]
    except (KeyError, TypeError):
        raise InvalidAddress(f"unknown Bitcoin network {network!r}; one of "
                             f"{sorted(NETWORKS)}") from None


def address_to_script(network: str, address: str) -> bytes:
    """The output script ``address`` pays to on ``network``, if the wallet pays to it
    (:func:`~.scripts.classify`), or :class:`InvalidAddress`."""
    script = destination_script(network, address)
    try:
        classify(script)
    except ChainDecodeError:
        raise InvalidAddress(f"witness v{witness_version(script)} with a {len(script) - 2}-byte "
                             "program is not an output type this wallet pays to") from None
    return script


def destination_script(network: str, address: str) -> bytes:
    """The output script of any valid address of ``network``, as Core's
    ``DecodeDestination`` reads it (witness versions 2 to 16 included)."""
    params = network_params(network)
    if not isinstance(address, str) or not address.isascii() or not address:
        raise InvalidAddress("address must be a non-empty ASCII string")
    if address.lower().startswith(params.hrp + "1"):
        return witness_script(*decode_segwit(params.hrp, address))
    if any(address.lower().startswith(p.hrp + "1") for p in NETWORKS.values()):
        raise InvalidAddress(f"a segwit address of another network, not {network}")
    return _base58_script(params, address)


def validate_address(network: str, address: str) -> str:
    """``address`` in its normal form (bech32 lower case) if it is valid on ``network``."""
    return script_to_address(network, address_to_script(network, address))


def decode_segwit(hrp: str, address: str) -> tuple[int, bytes]:
    """BIP173/BIP350: (witness version, program) of a segwit address, or InvalidAddress."""
    if len(address) > _MAX_CHARS:
        raise InvalidAddress(f"address longer than {_MAX_CHARS} characters")
    try:
        version, program = SegwitBech32Decoder.Decode(hrp, address)
    except _LIBRARY_ERRORS as exc:
        raise InvalidAddress(f"invalid {hrp} segwit address: {exc}") from None
    return version, bytes(program)


def _base58_script(params: NetworkParams, address: str) -> bytes:
    try:
        raw = bytes(Base58Decoder.CheckDecode(address))
    except _LIBRARY_ERRORS as exc:
        raise InvalidAddress(f"not a valid {params.name} address: {exc}") from None
    if len(raw) != 21:
        raise InvalidAddress("a base58 address holds a version byte and a 20-byte hash")
    version, digest = raw[0], raw[1:]
    if version == params.p2pkh:
        return b"\x76\xa9\x14" + digest + b"\x88\xac"
    if version == params.p2sh:
        return b"\xa9\x14" + digest + b"\x87"
    raise InvalidAddress(f"base58 version byte {version:#04x} is not a {params.name} address")


def script_to_address(network: str, script: bytes) -> str:
    """How an output script the wallet pays to is shown to approvers on ``network``.

    OP_RETURN outputs have no address: they render as ``OP_RETURN:<hex of the script
    after the opcode>`` so the data is part of what approvers see and sign off on.
    """
    network_params(network)
    try:
        kind = classify(script)
    except ChainDecodeError as exc:
        raise InvalidAddress(exc.reason) from None
    if kind is ScriptKind.OP_RETURN:
        return "OP_RETURN:" + script[1:].hex()
    address = destination_address(network, script)
    if address is None:  # unreachable: every other ScriptKind has an address
        raise InvalidAddress(f"no address for {script.hex()}")
    return address


def destination_address(network: str, script: bytes) -> str | None:
    """The address of any output script on ``network`` (Core's ``ExtractDestination``),
    ``None`` for scripts without one (OP_RETURN, P2PK, non-standard)."""
    params = network_params(network)
    kind = script_type(script)
    if kind == "pubkeyhash":
        return str(Base58Encoder.CheckEncode(bytes([params.p2pkh]) + script[3:23]))
    if kind == "scripthash":
        return str(Base58Encoder.CheckEncode(bytes([params.p2sh]) + script[2:22]))
    version = witness_version(script)
    if version is None or kind == "nonstandard":
        return None
    return str(SegwitBech32Encoder.Encode(params.hrp, version, script[2:]))
