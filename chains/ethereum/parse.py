"""Decode raw Ethereum transactions - signed or unsigned, type 2 or legacy. Pure.

pyrlp's strict decoder does the RLP (non-canonical lengths and trailing bytes are
refused) and its sedes type each field: integers with leading zero bytes, addresses of
the wrong size or a wrong element count are refused - the cases ethereum/tests'
TransactionTests pin down (``RLP_LEADING_ZEROS_*``, ``INVALID_CHAINID``...). Every
failure is :class:`chains.errors.ChainDecodeError`; nothing partial is returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import coincurve
import rlp
from rlp.sedes import (
    Binary,
    CountableList,
    List,
    big_endian_int,
    binary,
)

from chains.errors import BuildError, ChainDecodeError

from .encoding import address_of_public_key, keccak256
from .tx import EIP1559_TYPE, Eip1559Tx, EthTx, LegacyTx, Signature, signing_hash

_ADDRESS_OR_EMPTY = Binary.fixed_length(20, allow_empty=True)
_ACCESS_LIST = CountableList(List([Binary.fixed_length(20),
                                   CountableList(Binary.fixed_length(32))]))
_EIP1559_FIELDS = [big_endian_int] * 5 + [_ADDRESS_OR_EMPTY, big_endian_int, binary,
                                          _ACCESS_LIST]
_EIP1559_SIGNED_COUNT = 12
_EIP1559_UNSIGNED = List(_EIP1559_FIELDS, strict=True)
_EIP1559_SIGNED = List(_EIP1559_FIELDS + [big_endian_int] * 3, strict=True)
_LEGACY = List([big_endian_int] * 3 + [_ADDRESS_OR_EMPTY, big_endian_int, binary]
               + [big_endian_int] * 3, strict=True)
#: Legacy transactions are RLP lists (first byte >= 0xc0); EIP-2718 types are 0x00-0x7f.
_LIST_START = 0xC0


@dataclass(frozen=True)
class DecodedTx:
    """A decoded transaction and, if it was signed, its signature."""

    tx: EthTx
    signature: Signature | None

    def sender(self) -> str:
        """The signer's checksummed address, recovered from the signature."""
        if self.signature is None:
            raise ChainDecodeError("an unsigned transaction has no sender")
        try:
            key = coincurve.PublicKey.from_signature_and_message(
                self.signature.to_bytes(), signing_hash(self.tx), hasher=None)
        except ValueError as exc:
            raise ChainDecodeError(f"signature does not recover a key: {exc}") from None
        return address_of_public_key(key.format())


def decode(raw: bytes) -> DecodedTx:
    """A signed or unsigned type-2 or EIP-155 legacy transaction, fully checked."""
    if not isinstance(raw, bytes) or not raw:
        raise ChainDecodeError("empty transaction")
    try:
        if raw[0] == EIP1559_TYPE:
            return _decode_eip1559(raw[1:])
        if raw[0] >= _LIST_START:
            return _decode_legacy(raw)
    except BuildError as exc:
        raise ChainDecodeError(f"invalid transaction: {exc.reason}") from None
    except rlp.exceptions.RLPException as exc:
        raise ChainDecodeError(f"malformed transaction: {exc}") from None
    raise ChainDecodeError(f"unsupported transaction type {raw[0]:#04x}")


def decode_unsigned(payload: bytes) -> EthTx:
    """An unsigned serialization (what the HSM is asked to sign); a signed one is refused."""
    decoded = decode(payload)
    if decoded.signature is not None:
        raise ChainDecodeError("expected an unsigned transaction, got a signed one")
    return decoded.tx


def _items(body: bytes) -> list[Any]:
    items = rlp.decode(body, strict=True)
    if not isinstance(items, list):
        raise ChainDecodeError("a transaction is an RLP list")
    return items


def _decode_eip1559(body: bytes) -> DecodedTx:
    items = _items(body)
    signed = len(items) == _EIP1559_SIGNED_COUNT
    fields = (_EIP1559_SIGNED if signed else _EIP1559_UNSIGNED).deserialize(items)
    (chain_id, nonce, tip, fee_cap, gas, to, value, data, access) = fields[:9]
    tx = Eip1559Tx(chain_id, nonce, tip, fee_cap, gas, to, value, data,
                   tuple((a, tuple(keys)) for a, keys in access))
    if not signed:
        return DecodedTx(tx, None)
    y_parity, r, s = fields[9:]
    return DecodedTx(tx, _signature(r, s, y_parity))


def _decode_legacy(raw: bytes) -> DecodedTx:
    nonce, price, gas, to, value, data, v, r, s = _LEGACY.deserialize(_items(raw))
    if r == 0 and s == 0:  # EIP-155 signing form: v holds the chain id
        return DecodedTx(LegacyTx(v, nonce, price, gas, to, value, data), None)
    if v < 35:
        raise ChainDecodeError(f"v={v}: not an EIP-155 signature (no chain id); refused")
    chain_id, recovery_id = divmod(v - 35, 2)
    tx = LegacyTx(chain_id, nonce, price, gas, to, value, data)
    return DecodedTx(tx, _signature(r, s, recovery_id))


def _signature(r: int, s: int, recovery_id: int) -> Signature:
    sig = Signature(r, s, recovery_id)
    try:
        sig.check()
    except BuildError as exc:
        raise ChainDecodeError(exc.reason) from None
    return sig


def tx_hash(raw: bytes) -> str:
    """0x-hex keccak256 of the raw signed bytes (the id nodes and explorers use)."""
    return "0x" + keccak256(raw).hex()
