"""Solana as the broker sees it (:class:`~chains.spec.ChainSpec`). Pure."""

from __future__ import annotations

from solders.pubkey import Pubkey

from hsm_emulator.decoding import KeyAlgorithm, PayloadDecoder

from ..base import Chain
from ..spec import ChainSpec, KeySource, NativeAsset, TokenAssets
from .decoder import SolanaTxDecoder


def _decoders(network: str) -> list[PayloadDecoder]:
    return [SolanaTxDecoder(network)]


def _address(keys: KeySource, label: str, network: str, path: str) -> str:
    """The account: the wallet's Ed25519 public key, base58."""
    return str(Pubkey.from_bytes(keys.public_key(label, path)))


def _spl(asset: object) -> bool:
    """``SPL:<mint>``, the mint in its one canonical base58 spelling."""
    if not isinstance(asset, str) or not asset.startswith("SPL:"):
        return False
    try:
        return str(Pubkey.from_string(asset[4:])) == asset[4:]
    except ValueError:
        return False


SPEC = ChainSpec(
    chain=Chain.SOLANA, name="Solana", native=NativeAsset("SOL", "SOL", 9),
    key_algorithm=KeyAlgorithm.ED25519, address_kind="solana", address_of=_address,
    fresh_addresses=False, default_depth=1,
    #: a priority fee plus a token account's 0.00204 SOL rent, with room
    fee_cap="0.01",
    network_variable="CUSTODY_SOLANA_NETWORK", default_network="localnet", parse_network=str,
    decoders=_decoders,
    networks=("localnet", "mainnet", "devnet"), planner="chains.solana.planner",
    tokens=TokenAssets("SPL:<base58 mint address>", _spl))
