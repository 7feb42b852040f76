"""The few output descriptors ``scantxoutset`` needs: ``addr(...)`` and ``raw(...)``.

Checksums are BIP380's (https://github.com/bitcoin/bips/blob/master/bip-0380.mediawiki),
written from its Python snippet. A descriptor the node does not understand is
refused rather than guessed at; key-based descriptors (wpkh, tr, xpubs) are left to
a real bitcoind.
"""

from __future__ import annotations

from chains.bitcoin.addresses import destination_address, destination_script
from chains.errors import InvalidAddress

_INPUT_CHARSET = (  #: BIP380's three groups of 32 characters, in order
    "0123456789()[],'/*abcdefgh@:$%{}"
    "IJKLMNOPQRSTUVWXYZ&+-.;<=>?!^_|~"
    "ijklmnopqrstuvwxyzABCDEFGH`#\"\\ "
)
_CHECKSUM_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GENERATOR = (0xF5DEE51989, 0xA9FDCA3312, 0x1BAB10E32D, 0x3706B1677A, 0x644D626FFD)


class DescriptorError(ValueError):
    """A descriptor this node cannot parse; the message is what Core would say, or close."""


def _polymod(symbols: list[int]) -> int:
    chk = 1
    for value in symbols:
        top = chk >> 35
        chk = (chk & 0x7FFFFFFFF) << 5 ^ value
        for i in range(5):
            chk ^= _GENERATOR[i] if (top >> i) & 1 else 0
    return chk


def _expand(s: str) -> list[int]:
    groups: list[int] = []
    symbols: list[int] = []
    for c in s:
        v = _INPUT_CHARSET.find(c)
        if v < 0:
            raise DescriptorError(f"Invalid character found in descriptor: {c!r}")
        symbols.append(v & 31)
        groups.append(v >> 5)
        if len(groups) == 3:
            symbols.append(groups[0] * 9 + groups[1] * 3 + groups[2])
            groups = []
    if len(groups) == 1:
        symbols.append(groups[0])
    elif len(groups) == 2:
        symbols.append(groups[0] * 3 + groups[1])
    return symbols


def checksum(s: str) -> str:
    c = _polymod([*_expand(s), 0, 0, 0, 0, 0, 0, 0, 0]) ^ 1
    return "".join(_CHECKSUM_CHARSET[(c >> (5 * (7 - i))) & 31] for i in range(8))


def with_checksum(s: str) -> str:
    return f"{s}#{checksum(s)}"


def strip_checksum(desc: str) -> str:
    """The descriptor without ``#checksum``; a present checksum must be right (BIP380)."""
    body, sep, given = desc.partition("#")
    if not sep:
        return body
    if len(given) != 8:
        raise DescriptorError(f"Expected 8 character checksum, not {len(given)} characters")
    expected = checksum(body)
    if given != expected:
        raise DescriptorError(
            f"Provided checksum '{given}' does not match computed checksum '{expected}'"
        )
    return body


def descriptor_script(desc: str, network: str) -> bytes:
    """The one scriptPubKey an ``addr(ADDR)`` or ``raw(HEX)`` descriptor stands for."""
    body = strip_checksum(desc.strip())
    name, _, rest = body.partition("(")
    if not rest.endswith(")"):
        raise DescriptorError(f"'{body}' is not a valid descriptor function")
    arg = rest[:-1]
    if name == "addr":
        try:
            return destination_script(network, arg)
        except InvalidAddress:
            raise DescriptorError(f"Address is not valid: {arg}") from None
    if name == "raw":
        try:
            return bytes.fromhex(arg)
        except ValueError:
            raise DescriptorError("Raw script is not hex") from None
    raise DescriptorError(f"'{name}' descriptors are not supported by this regtest node")


def infer_descriptor(spk: bytes, network: str) -> str:
    """Core's InferDescriptor with no keys known: ``addr()`` when there is an address."""
    addr = destination_address(network, spk)
    return with_checksum(f"addr({addr})" if addr else f"raw({spk.hex()})")
