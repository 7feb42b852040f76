"""The chain table: every chain declares what the broker needs of it, in one place.

``chains/specs.py`` registers one :class:`~chains.spec.ChainSpec` per :class:`Chain`;
the broker derives its per-chain values from it (native assets, fee caps, networks,
deposit addresses, token spellings) and loads each chain's planner by the name the spec
gives. The values the broker used to hold as literals are pinned here, so moving them
changed nothing.
"""

from __future__ import annotations

import importlib
from typing import Any

import coincurve
import pytest
from solders.keypair import Keypair

from chains.base import Chain
from chains.bitcoin.adapter import BitcoinAdapter
from chains.errors import ChainError
from chains.planning import Planner
from chains.registry import DEFAULT_NETWORKS, decoders_for
from chains.specs import SPECS, find_spec, spec_of
from custody.errors import BadRequest
from custody.explain import DECIMALS
from custody.settings import Settings
from custody.treasury.networks import ChainEndpoints, default_depths
from custody.treasury.policy import FEE_CAPS, AssetInfo
from custody.treasury.wallets import NATIVE, token_assets
from hsm_emulator.decoding import KeyAlgorithm

pytestmark = pytest.mark.node

SECP = coincurve.PrivateKey(bytes(31) + b"\x05")
ED = Keypair.from_seed(bytes(31) + b"\x05")


class Keys:
    """A KeySource: one secp256k1 key per path, and the HSM's ``address`` call recorded."""

    def __init__(self, ed25519: bool = False) -> None:
        self.ed25519 = ed25519
        self.asked: list[tuple[str, ...]] = []

    def public_key(self, label: str, path: str = "") -> bytes:
        if self.ed25519:
            return bytes(ED.pubkey())
        tweak = sum(path.encode()) + 1
        return SECP.add(tweak.to_bytes(32, "big")).public_key.format(compressed=True)

    def address(self, label: str, kind: str, network: str, path: str = "") -> str:
        self.asked.append((label, kind, network, path))
        return "0xfrom-the-hsm"


def test_every_chain_has_exactly_one_spec() -> None:
    assert set(SPECS) == set(Chain)
    assert all(chain is spec.chain for chain, spec in SPECS.items())


def test_the_broker_values_are_the_ones_it_held_before() -> None:
    assert {"bitcoin": AssetInfo("BTC", "BTC", 8),
                      "ethereum": AssetInfo("ETH", "ETH", 18),
                      "solana": AssetInfo("SOL", "SOL", 9)} == NATIVE
    assert FEE_CAPS == {"BTC": "0.001", "ETH": "0.02", "SOL": "0.01"}
    assert DECIMALS == {"BTC": 8, "ETH": 18, "SOL": 9, "TST": 0}
    assert {c.value: s.address_kind for c, s in SPECS.items()} == {
        "bitcoin": "p2wpkh", "ethereum": "ethereum", "solana": "solana"}
    assert default_depths() == {"bitcoin": 1, "ethereum": 1, "solana": 1}
    assert {c.value: s.key_algorithm for c, s in SPECS.items()} == {
        "bitcoin": KeyAlgorithm.SECP256K1, "ethereum": KeyAlgorithm.SECP256K1,
        "solana": KeyAlgorithm.ED25519}
    assert DEFAULT_NETWORKS == ("bitcoin:regtest,bitcoin:mainnet,bitcoin:testnet,"
                                "bitcoin:signet,ethereum:31337,ethereum:1,ethereum:11155111,"
                                "solana:localnet,solana:mainnet,solana:devnet")


@pytest.mark.parametrize("chain", list(Chain))
def test_each_spec_names_a_planner_module_with_connect(chain: Chain) -> None:
    module = importlib.import_module(SPECS[chain].planner)
    assert callable(module.connect)
    planners = [v for v in vars(module).values()
                if isinstance(v, type) and v.__module__ == module.__name__
                and v.__name__.endswith("Planner")]
    assert len(planners) == 1
    for name in ("draft", "finalize", "assemble", "txid", "broadcast", "confirmation",
                 "known", "expired", "after_broadcast", "after_failure", "balance"):
        assert callable(getattr(planners[0], name)), name
        assert hasattr(Planner, name)


@pytest.mark.parametrize("chain", list(Chain))
def test_each_chains_decoders_come_from_its_spec(chain: Chain) -> None:
    spec = SPECS[chain]
    for network in spec.networks:
        decoders = decoders_for(f"{chain.value}:{network}")
        assert decoders and all(
            d.payload_type.split("_")[0].lower() == chain.value for d in decoders)
    with pytest.raises(ChainError, match="unknown chain in network entry"):
        decoders_for("dogecoin:mainnet")
    with pytest.raises(ChainError, match="chain ids"):
        decoders_for("ethereum:mainnet")


