"""What the kill loop sends on each chain: a *lane* is one asset of one wallet - Ether and
an ERC-20 on one Ethereum wallet (one nonce sequence for both), Bitcoin on a regtest
wallet, SOL on a Solana wallet - with its amounts per scenario, fresh destinations and
how to read a destination's balance from the chain.

Every wallet carries the treasury template with a real hold: ``large`` needs two traders
and compliance, then :data:`HOLD_SECONDS` (24 h) on the HSM's clock, which the loop lets
pass with :class:`~.hsmtime.HsmTime` once the approvals are in.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from solders.keypair import Keypair

from chains.bitcoin.addresses import script_to_address
from chains.ethereum.encoding import checksum
from chains.solana.client import SolanaRpcClient
from custody.localnets import ETH_CHAIN_ID, LocalNets

#: The large tier's hold: the production default, ended by moving the HSM's clock.
HOLD_SECONDS = 86_400
#: The template's longest timeouts: a request left open across many iterations' clock
#: moves (a day each) would expire, and show as a violation.
MEDIUM_TIMEOUT, LARGE_TIMEOUT = 30 * 86_400, 90 * 86_400
KINDS = ("small", "medium", "reject", "large")


@dataclass(frozen=True)
class Lane:
    """One asset of one wallet; ``amounts`` in base units, per scenario (lo, hi)."""

    name: str
    chain: str
    symbol: str
    decimals: int
    tier: dict[str, str]  #: the template's thresholds for this symbol
    amounts: dict[str, tuple[int, int]]
    quantum: int = 1  #: amounts are multiples of it (whole gwei, whole satoshi)

    def amount(self, kind: str, rng: random.Random) -> int:
        lo, hi = self.amounts["medium" if kind == "reject" else kind]
        return rng.randint(lo, hi) // self.quantum * self.quantum

    def text(self, units: int) -> str:
        whole, frac = divmod(units, 10**self.decimals)
        return f"{whole}.{frac:0{self.decimals}d}".rstrip("0").rstrip(".") if (
            self.decimals) else str(whole)

    def tier_of(self, units: int) -> str:
        """The token the template releases ``units`` under (its name)."""
        for name in ("small", "medium"):
            if units <= Decimal(self.tier[name]) * 10**self.decimals:
                return f"{name}-{self.symbol}"
        return f"large-{self.symbol}"

    def destination(self, rng: random.Random) -> str:
        if self.chain == "ethereum":
            return checksum(rng.getrandbits(160).to_bytes(20, "big"))
        if self.chain == "bitcoin":
            return script_to_address("regtest", b"\x00\x14" + rng.randbytes(20))
        return str(Keypair.from_seed(rng.randbytes(32)).pubkey())


E18, E8, E9, E6 = 10**18, 10**8, 10**9, 10**6
LANES: dict[str, Lane] = {
    "eth": Lane("eth", "ethereum", "ETH", 18, {"small": "0.1", "medium": "10", "max": "100"},
                {"small": (10**15, 9 * 10**16), "medium": (2 * 10**17, 9 * 10**17),
                 "large": (105 * 10**17, 12 * E18)}, quantum=10**9),
    "erc20": Lane("erc20", "ethereum", "TUSD", 6,
                  {"small": "100", "medium": "10000", "max": "100000"},
                  {"small": (E6, 99 * E6), "medium": (101 * E6, 9_999 * E6),
                   "large": (10_001 * E6, 20_000 * E6)}),
    "btc": Lane("btc", "bitcoin", "BTC", 8, {"small": "0.1", "medium": "1", "max": "10"},
                {"small": (10**5, 9 * 10**6), "medium": (11 * 10**6, 9 * 10**7),
                 "large": (11 * 10**7, 3 * E8)}),
    "sol": Lane("sol", "solana", "SOL", 9, {"small": "1", "medium": "10", "max": "100"},
                {"small": (10**7, 9 * 10**8), "medium": (11 * 10**8, 9 * E9),
                 "large": (11 * E9, 30 * E9)}),
}
#: What ``--chain`` accepts: a lane, or every lane.
CHOICES = (*LANES, "all")
NETWORK = {"ethereum": str(ETH_CHAIN_ID), "bitcoin": "regtest", "solana": "localnet"}
NATIVE = {"ethereum": "eth", "bitcoin": "btc", "solana": "sol"}  #: the lane of each native asset


def lanes_for(choice: str) -> list[Lane]:
    return list(LANES.values()) if choice == "all" else [LANES[choice]]


def chains_for(lanes: list[Lane]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(lane.chain for lane in lanes))


@dataclass
class Funding:
    """What was put in each wallet, for the balance invariants (base units by symbol)."""

    wallet: dict[str, Any]
    given: dict[str, int] = field(default_factory=dict)
    token: str = ""  #: the ERC-20 contract (Ethereum wallets)


def wallet_request(chain: str, lanes: list[Lane], people: dict[str, Any],
                   token: str = "") -> dict[str, Any]:
    """The ``POST /v1/wallets`` body for ``chain``'s wallet, tiers for its lanes."""
    mine = [lane for lane in LANES.values() if lane.chain == chain and (
        lane in lanes or lane.name == NATIVE[chain])]  # a wallet's tiers cover its native asset
    body: dict[str, Any] = {
        "name": f"{chain}-killloop", "chain": chain, "network": NETWORK[chain],
        "policy": {"traders": [people[n].entry() for n in ("t1", "t2", "t3")],
                   "compliance": [people["c1"].entry()],
                   "tiers": {lane.symbol: lane.tier for lane in mine},
                   "hold": HOLD_SECONDS, "mediumTimeout": MEDIUM_TIMEOUT,
                   "largeTimeout": LARGE_TIMEOUT}}
    if token:
        body["tokens"] = [{"symbol": "TUSD", "asset": "ERC20:" + token.lower(),
                           "decimals": 6}]
    return body


def fund(nets: LocalNets, chain: str, wallet: dict[str, Any], token: str) -> dict[str, int]:
    """Fund a new wallet from the local faucets; returns what each symbol received."""
    if chain == "ethereum":
        nets.fund_ether(wallet["address"], 5_000 * E18)
        given = {"ETH": 5_000 * E18}
        if token:
            nets.fund_token(token, wallet["address"], 10**12 * E6)
            given["TUSD"] = 10**12 * E6
        return given
    if chain == "bitcoin":
        blocks = 20  # 20 coins of 50 BTC: transfers in flight each hold their own
        nets.mine(blocks, wallet["address"])
        nets.mine(100)
        return {"BTC": 50 * E8 * blocks}
    nets.fund_sol(wallet["address"], 100_000 * E9)
    return {"SOL": 100_000 * E9}


def balance_reader(nets: LocalNets, lane: Lane, token: str) -> Callable[[str], int] | None:
    """A destination's balance of the lane's asset, from the node; None for Bitcoin (its
    checks read the blocks)."""
    if lane.chain == "ethereum":
        eth = nets.eth
        assert eth is not None
        if lane.symbol == "ETH":
            return eth.balance
        return lambda dest: eth.erc20_balance(token, dest)
    if lane.chain == "solana":
        assert nets.sol is not None
        client = SolanaRpcClient(nets.sol.url)
        return client.balance
    return None
