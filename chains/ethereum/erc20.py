"""ERC-20 ``transfer(address,uint256)`` calldata: encode, and recognise exactly. Pure.

Only the exact ABI shape is a token transfer: the 4-byte selector ``a9059cbb`` followed
by two 32-byte words, the address word zero-padded. Anything else - extra bytes, dirty
padding, ``transferFrom``, ``approve`` - is *not* recognised and the decoder reports a
contract call, which amount tiers never release.

ERC-20: https://eips.ethereum.org/EIPS/eip-20
ABI encoding: https://docs.soliditylang.org/en/latest/abi-spec.html
"""

from __future__ import annotations

from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_abi.exceptions import DecodingError

from .encoding import keccak256

#: keccak256("transfer(address,uint256)")[:4]
TRANSFER_SELECTOR = keccak256(b"transfer(address,uint256)")[:4]
#: keccak256("balanceOf(address)")[:4]
BALANCE_OF_SELECTOR = keccak256(b"balanceOf(address)")[:4]
_TRANSFER_LENGTH = 4 + 32 + 32


def encode_transfer(recipient: bytes, amount: int) -> bytes:
    """Calldata for ``transfer(recipient, amount)``."""
    return TRANSFER_SELECTOR + abi_encode(["address", "uint256"], [recipient, amount])


def encode_balance_of(owner: bytes) -> bytes:
    return BALANCE_OF_SELECTOR + abi_encode(["address"], [owner])


def decode_transfer(data: bytes) -> tuple[bytes, int] | None:
    """``(recipient bytes, amount)`` if ``data`` is exactly an ERC-20 transfer, else None."""
    if len(data) != _TRANSFER_LENGTH or data[:4] != TRANSFER_SELECTOR:
        return None
    if any(data[4:16]):  # an address word must be left-padded with zeros
        return None
    try:
        recipient, amount = abi_decode(["address", "uint256"], data[4:], strict=True)
    except DecodingError:
        return None
    return bytes.fromhex(recipient[2:]), int(amount)
