"""Ethereum as the broker sees it (:class:`~chains.spec.ChainSpec`). Pure.

The network is a chain id (``CUSTODY_ETHEREUM_CHAIN_ID``): ``31337`` (anvil), ``1``.
"""

from __future__ import annotations

import re

from hsm_emulator.decoding import KeyAlgorithm, PayloadDecoder

from ..base import Chain
from ..errors import ChainError
from ..spec import ChainSpec, KeySource, NativeAsset, TokenAssets
from .decoder import EthereumTxDecoder
from .eip712 import Eip712Decoder

_ERC20 = re.compile(r"^ERC20:0x[0-9a-f]{40}$")


def _decoders(network: str) -> list[PayloadDecoder]:
    if not network.isdigit():
        raise ChainError(f"ethereum networks are chain ids, not {network!r}")
    return [EthereumTxDecoder(int(network)), Eip712Decoder(int(network))]


def _address(keys: KeySource, label: str, network: str, path: str) -> str:
    """The account's EIP-55 address, as the HSM derives it (the same on every chain id)."""
    return keys.address(label, "ethereum", "mainnet", path)


def _chain_id(text: str) -> str:
    return str(int(text))


def _erc20(asset: object) -> bool:
    return isinstance(asset, str) and _ERC20.match(asset) is not None


SPEC = ChainSpec(
    chain=Chain.ETHEREUM, name="Ethereum", native=NativeAsset("ETH", "ETH", 18),
    key_algorithm=KeyAlgorithm.SECP256K1, address_kind="ethereum", address_of=_address,
    fresh_addresses=False, default_depth=1,
    #: about 50x a busy day's fee: an ERC-20 transfer's 65,000 gas at 150 gwei is ~0.01 ETH
    fee_cap="0.02",
    network_variable="CUSTODY_ETHEREUM_CHAIN_ID", default_network="31337",
    parse_network=_chain_id, decoders=_decoders,
    networks=("31337", "1", "11155111"), planner="chains.ethereum.planner",
    tokens=TokenAssets("ERC20:<lower-case 0x address>", _erc20))
