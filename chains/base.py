"""One shape for every chain adapter.

An adapter turns a treasury desk's intent (send this amount of this asset to that
address) into an unsigned transaction the HSM can decode, check against the key's
policy and sign; assembles the signed transaction; and puts it on the chain.

Pure parts (address checks, building from a given chain state, decoding, sighash,
assembling) import no network module: the HSM imports the decoders. Node clients live
beside them and are the only place with I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from hsm_emulator.decoding import Intent, PayloadDecoder


class Chain(StrEnum):
    """The supported chains; the values are their names on the wire, in JSON and in the
    database. Each has one spec in :mod:`chains.specs` (a test checks)."""

    BITCOIN = "bitcoin"
    ETHEREUM = "ethereum"
    SOLANA = "solana"


@dataclass(frozen=True)
class TransferRequest:
    """What a desk asks for. ``amount`` in the asset's base units (sat, wei, lamports)."""

    asset: str
    amount: int
    destination: str
    fee_cap: int | None = None  #: the most the desk accepts to pay, in the fee asset
    memo: str = ""


@dataclass(frozen=True)
class Source:
    """The wallet key that pays: its HSM label, and public data needed to build."""

    label: str
    public_key: bytes  #: at ``path``
    path: str = ""  #: relative to the HSM key
    address: str = ""


@dataclass(frozen=True)
class UnsignedTx:
    """What goes to the HSM as a sign request's payload."""

    chain: Chain
    network: str
    payload_type: str  #: a type registered with the HSM's decoder registry
    payload: bytes
    intent: Intent  #: as the builder meant it; the HSM decodes its own and must agree
    fee_cap: int
    details: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Confirmation:
    txid: str
    confirmations: int
    block_hash: str | None = None
    included: bool = False


class ChainAdapter(Protocol):
    """Every chain's adapter. Building and assembling are pure given ``state``."""

    chain: Chain
    network: str

    def validate_address(self, address: str) -> str:
        """Normalised address or :class:`chains.errors.InvalidAddress` (wrong network too)."""
        ...

    def decoders(self) -> Sequence[PayloadDecoder]:
        """The decoders the HSM registers for this chain and network."""
        ...

    def build_transfer(self, source: Source, request: TransferRequest) -> UnsignedTx:
        """Fetch what is needed (UTXOs, nonce, fees, blockhash) and build. I/O."""
        ...

    def assemble(self, unsigned: UnsignedTx, signatures: Sequence[bytes]) -> bytes:
        """The raw signed transaction from the HSM's signatures. Pure."""
        ...

    def broadcast(self, raw: bytes) -> str:
        """Send; return the transaction id. Idempotent for the same raw bytes."""
        ...

    def confirmation(self, txid: str) -> Confirmation:
        ...

    def estimate_fee(self) -> int:
        """A fee rate in the chain's unit (sat/vB, wei per gas, lamports per signature)."""
        ...
