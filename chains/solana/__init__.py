"""Solana: SOL and SPL Token transfers signed by an HSM Ed25519 key.

Pure modules (what the HSM imports): :mod:`.spl` (SPL Token / ATA encodings),
:mod:`.tx` (building, blockhash refresh, assembly), :mod:`.decoder` (``SOLANA_TX``).
I/O lives beside them: :mod:`.client` (JSON-RPC), :mod:`.adapter` (the ChainAdapter) and
:mod:`.devnode` (a LiteSVM-backed JSON-RPC node for development and tests).
"""

from chains.solana.decoder import NETWORKS, SolanaTxDecoder

__all__ = ["NETWORKS", "SolanaTxDecoder"]
