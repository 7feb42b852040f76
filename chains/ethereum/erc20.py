"""ERC-20 calldata: encode, and recognise the value-moving calls exactly. Pure.

Exactly three calls are read by the HSM, each only in its exact canonical ABI shape - the
4-byte selector followed by two 32-byte words, 68 bytes in all, the address word's upper
12 bytes zero:

* ``transfer(address to, uint256 amount)`` (``a9059cbb``): moves ``amount`` now;
* ``approve(address spender, uint256 amount)`` (``095ea7b3``): lets ``spender`` move up to
  ``amount`` later (it *sets* the allowance);
* ``increaseAllowance(address spender, uint256 added)`` (``39509351``, OpenZeppelin):
  lets ``spender`` move ``added`` more later.

Anything else - a trailing byte, dirty address padding, ``transferFrom``,
``decreaseAllowance``, any other selector - is not recognised (:func:`decode_call`
returns None) and the decoder reports an opaque contract call. Solidity's decoder
ignores trailing calldata and ABI coder v1 masks a dirty address word, so such calldata
*does* move tokens on chain: :func:`lenient_call` reads it the way such a token would, so
the decoder can still list its effect on the (opaque) contract call - limits only get
stricter, nothing is released by it.

ERC-20: https://eips.ethereum.org/EIPS/eip-20
ABI encoding: https://docs.soliditylang.org/en/latest/abi-spec.html
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from eth_abi.abi import encode as abi_encode

from .encoding import keccak256

#: keccak256("transfer(address,uint256)")[:4]
TRANSFER_SELECTOR: Final = keccak256(b"transfer(address,uint256)")[:4]
#: keccak256("approve(address,uint256)")[:4]
APPROVE_SELECTOR: Final = keccak256(b"approve(address,uint256)")[:4]
#: keccak256("increaseAllowance(address,uint256)")[:4] (OpenZeppelin's extension)
INCREASE_ALLOWANCE_SELECTOR: Final = keccak256(b"increaseAllowance(address,uint256)")[:4]
#: keccak256("transferFrom(address,address,uint256)")[:4]: never read, always opaque
TRANSFER_FROM_SELECTOR: Final = keccak256(b"transferFrom(address,address,uint256)")[:4]
#: keccak256("balanceOf(address)")[:4]
BALANCE_OF_SELECTOR: Final = keccak256(b"balanceOf(address)")[:4]
CALL_LENGTH: Final = 4 + 32 + 32

#: The recognised functions by selector: what each is called, and whether it grants.
FUNCTIONS: Final = {
    TRANSFER_SELECTOR: "transfer",
    APPROVE_SELECTOR: "approve",
    INCREASE_ALLOWANCE_SELECTOR: "increaseAllowance",
}
#: Names shown for known selectors the decoder never reads (still opaque calls).
OTHER_FUNCTIONS: Final = {
    TRANSFER_FROM_SELECTOR: "transferFrom",
    keccak256(b"decreaseAllowance(address,uint256)")[:4]: "decreaseAllowance",
    keccak256(b"permit(address,address,uint256,uint256,uint8,bytes32,bytes32)")[:4]: "permit",
}


@dataclass(frozen=True)
class TokenCall:
    """A recognised ERC-20 call: ``function`` is ``transfer``, ``approve`` or
    ``increaseAllowance``; ``party`` the recipient or spender (20 bytes)."""

    function: str
    party: bytes
    amount: int

    @property
    def grants(self) -> bool:
        return self.function != "transfer"


def encode_transfer(recipient: bytes, amount: int) -> bytes:
    """Calldata for ``transfer(recipient, amount)``."""
    return TRANSFER_SELECTOR + abi_encode(["address", "uint256"], [recipient, amount])


def encode_approve(spender: bytes, amount: int) -> bytes:
    """Calldata for ``approve(spender, amount)``."""
    return APPROVE_SELECTOR + abi_encode(["address", "uint256"], [spender, amount])


def encode_balance_of(owner: bytes) -> bytes:
    return BALANCE_OF_SELECTOR + abi_encode(["address"], [owner])


def decode_call(data: bytes) -> TokenCall | None:
    """The call if ``data`` is *exactly* a canonical ``transfer``, ``approve`` or
    ``increaseAllowance``, else None (the caller then treats it as opaque)."""
    function = FUNCTIONS.get(data[:4])
    if function is None or len(data) != CALL_LENGTH or any(data[4:16]):
        return None
    return TokenCall(function, data[16:36], int.from_bytes(data[36:68], "big"))


def lenient_call(data: bytes) -> TokenCall | None:
    """What a token would execute for calldata with a recognised selector that is *not*
    canonical (trailing bytes, dirty address padding): the low 20 bytes of the first
    word, the second word. For listing on an opaque call only - never a reason to sign."""
    function = FUNCTIONS.get(data[:4])
    if function is None or len(data) < CALL_LENGTH:
        return None
    return TokenCall(function, data[16:36], int.from_bytes(data[36:68], "big"))


def decode_transfer(data: bytes) -> tuple[bytes, int] | None:
    """``(recipient bytes, amount)`` if ``data`` is exactly an ERC-20 transfer, else None."""
    call = decode_call(data)
    if call is None or call.function != "transfer":
        return None
    return call.party, call.amount
