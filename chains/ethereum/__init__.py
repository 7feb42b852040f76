"""Ethereum: typed transactions, the HSM's decoders, nonces, and the node adapter.

Pure modules (the HSM imports these): :mod:`.encoding`, :mod:`.tx`, :mod:`.parse`,
:mod:`.erc20`, :mod:`.decoder`, :mod:`.eip712`, :mod:`.fees`, :mod:`.signing`.
I/O: :mod:`.client` (web3), :mod:`.nonces` (SQL), :mod:`.adapter`.
"""

from __future__ import annotations

from .decoder import EthereumTxDecoder, intent_of, network_of
from .eip712 import Eip712Decoder
from .tx import Eip1559Tx, LegacyTx, assemble, serialize_unsigned, signing_hash

__all__ = [
           "Eip712Decoder",
           "Eip1559Tx",
           "EthereumTxDecoder",
           "LegacyTx",
           "assemble",
           "intent_of",
           "network_of",
           "serialize_unsigned",
           "signing_hash",
]
