"""Bitcoin as the broker sees it (:class:`~chains.spec.ChainSpec`). Pure."""

from __future__ import annotations

from hsm_emulator.decoding import KeyAlgorithm, PayloadDecoder

from ..base import Chain
from ..spec import ChainSpec, KeySource, NativeAsset
from .addresses import script_to_address
from .decoder import BitcoinPsbtDecoder
from .scripts import p2wpkh_script


def _decoders(network: str) -> list[PayloadDecoder]:
    return [BitcoinPsbtDecoder(network)]


def _address(keys: KeySource, label: str, network: str, path: str) -> str:
    """The P2WPKH address of the wallet key at ``path`` (what the adapter scans)."""
    return script_to_address(network, p2wpkh_script(keys.public_key(label, path)))


SPEC = ChainSpec(
    chain=Chain.BITCOIN, name="Bitcoin", native=NativeAsset("BTC", "BTC", 8),
    key_algorithm=KeyAlgorithm.SECP256K1, address_kind="p2wpkh", address_of=_address,
    fresh_addresses=True, default_depth=1,
    #: about 50x a busy day's fee: a 1-in 2-out P2WPKH payment at 500 sat/vB is ~0.0007 BTC
    fee_cap="0.001",
    network_variable="CUSTODY_BITCOIN_NETWORK", default_network="regtest", parse_network=str,
    decoders=_decoders,
    networks=("regtest", "mainnet", "testnet", "signet"), planner="chains.bitcoin.planner")
