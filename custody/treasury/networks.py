"""Which chains the treasury talks to, and the adapters for them. Configuration only
(from :class:`custody.settings.Settings`):

``CUSTODY_BITCOIN_RPC`` (``http://user:password@host:port``) with
``CUSTODY_BITCOIN_NETWORK`` (regtest), ``CUSTODY_ETHEREUM_RPC`` with
``CUSTODY_ETHEREUM_CHAIN_ID`` (31337), ``CUSTODY_SOLANA_RPC`` with
``CUSTODY_SOLANA_NETWORK`` (localnet), and ``CUSTODY_CONFIRMATIONS`` such as
``bitcoin=1,ethereum=1,solana=1`` (the depth at which a transfer counts as confirmed).
A chain without an endpoint has no wallets: asking for one is a clear error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from chains.base import Source
from chains.bitcoin.adapter import BitcoinAdapter
from chains.bitcoin.rpc import BitcoinRpc
from chains.ethereum.adapter import EthereumAdapter
from chains.ethereum.client import EthClient
from chains.ethereum.nonces import SqliteNonceStore
from chains.solana.adapter import SolanaAdapter
from chains.solana.client import SolanaRpcClient
from custody.errors import BadRequest
from custody.settings import Settings
from hsm_emulator.client import HsmClient

from .models import Wallet
from .planners import BitcoinPlanner, EthereumPlanner, Planner, SolanaPlanner

#: What a wallet's address is, per chain.
ADDRESS_KIND = {"bitcoin": "p2wpkh", "ethereum": "ethereum", "solana": "solana"}
DEFAULT_DEPTH = {"bitcoin": 1, "ethereum": 1, "solana": 1}


@dataclass(frozen=True)
class ChainEndpoints:
    bitcoin_rpc: str = ""
    bitcoin_network: str = "regtest"
    ethereum_rpc: str = ""
    ethereum_chain_id: int = 31337
    solana_rpc: str = ""
    solana_network: str = "localnet"
    confirmations: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_DEPTH))

    @classmethod
    def from_settings(cls, s: Settings) -> ChainEndpoints:
        depth = dict(DEFAULT_DEPTH)
        depth.update({c: n for c, n in s.confirmations.items() if c in depth})
        return cls(s.bitcoin_rpc, s.bitcoin_network, s.ethereum_rpc, s.ethereum_chain_id,
                   s.solana_rpc, s.solana_network, depth)

    def network_of(self, chain: str) -> str:
        return {"bitcoin": self.bitcoin_network, "ethereum": str(self.ethereum_chain_id),
                "solana": self.solana_network}.get(chain, "")

    def configured(self) -> list[str]:
        return [c for c, url in (("bitcoin", self.bitcoin_rpc), ("ethereum", self.ethereum_rpc),
                                 ("solana", self.solana_rpc)) if url]


class Networks:
    """Adapters and planners per chain, built once from the endpoints."""

    def __init__(self, endpoints: ChainEndpoints, hsm: HsmClient,
                 scratch: Path | None = None,
                 issued: Callable[[str], int] | None = None) -> None:
        self.endpoints = endpoints
        self.issued = issued or (lambda _label: 0)
        self.hsm = hsm
        self._scratch = scratch
        self._adapters: dict[str, object] = {}
        self._planners: dict[str, Planner] = {}

    def chains(self) -> list[str]:
        return self.endpoints.configured()

    def depth(self, chain: str) -> int:
        return self.endpoints.confirmations.get(chain, 1)

    def check(self, chain: str, network: str) -> None:
        if chain not in ADDRESS_KIND:
            raise BadRequest(f"chain must be one of {sorted(ADDRESS_KIND)}")
        if chain not in self.chains():
            raise BadRequest(f"no {chain} node is configured on this server")
        if network != self.endpoints.network_of(chain):
            raise BadRequest(f"this server's {chain} network is "
                             f"{self.endpoints.network_of(chain)!r}, not {network!r}")

    def adapter(self, chain: str) -> object:
        if chain not in self._adapters:
            self._adapters[chain] = self._build(chain)
        return self._adapters[chain]

    def planner(self, chain: str) -> Planner:
        if chain not in self._planners:
            adapter = self.adapter(chain)
            self._planners[chain] = (
                BitcoinPlanner(adapter) if isinstance(adapter, BitcoinAdapter) else
                EthereumPlanner(adapter) if isinstance(adapter, EthereumAdapter) else
                SolanaPlanner(adapter))  # type: ignore[arg-type]
        return self._planners[chain]

    def _build(self, chain: str) -> object:
        e = self.endpoints
        if chain not in self.chains():
            raise BadRequest(f"no {chain} node is configured on this server")
        if chain == "bitcoin":
            url, user, password = _split_credentials(e.bitcoin_rpc)
            return BitcoinAdapter(e.bitcoin_network, BitcoinRpc(url, user, password),
                                  self.hsm.public_key, confirmations=self.depth("bitcoin"),
                                  issued=self.issued)
        if chain == "ethereum":
            # the adapter's own nonce store is unused: the treasury allocates nonces in
            # the broker's database at release time (see planners.py)
            store = SqliteNonceStore(":memory:") if self._scratch is None else (
                SqliteNonceStore(self._scratch / "unused-nonces.sqlite"))
            return EthereumAdapter(e.ethereum_chain_id,
                                   EthClient(e.ethereum_rpc, expected_chain_id=e.ethereum_chain_id),
                                   store)
        return SolanaAdapter(e.solana_network, SolanaRpcClient(e.solana_rpc))

    def source(self, wallet: Wallet) -> Source:
        return Source(wallet.key_label, self.hsm.public_key(wallet.key_label), "",
                      wallet.address)


def _split_credentials(url: str) -> tuple[str, str, str]:
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    bare = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return bare, parts.username or "", parts.password or ""
