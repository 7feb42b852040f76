"""Ethereum transactions the wallet signs: EIP-1559 (type 2) and legacy EIP-155. Pure.

* Unsigned serialization: type 2 is ``0x02 || rlp([chainId, nonce, maxPriorityFeePerGas,
  maxFeePerGas, gasLimit, to, value, data, accessList])`` (EIP-1559/EIP-2718); legacy is
  EIP-155's nine-element ``rlp([nonce, gasPrice, gasLimit, to, value, data, chainId, 0,
  0])``. Both carry the chain id, so the payload the HSM signs names its network.
* Signing hash: keccak256 of that serialization.
* Assembly from the HSM's 65-byte ``r || s || recovery_id``: type 2 appends
  ``yParity = recovery_id, r, s``; legacy replaces ``chainId, 0, 0`` with
  ``v = chainId * 2 + 35 + recovery_id, r, s`` (EIP-155).

EIP-1559: https://eips.ethereum.org/EIPS/eip-1559
EIP-155: https://eips.ethereum.org/EIPS/eip-155
EIP-2718: https://eips.ethereum.org/EIPS/eip-2718
EIP-2 (low S): https://eips.ethereum.org/EIPS/eip-2
"""

from __future__ import annotations

from dataclasses import dataclass

from chains.errors import BuildError

from .encoding import (
    AccessList,
    keccak256,
    rlp_access_list,
    rlp_bytes,
    rlp_int,
    rlp_list,
    rlp_list_body,
    strip_list_prefix,
)

#: secp256k1 group order; EIP-2 requires s <= N/2.
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HALF_N = SECP256K1_N // 2
UINT256 = 2**256
#: EIP-2681: nonces stay below 2**64 - 1; gas limits are 64-bit in every client.
NONCE_LIMIT = 2**64 - 1
GAS_LIMIT_MAX = 2**64
#: Chain ids the wallet accepts (positive, 64-bit; EIP-155 and EIP-2294's bound).
CHAIN_ID_MAX = 2**64 - 1
EIP1559_TYPE = 2


@dataclass(frozen=True)
class Eip1559Tx:
    """A type-2 transaction. ``to`` is 20 bytes, or empty for contract creation."""

    chain_id: int
    nonce: int
    max_priority_fee_per_gas: int
    max_fee_per_gas: int
    gas_limit: int
    to: bytes
    value: int
    data: bytes = b""
    access_list: AccessList = ()

    def __post_init__(self) -> None:
        _check_common(self.chain_id, self.nonce, self.gas_limit, self.to, self.value)
        _check_uint("max_fee_per_gas", self.max_fee_per_gas)
        _check_uint("max_priority_fee_per_gas", self.max_priority_fee_per_gas)
        if self.max_priority_fee_per_gas > self.max_fee_per_gas:
            raise BuildError("maxPriorityFeePerGas above maxFeePerGas (EIP-1559 rejects it)")
        _check_fee(self.gas_limit, self.max_fee_per_gas)
        for address, keys in self.access_list:
            if len(address) != 20 or any(len(k) != 32 for k in keys):
                raise BuildError("access list: 20-byte addresses and 32-byte storage keys")

    @property
    def max_fee(self) -> int:
        """The most this transaction can cost in fees: gasLimit * maxFeePerGas (wei)."""
        return self.gas_limit * self.max_fee_per_gas


@dataclass(frozen=True)
class LegacyTx:
    """A legacy transaction signed the EIP-155 way (chain id in the signing payload)."""

    chain_id: int
    nonce: int
    gas_price: int
    gas_limit: int
    to: bytes
    value: int
    data: bytes = b""

    def __post_init__(self) -> None:
        _check_common(self.chain_id, self.nonce, self.gas_limit, self.to, self.value)
        _check_uint("gas_price", self.gas_price)
        _check_fee(self.gas_limit, self.gas_price)

    @property
    def max_fee(self) -> int:
        """gasLimit * gasPrice (wei): what the transaction costs in fees at most."""
        return self.gas_limit * self.gas_price


EthTx = Eip1559Tx | LegacyTx


def _check_uint(name: str, value: int, limit: int = UINT256) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
        raise BuildError(f"{name} must be an integer in [0, {limit})")


def _check_common(chain_id: int, nonce: int, gas_limit: int, to: bytes, value: int) -> None:
    _check_uint("chain_id", chain_id, CHAIN_ID_MAX + 1)
    if chain_id == 0:
        raise BuildError("chain id 0 offers no replay protection")
    _check_uint("nonce", nonce, NONCE_LIMIT)
    _check_uint("gas_limit", gas_limit, GAS_LIMIT_MAX)
    _check_uint("value", value)
    if not isinstance(to, bytes) or len(to) not in (0, 20):
        raise BuildError("to must be 20 bytes (or empty for contract creation)")


def _check_fee(gas_limit: int, price: int) -> None:
    # ethereum/tests GasLimitPriceProductOverflow: the product must fit in 256 bits.
    if gas_limit * price >= UINT256:
        raise BuildError("gasLimit * fee per gas overflows 256 bits")


