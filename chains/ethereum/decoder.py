"""The HSM's decoder for Ethereum transactions: ``ETHEREUM_TX:eip155:<chainId>``. Pure.

The payload is the *unsigned* serialization (see :mod:`chains.ethereum.tx`). The intent:

* plain ETH (``to`` set, empty calldata): ``TRANSFER`` of ``Transfer("ETH", value, to)``;
* exactly ``transfer(address,uint256)`` with value 0: ``TRANSFER`` of
  ``Transfer("ERC20:<lowercase token>", amount, recipient)``;
* anything else - other calldata, contract creation, ETH with calldata, ``approve``,
  ``transferFrom`` - a ``CONTRACT_CALL`` whose call is spelled out in ``details``.
  Amount tiers never release a contract call; any ETH it carries is still listed as a
  transfer so velocity limits count it.

``fee`` is the most the transaction can cost: ``gasLimit * maxFeePerGas`` (or
``gasPrice``), in wei.

One HSM key is one Ethereum account and the sign item's path is always ``""``: the
transaction names no sender (it is recovered from the signature), so a path could not
be proven from the payload, and nonces are per account. More accounts are more HSM keys
- ``Hsm.derive_key(parent, "0/<i>", label)`` keeps them in one family under one policy.
"""

from __future__ import annotations

from chains.errors import ChainDecodeError
from hsm_emulator.model import (
    Intent,
    IntentKind,
    KeyAlgorithm,
    KeyView,
    SignItem,
    SignScheme,
    Transfer,
)

from .encoding import address_of_public_key, checksum, keccak256
from .erc20 import decode_transfer
from .parse import decode_unsigned
from .tx import Eip1559Tx, EthTx, signing_hash

#: Calldata longer than this is shown by its keccak256 and length, not in full.
MAX_SHOWN_CALLDATA = 4096


def network_of(chain_id: int) -> str:
    """CAIP-2 style network name used across the project: ``eip155:<chainId>``."""
    return f"eip155:{chain_id}"


class EthereumTxDecoder:
    """Decodes unsigned type-2 and EIP-155 legacy transactions for one chain id."""

    def __init__(self, chain_id: int) -> None:
        if isinstance(chain_id, bool) or not isinstance(chain_id, int) or chain_id <= 0:
            raise ValueError("chain id must be a positive integer")
        self.chain_id = chain_id
        self.network = network_of(chain_id)
        self.payload_type = f"ETHEREUM_TX:{self.network}"

    def prepare(self, payload: bytes, owner: KeyView) -> tuple[Intent, tuple[SignItem, ...]]:
        tx = self._tx(payload, owner)
        sender = address_of_public_key(owner.public_key(""))
        item = SignItem(SignScheme.ECDSA_SECP256K1_DIGEST, signing_hash(tx))
        return intent_of(tx, self.network, sender), (item,)

    def decode(self, payload: bytes, owner: KeyView) -> Intent:
        return self.prepare(payload, owner)[0]

    def sign_items(self, payload: bytes, owner: KeyView) -> tuple[SignItem, ...]:
        return self.prepare(payload, owner)[1]

    def _tx(self, payload: bytes, owner: KeyView) -> EthTx:
        if owner.algorithm is not KeyAlgorithm.SECP256K1:
            raise ChainDecodeError("Ethereum transactions are signed by secp256k1 keys")
        tx = decode_unsigned(payload)
        if tx.chain_id != self.chain_id:
            raise ChainDecodeError(f"transaction is for chain id {tx.chain_id}, this decoder "
                                   f"signs for {self.chain_id} only")
        return tx


def intent_of(tx: EthTx, network: str, sender: str = "") -> Intent:
    """What ``tx`` does (see the module docstring for the three shapes)."""
    kind, transfers, call = _classify(tx)
    details = {**_fee_details(tx), **call, "nonce": str(tx.nonce)}
    if sender:
        details["from"] = sender
    return Intent(chain="ethereum", network=network, kind=kind, transfers=transfers,
                  fee=tx.max_fee, fee_asset="ETH", details=tuple(sorted(details.items())))


def _classify(tx: EthTx) -> tuple[IntentKind, tuple[Transfer, ...], dict[str, str]]:
    if tx.to and not tx.data:
        return IntentKind.TRANSFER, (Transfer("ETH", tx.value, checksum(tx.to)),), {}
    token_transfer = decode_transfer(tx.data) if tx.to and tx.value == 0 else None
    if token_transfer is not None:
        recipient, amount = token_transfer
        asset = "ERC20:0x" + tx.to.hex()
        return (IntentKind.TRANSFER, (Transfer(asset, amount, checksum(recipient)),),
                {"token": checksum(tx.to)})
    to = checksum(tx.to) if tx.to else ""
    transfers = (Transfer("ETH", tx.value, to),) if tx.value else ()
    return IntentKind.CONTRACT_CALL, transfers, _call_details(tx, to)


def _call_details(tx: EthTx, to: str) -> dict[str, str]:
    out = {"to": to or "(contract creation)", "value": str(tx.value),
           "dataLength": str(len(tx.data)), "selector": "0x" + tx.data[:4].hex()}
    if len(tx.data) <= MAX_SHOWN_CALLDATA:
        out["data"] = "0x" + tx.data.hex()
    else:
        out["dataKeccak256"] = "0x" + keccak256(tx.data).hex()
    return out


def _fee_details(tx: EthTx) -> dict[str, str]:
    if isinstance(tx, Eip1559Tx):
        out = {"type": "eip1559", "maxFeePerGas": str(tx.max_fee_per_gas),
               "maxPriorityFeePerGas": str(tx.max_priority_fee_per_gas)}
        if tx.access_list:
            out["accessListEntries"] = str(len(tx.access_list))
        return {**out, "gasLimit": str(tx.gas_limit)}
    return {"type": "legacy-eip155", "gasPrice": str(tx.gas_price),
            "gasLimit": str(tx.gas_limit)}
