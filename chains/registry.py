"""Which decoders an HSM registers: the composition point between chains and the HSM.

The HSM imports the chains' pure decoders (never their node clients). Networks are
configuration: ``CUSTODY_NETWORKS`` is a comma-separated list such as
``bitcoin:regtest,ethereum:31337,solana:localnet``; the default covers the local test
networks and the main networks.
"""

from __future__ import annotations

import os

from hsm_emulator.decoding import (
    DecoderRegistry,
    JsonTransferDecoder,
    PayloadDecoder,
    test_decoder_enabled,
)

from .bitcoin.decoder import BitcoinPsbtDecoder
from .errors import ChainError
from .ethereum.decoder import EthereumTxDecoder
from .ethereum.eip712 import Eip712Decoder
from .solana.decoder import SolanaTxDecoder

DEFAULT_NETWORKS = ("bitcoin:regtest,bitcoin:mainnet,bitcoin:testnet,bitcoin:signet,"
                    "ethereum:31337,ethereum:1,ethereum:11155111,"
                    "solana:localnet,solana:mainnet,solana:devnet")


def decoders_for(network: str) -> list[PayloadDecoder]:
    """The decoders of one ``chain:network`` entry."""
    chain, _, net = network.strip().partition(":")
    if chain == "bitcoin":
        return [BitcoinPsbtDecoder(net)]
    if chain == "ethereum":
        if not net.isdigit():
            raise ChainError(f"ethereum networks are chain ids, not {net!r}")
        return [EthereumTxDecoder(int(net)), Eip712Decoder(int(net))]
    if chain == "solana":
        return [SolanaTxDecoder(net)]
    raise ChainError(f"unknown chain in network entry {network!r}")


def registry(networks: str | None = None, *,
             with_test_decoder: bool | None = None) -> DecoderRegistry:
    """A registry for the configured networks. The JSON test transfer decoder is added
    only when asked for - ``with_test_decoder=True``, or ``CUSTODY_TEST_DECODER=1`` when
    not given - never in production: it signs SHA-256 of caller JSON with a wallet key."""
    if with_test_decoder is None:
        with_test_decoder = test_decoder_enabled()
    spec = networks if networks is not None else os.environ.get("CUSTODY_NETWORKS",
                                                                 DEFAULT_NETWORKS)
    decoders: list[PayloadDecoder] = [d for entry in spec.split(",") if entry.strip()
                                      for d in decoders_for(entry)]
    if with_test_decoder:
        decoders.append(JsonTransferDecoder())
    return DecoderRegistry(decoders)
