"""What the broker needs to know about a chain, declared once by the chain itself.

Each chain package has a ``spec.py`` with one :class:`ChainSpec`: its native asset, key
algorithm, address kind and deposit paths, default confirmation depth, default fee cap,
how its network is configured and named, which token assets it holds, and which
decoders the HSM registers for a network. :mod:`chains.specs` registers them, one line
per chain, keyed by :class:`~chains.base.Chain`. The broker reads the table and never
branches on a chain's name, as HWI's core never writes ``if device ==``.

Pure: no I/O. The HSM's entry point reads the decoders from here, so a spec never
imports its chain's node client or planner; it names the planner's module instead
(:attr:`ChainSpec.planner`), which only the broker loads (:mod:`chains.planning`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from hsm_emulator.decoding import KeyAlgorithm, PayloadDecoder

from .base import Chain


@dataclass(frozen=True)
class NativeAsset:
    """The asset that pays the chain's fees. ``asset`` is the id the decoder reports."""

    symbol: str
    asset: str
    decimals: int


@dataclass(frozen=True)
class TokenAssets:
    """Which token asset ids a wallet on the chain may hold (``ERC20:0x..``, ``SPL:..``)."""

    spelling: str  #: shown when one is refused: ``ERC20:<lower-case 0x address>``
    accepts: Callable[[object], bool]


class KeySource(Protocol):
    """The HSM's public side, as a chain needs it to name a wallet's addresses (the
    broker's ``HsmClient`` is one)."""

    def public_key(self, label: str, path: str = "") -> bytes: ...

    def address(self, label: str, kind: str, network: str, path: str = "") -> str: ...


#: ``(keys, label, network, path) -> address``: a wallet's deposit address at ``path``.
AddressOf = Callable[[KeySource, str, str, str], str]


@dataclass(frozen=True)
class ChainSpec:
    chain: Chain
    name: str  #: as people write it: "Bitcoin"
    native: NativeAsset
    key_algorithm: KeyAlgorithm  #: of the wallet's HSM key
    address_kind: str  #: the HSM's name for the wallet's address type
    address_of: AddressOf
    #: True: a fresh receive address per request (``0/<i>`` below the key, BIP44's last
    #: two levels; UTXO chains). False: the wallet is one account, the key's own address.
    fresh_addresses: bool
    default_depth: int  #: confirmations at which a transfer counts as confirmed
    fee_cap: str  #: the policy template's default ``maxFee``, in native units
    network_variable: str  #: the environment variable naming the broker's network
    default_network: str  #: its value when unset (the local test network)
    parse_network: Callable[[str], str]  #: the configured label, checked and normalised
    decoders: Callable[[str], list[PayloadDecoder]]  #: what the HSM registers per network
    networks: tuple[str, ...]  #: those the HSM decodes for by default, the local one first
    planner: str  #: module with ``connect(Connection) -> Planner``, loaded by the broker
    tokens: TokenAssets | None = None  #: None: the wallet holds the native asset only

    @property
    def rpc_variable(self) -> str:
        """The environment variable with the node's URL: ``CUSTODY_BITCOIN_RPC``."""
        return f"CUSTODY_{self.chain.value.upper()}_RPC"

    def deposit_path(self, index: int) -> str:
        """The path below the wallet key of its ``index``-th deposit address."""
        return f"0/{index}" if self.fresh_addresses else ""
