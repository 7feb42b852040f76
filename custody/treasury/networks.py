"""Which chains the treasury talks to, and their planners. Configuration only (from
:class:`custody.settings.Settings`, which names each chain spec's variables).

Per chain (its :class:`~chains.spec.ChainSpec`), ``CUSTODY_<CHAIN>_RPC`` names the node
(``CUSTODY_BITCOIN_RPC=http://user:password@host:port``) and the spec's network
variable its network (``CUSTODY_BITCOIN_NETWORK``, regtest; ``CUSTODY_ETHEREUM_CHAIN_ID``,
31337; ``CUSTODY_SOLANA_NETWORK``, localnet); ``CUSTODY_CONFIRMATIONS`` such as
``bitcoin=1,ethereum=1,solana=1`` sets the depth at which a transfer counts as confirmed.
A chain without an endpoint has no wallets: asking for one is a clear error.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from chains.base import Source
from chains.planning import Connection, Planner, connect
from chains.specs import SPECS, find_spec, spec_of
from custody.errors import BadRequest
from custody.settings import Settings
from hsm_emulator.client import HsmClient

from .models import Wallet
from .reservations import SqlLedger


def default_depths() -> dict[str, int]:
    """Each chain's default confirmation depth, by chain name."""
    return {chain.value: spec.default_depth for chain, spec in SPECS.items()}


@dataclass(frozen=True)
class ChainEndpoints:
    """Per chain: its node's URL (none: the chain is not served) and network label."""

    rpc: Mapping[str, str] = field(default_factory=dict)  #: by :class:`Chain`
    networks: Mapping[str, str] = field(default_factory=dict)  #: unset: the spec's default
    confirmations: dict[str, int] = field(default_factory=default_depths)

    @classmethod
    def from_settings(cls, s: Settings) -> ChainEndpoints:
        depth = default_depths()
        depth.update({c: max(1, n) for c, n in s.confirmations.items() if c in depth})
        rpc = {c: str(s.chain_value(spec.rpc_variable)) for c, spec in SPECS.items()}
        return cls({c: url for c, url in rpc.items() if url},
                   {c: spec.parse_network(str(s.chain_value(spec.network_variable)))
                    for c, spec in SPECS.items()}, depth)

    def network_of(self, chain: str) -> str:
        if chain in self.networks:
            return self.networks[chain]
        spec = find_spec(chain)
        return "" if spec is None else spec.default_network

    def configured(self) -> list[str]:
        return [c.value for c in SPECS if self.rpc.get(c)]


class PublicKeys:
    """The HSM's public keys by label and path, each asked once per process (a transfer
    asked for its wallet's key twice, and a Bitcoin draft for every scanned path). A
    key's public half at a path does not change while the key lives; if a label were made
    again for another key, what was built with the stale one would name the wrong sender
    or change script, which the HSM's decoders refuse - it could not be signed."""

    #: (label, path) pairs kept; a Bitcoin wallet scans its issued paths plus gaps.
    SIZE = 100_000

    def __init__(self, hsm: HsmClient) -> None:
        self.hsm = hsm
        self._asked = functools.lru_cache(maxsize=self.SIZE)(self._ask)

    def _ask(self, label: str, path: str) -> bytes:
        return self.hsm.public_key(label, path)

    def public_key(self, label: str, path: str = "") -> bytes:
        return self._asked(label, path)

    def address(self, label: str, kind: str, network: str, path: str = "") -> str:
        return self.hsm.address(label, kind, network, path)


class Networks:
    """Planners (and their adapters) per chain, built once from the endpoints."""

    def __init__(self, endpoints: ChainEndpoints, hsm: HsmClient,
                 scratch: Path | None = None,
                 issued: Callable[[str], int] | None = None) -> None:
        self.endpoints = endpoints
        self.issued = issued or (lambda _label: 0)
        self.hsm = hsm
        self.keys = PublicKeys(hsm)
        self._scratch = scratch
        self._ledger = SqlLedger()
        self._planners: dict[str, Planner] = {}

    def chains(self) -> list[str]:
        return self.endpoints.configured()

    def depth(self, chain: str) -> int:
        return self.endpoints.confirmations.get(chain, 1)

    def check(self, chain: str, network: str) -> None:
        if find_spec(chain) is None:
            raise BadRequest(f"chain must be one of {sorted(c.value for c in SPECS)}")
        if chain not in self.chains():
            raise BadRequest(f"no {chain} node is configured on this server")
        if network != self.endpoints.network_of(chain):
            raise BadRequest(f"this server's {chain} network is "
                             f"{self.endpoints.network_of(chain)!r}, not {network!r}")

    def adapter(self, chain: str) -> object:
        return self.planner(chain).adapter

    def planner(self, chain: str) -> Planner:
        if chain not in self._planners:
            if chain not in self.chains():
                raise BadRequest(f"no {chain} node is configured on this server")
            spec = spec_of(chain)
            self._planners[chain] = connect(spec, Connection(
                self.endpoints.rpc[chain], self.endpoints.network_of(chain),
                self.depth(chain), self.keys, self._ledger,
                self._issued, self._scratch))
        return self._planners[chain]

    def _issued(self, label: str) -> int:
        """Read late: the treasury sets :attr:`issued` after the networks are made."""
        return self.issued(label)

    def source(self, wallet: Wallet) -> Source:
        return Source(wallet.key_label, self.keys.public_key(wallet.key_label), "",
                      wallet.address)