# ------------------------------------------------------------------------ serialize


def _eip1559_items(tx: Eip1559Tx) -> list[bytes]:
    return [rlp_int(tx.chain_id), rlp_int(tx.nonce), rlp_int(tx.max_priority_fee_per_gas),
            rlp_int(tx.max_fee_per_gas), rlp_int(tx.gas_limit), rlp_bytes(tx.to),
            rlp_int(tx.value), rlp_bytes(tx.data), rlp_access_list(tx.access_list)]


def _legacy_items(tx: LegacyTx) -> list[bytes]:
    return [rlp_int(tx.nonce), rlp_int(tx.gas_price), rlp_int(tx.gas_limit),
            rlp_bytes(tx.to), rlp_int(tx.value), rlp_bytes(tx.data)]


def serialize_unsigned(tx: EthTx) -> bytes:
    """The payload the HSM decodes and whose keccak it signs."""
    if isinstance(tx, Eip1559Tx):
        return bytes((EIP1559_TYPE,)) + rlp_list(_eip1559_items(tx))
    return rlp_list([*_legacy_items(tx), rlp_int(tx.chain_id), b"\x80", b"\x80"])


def signing_hash(tx: EthTx) -> bytes:
    """keccak256 of the unsigned serialization (EIP-1559 / EIP-155)."""
    return keccak256(serialize_unsigned(tx))


@dataclass(frozen=True)
class Signature:
    """An ECDSA signature split for Ethereum: ``recovery_id`` is yParity (0 or 1)."""

    r: int
    s: int
    recovery_id: int

    @classmethod
    def from_hsm(cls, signature: bytes) -> Signature:
        """The HSM's 65 bytes ``r || s || recovery_id``; refuses anything nodes reject."""
        if not isinstance(signature, bytes) or len(signature) != 65:
            raise BuildError("an ECDSA signature from the HSM is 65 bytes r||s||recid")
        sig = cls(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:64], "big"),
                  signature[64])
        sig.check()
        return sig

    def check(self) -> None:
        if not (0 < self.r < SECP256K1_N and 0 < self.s <= _HALF_N):
            raise BuildError("signature r/s out of range or high S (EIP-2)")
        if self.recovery_id not in (0, 1):
            raise BuildError("recovery id must be 0 or 1")

    def v(self, tx: EthTx) -> int:
        """yParity for type 2, ``chainId * 2 + 35 + recid`` for legacy (EIP-155)."""
        if isinstance(tx, Eip1559Tx):
            return self.recovery_id
        return tx.chain_id * 2 + 35 + self.recovery_id

    def to_bytes(self) -> bytes:
        return self.r.to_bytes(32, "big") + self.s.to_bytes(32, "big") + bytes(
            (self.recovery_id,))


def assemble(tx: EthTx, signature: bytes | Signature) -> bytes:
    """The signed raw transaction, as ``eth_sendRawTransaction`` takes it."""
    sig = signature if isinstance(signature, Signature) else Signature.from_hsm(signature)
    if isinstance(signature, Signature):
        sig.check()
    tail = rlp_int(sig.v(tx)) + rlp_int(sig.r) + rlp_int(sig.s)
    if isinstance(tx, Eip1559Tx):
        unsigned = serialize_unsigned(tx)
        return unsigned[:1] + rlp_list_body(strip_list_prefix(unsigned[1:]) + tail)
    return rlp_list_body(b"".join(_legacy_items(tx)) + tail)


def assemble_from_unsigned(tx: EthTx, unsigned: bytes, signature: bytes) -> bytes:
    """:func:`assemble` splicing into an already serialized ``unsigned`` (the fast path).

    ``unsigned`` must be ``serialize_unsigned(tx)``; saves re-encoding the fields. The
    same checks as :meth:`Signature.from_hsm`, inlined: this runs once per signature.
    """
    if len(signature) != 65:
        raise BuildError("an ECDSA signature from the HSM is 65 bytes r||s||recid")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    recid = signature[64]
    if not (0 < r < SECP256K1_N and 0 < s <= _HALF_N and recid < 2):
        raise BuildError("signature r/s out of range, high S (EIP-2) or bad recovery id")
    if isinstance(tx, Eip1559Tx):
        tail = rlp_int(recid) + rlp_int(r) + rlp_int(s)
        return unsigned[:1] + rlp_list_body(strip_list_prefix(unsigned[1:]) + tail)
    tail = rlp_int(tx.chain_id * 2 + 35 + recid) + rlp_int(r) + rlp_int(s)
    body = strip_list_prefix(unsigned)
    return rlp_list_body(body[:len(body) - len(rlp_int(tx.chain_id)) - 2] + tail)


def transaction_hash(raw: bytes) -> str:
    """The transaction id: keccak256 of the signed raw bytes, 0x-hex."""
    return "0x" + keccak256(raw).hex()
