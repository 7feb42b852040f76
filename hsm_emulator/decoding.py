"""The decoder interface: everything a chain may import from the HSM, in one module.

The HSM defines what a payload decoder is and what it answers (an :class:`Intent` with
its transfers, grants and calls; the :class:`SignItem` digests; refusals as
:class:`DecodeError`); chains implement it. ``chains`` imports this module and no other
from ``hsm_emulator`` (the import contract ``chains-see-only-the-decoder-interface`` in
``pyproject.toml``), so the HSM's internals - key store, policy engine, approval flow,
derivation - can change without a chain noticing, and a chain can never reach them.

Nothing is defined here: the names are re-exported from where the HSM keeps them.

A decoder's refusal is a :class:`DecodeError` (a subclass of :class:`HsmError`), raised
by the decoder itself. The registry still turns any other exception into one - a decoder
bug must never become a signature - but that is a safety net, not the contract.
"""

from __future__ import annotations

from .decoders import DecoderRegistry, JsonTransferDecoder, test_decoder_enabled
from .errors import DecodeError, HsmError
from .keys import tagged_hash
from .model import (
    Grant,
    Intent,
    IntentKind,
    KeyAlgorithm,
    KeyView,
    PayloadDecoder,
    SignItem,
    SignScheme,
    Transfer,
    canonical_json,
)

__all__ = [
    "DecodeError",
    "DecoderRegistry",
    "Grant",
    "HsmError",
    "Intent",
    "IntentKind",
    "JsonTransferDecoder",
    "KeyAlgorithm",
    "KeyView",
    "PayloadDecoder",
    "SignItem",
    "SignScheme",
    "Transfer",
    "canonical_json",
    "tagged_hash",
    "test_decoder_enabled",
]
