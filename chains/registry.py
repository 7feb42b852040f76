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

from .errors import ChainError
from .specs import SPECS, spec_of

#: every chain's networks (``bitcoin:regtest,bitcoin:mainnet,...,solana:devnet``)
DEFAULT_NETWORKS = ",".join(f"{chain.value}:{network}" for chain, spec in SPECS.items()
                            for network in spec.networks)


def decoders_for(network: str) -> list[PayloadDecoder]:
    """The decoders of one ``chain:network`` entry, as its chain's spec names them."""
    chain, _, net = network.strip().partition(":")
    try:
        spec = spec_of(chain)
    except ChainError:
        raise ChainError(f"unknown chain in network entry {network!r}") from None
    return spec.decoders(net)


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
