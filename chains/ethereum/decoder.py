"""The HSM's decoder for Ethereum transactions: ``ETHEREUM_TX:eip155:<chainId>``. Pure.

The payload is the *unsigned* serialization (see :mod:`chains.ethereum.tx`). The intent
(value-complete for ``TRANSFER`` and ``GRANT``, ``ARCHITECTURE.md``):

==========================================  =============  ==============================
payload (``to``, ``value``, calldata)       kind           transfers / grants / calls
==========================================  =============  ==============================
``to`` set, no calldata                     TRANSFER       ``Transfer("ETH", value, to)``
token, value 0, exactly ``transfer(r, n)``  TRANSFER       ``Transfer("ERC20:0x<token>",
                                                           n, r)``
token, value 0, exactly ``approve(s, n)``   GRANT          ``Grant("ERC20:0x<token>", n,
or ``increaseAllowance(s, n)``                             s)``
anything else: other or non-canonical       CONTRACT_CALL  ``calls=(to,)`` or
calldata (a trailing byte, dirty address                   ``("(contract creation)",)``;
padding), ``transferFrom``, ETH with                       ETH ``value`` as a transfer;
calldata, contract creation                                what a recognised selector
                                                           would still do (see
                                                           :func:`chains.ethereum.erc20.
                                                           lenient_call`)
==========================================  =============  ==============================

"Exactly" is 4 + 32 + 32 bytes of calldata, the address word's upper 12 bytes zero, no
ETH value. Addresses are EIP-55, token assets ``ERC20:0x`` + the lower-case token.
Nothing that moves tokens decodes to a value-less non-opaque intent: a recognised
selector is either read exactly (TRANSFER / GRANT) or left opaque (CONTRACT_CALL, which
a conditioned token releases only if it names ``contract_call``), and even then its
transfers, grants and called contract are listed, so allowlists and velocity see them.

``fee`` is the most the transaction can cost in wei, ``gasLimit x maxFeePerGas`` for
type 2 and ``gasLimit x gasPrice`` for legacy: the runtime charges ``gasUsed x
effectiveGasPrice`` with ``gasUsed <= gasLimit`` and ``effectiveGasPrice = min(maxFeePerGas,
baseFee + maxPriorityFeePerGas) <= maxFeePerGas`` (EIP-1559; a priority fee above the
fee cap is refused when decoding), or ``gasPrice`` itself for legacy. That bound holds on
Ethereum (L1) and its test networks; rollups that add an L1 data fee outside these
fields (OP stack, Arbitrum...) must not be configured. ``rent`` is always 0.

One HSM key is one Ethereum account and the sign item's path is always ``""``: the
transaction names no sender (it is recovered from the signature), so a path could not
be proven from the payload, and nonces are per account. More accounts are more HSM keys
- ``Hsm.derive_key(parent, "0/<i>", label)`` keeps them in one family under one policy.
"""

from __future__ import annotations

from chains.errors import ChainDecodeError, refused
from hsm_emulator.decoding import (
    Grant,
    Intent,
    IntentKind,
    KeyAlgorithm,
    KeyView,
    SignItem,
    SignScheme,
    Transfer,
)

from .encoding import address_of_public_key, checksum, keccak256
from .erc20 import FUNCTIONS, OTHER_FUNCTIONS, TokenCall, decode_call, lenient_call
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
        """The intent and the digest to sign. Refusals are :class:`DecodeError` only."""
        try:
            return self._prepare(payload, owner)
        except ChainDecodeError as exc:
            raise refused(self.payload_type, exc) from None

    def _prepare(self, payload: bytes, owner: KeyView) -> tuple[Intent, tuple[SignItem, ...]]:
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


#: What ``calls`` and a transfer's destination say for a transaction without ``to``.
CONTRACT_CREATION = "(contract creation)"


def intent_of(tx: EthTx, network: str, sender: str = "") -> Intent:
    """What ``tx`` does (see the module docstring's table)."""
    kind, transfers, grants, calls, call = _classify(tx)
    details = {**_fee_details(tx), **call, "nonce": str(tx.nonce)}
    if sender:
        details["from"] = sender
    return Intent(chain="ethereum", network=network, kind=kind, transfers=transfers,
                  fee=tx.max_fee, fee_asset="ETH", details=tuple(sorted(details.items())),
                  grants=grants, calls=calls)


def _token_asset(token: bytes) -> str:
    return "ERC20:0x" + token.hex()


def _effects(token: bytes, call: TokenCall) -> tuple[tuple[Transfer, ...], tuple[Grant, ...]]:
    party = checksum(call.party)
    if call.grants:
        return (), (Grant(_token_asset(token), call.amount, party),)
    return (Transfer(_token_asset(token), call.amount, party),), ()


def _classify(tx: EthTx) -> tuple[IntentKind, tuple[Transfer, ...], tuple[Grant, ...],
                                  tuple[str, ...], dict[str, str]]:
    if tx.to and not tx.data:
        return IntentKind.TRANSFER, (Transfer("ETH", tx.value, checksum(tx.to)),), (), (), {}
    exact = decode_call(tx.data) if tx.to and tx.value == 0 else None
    if exact is not None:
        transfers, grants = _effects(tx.to, exact)
        kind = IntentKind.GRANT if exact.grants else IntentKind.TRANSFER
        return kind, transfers, grants, (), {"token": checksum(tx.to),
                                             "function": exact.function}
    # Opaque. What it still visibly moves is listed: attached ETH, and what a recognised
    # but non-canonical token call executes as - so velocity and allowlists count them.
    to = checksum(tx.to) if tx.to else CONTRACT_CREATION
    attached = (Transfer("ETH", tx.value, to),) if tx.value else ()
    lenient = lenient_call(tx.data) if tx.to else None
    token_transfers, token_grants = _effects(tx.to, lenient) if lenient else ((), ())
    return (IntentKind.CONTRACT_CALL, attached + token_transfers, token_grants, (to,),
            _call_details(tx, to))


def _call_details(tx: EthTx, to: str) -> dict[str, str]:
    out = {"to": to, "value": str(tx.value),
           "dataLength": str(len(tx.data)), "selector": "0x" + tx.data[:4].hex()}
    function = FUNCTIONS.get(tx.data[:4]) or OTHER_FUNCTIONS.get(tx.data[:4])
    if function is not None:
        out["function"] = function
        if tx.data[:4] in FUNCTIONS:
            out["note"] = ("not the exact ERC-20 shape (68 bytes of calldata, clean address "
                           "padding, no ETH): an opaque call; its token effect is listed")
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
