"""The chains this project supports: one registration line per chain.

A new chain is a package ``chains/<name>/`` with a ``spec.py`` (its
:class:`~chains.spec.ChainSpec`) and a ``planner.py`` (what the broker runs), a member of
:class:`~chains.base.Chain`, and its line below. Pure, like the specs: the HSM's entry
point reads the decoders from here.
"""

from __future__ import annotations

from .base import Chain
from .bitcoin.spec import SPEC as BITCOIN
from .errors import ChainError
from .ethereum.spec import SPEC as ETHEREUM
from .solana.spec import SPEC as SOLANA
from .spec import ChainSpec

SPECS: dict[Chain, ChainSpec] = {spec.chain: spec for spec in (
    BITCOIN,
    ETHEREUM,
    SOLANA,
)}


def find_spec(chain: object) -> ChainSpec | None:
    """The spec of a chain named by its :class:`Chain` value (``"bitcoin"``), as stored
    on wallets and written on the wire; None for anything else."""
    if not isinstance(chain, str):
        return None
    try:
        return SPECS[Chain(chain)]
    except (ValueError, KeyError):
        return None


def spec_of(chain: object) -> ChainSpec:
    """As :func:`find_spec`, for a chain that must be known."""
    spec = find_spec(chain)
    if spec is None:
        raise ChainError(f"unknown chain {chain!r}")
    return spec