def test_unknown_chains_are_not_found() -> None:
    assert find_spec("bitcoin") is SPECS[Chain.BITCOIN]
    for other in ("Bitcoin", "", "dogecoin", None, ["bitcoin"], 3):
        assert find_spec(other) is None
    with pytest.raises(ChainError, match="unknown chain"):
        spec_of("dogecoin")


def test_deposit_paths_and_addresses() -> None:
    btc, eth, sol = (SPECS[c] for c in (Chain.BITCOIN, Chain.ETHEREUM, Chain.SOLANA))
    assert [btc.deposit_path(i) for i in (0, 7)] == ["0/0", "0/7"]
    assert eth.deposit_path(3) == sol.deposit_path(3) == ""
    keys = Keys()
    adapter = BitcoinAdapter("regtest", None, keys.public_key)  # type: ignore[arg-type]
    for path in ("0/0", "0/5"):  # the address the adapter scans for coins
        assert btc.address_of(keys, "w", "regtest", path) == adapter.address_at("w", path)
    assert eth.address_of(keys, "w", "31337", "") == "0xfrom-the-hsm"
    assert keys.asked == [("w", "ethereum", "mainnet", "")]  # as the broker asked before
    assert sol.address_of(Keys(ed25519=True), "w", "localnet", "") == str(ED.pubkey())


def test_token_spellings_come_from_the_spec() -> None:
    token = {"symbol": "USDC", "decimals": 6}
    assert token_assets("ethereum", [{**token, "asset": "ERC20:0x" + "ab" * 20}])
    mint = str(Keypair.from_seed(bytes(32)).pubkey())
    assert token_assets("solana", [{**token, "asset": f"SPL:{mint}"}])
    refused = {"ethereum": ("ERC20:0x" + "AB" * 20, "tokens[0].asset: ERC20:<lower-case 0x"),
               "solana": (f"SPL:{mint}x", "tokens[0].asset: SPL:<base58 mint address>"),
               "bitcoin": ("BTC2", "Bitcoin wallets hold BTC only")}
    for chain, (asset, message) in refused.items():
        with pytest.raises(BadRequest, match=message.replace("[", r"\[").replace("]", r"\]")):
            token_assets(chain, [{**token, "asset": asset}])


def test_endpoints_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for spec in SPECS.values():
        monkeypatch.delenv(spec.rpc_variable, raising=False)
        monkeypatch.delenv(spec.network_variable, raising=False)
    monkeypatch.setenv("CUSTODY_ETHEREUM_RPC", "http://eth")
    monkeypatch.setenv("CUSTODY_ETHEREUM_CHAIN_ID", "011155111")
    monkeypatch.setenv("CUSTODY_CONFIRMATIONS", "bitcoin=3,solana=0,dogecoin=9,ethereum=x")
    e = ChainEndpoints.from_settings(Settings())
    assert e.configured() == ["ethereum"]
    assert [e.network_of(c) for c in ("bitcoin", "ethereum", "solana", "dogecoin")] == [
        "regtest", "11155111", "localnet", ""]
    assert e.confirmations == {"bitcoin": 3, "ethereum": 1, "solana": 1}
    monkeypatch.setenv("CUSTODY_ETHEREUM_CHAIN_ID", "mainnet")
    with pytest.raises(ValueError):
        ChainEndpoints.from_settings(Settings())


def test_every_chain_variable_is_a_setting() -> None:
    s = Settings()
    for spec in SPECS.values():
        s.chain_value(spec.rpc_variable)
        s.chain_value(spec.network_variable)
    with pytest.raises(KeyError, match="CUSTODY_DOGECOIN_RPC is not a setting"):
        s.chain_value("CUSTODY_DOGECOIN_RPC")


def test_a_chain_without_a_node_has_no_planner() -> None:
    from custody.treasury.networks import Networks

    networks = Networks(ChainEndpoints({Chain.SOLANA: "http://127.0.0.1:9"}), _no_hsm())
    assert networks.chains() == ["solana"]
    with pytest.raises(BadRequest, match="no bitcoin node is configured"):
        networks.planner("bitcoin")
    with pytest.raises(BadRequest, match=r"chain must be one of \['bitcoin', 'ethereum', "
                                         r"'solana'\]"):
        networks.check("dogecoin", "x")
    planner = networks.planner("solana")
    assert networks.planner(Chain.SOLANA) is planner and networks.adapter("solana") is (
        planner.adapter)


def _no_hsm() -> Any:
    return object()
