"""One error root for the chain adapters, each with a stable code.

Library exceptions (python-bitcoinlib, web3, solders, RPC transports) are translated
into these at the adapter's edge, never leaked raw.
"""

from __future__ import annotations

from hsm_emulator.decoding import DecodeError


class ChainError(Exception):
    code = "chain.error"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return f"[{self.code}] {self.reason}"


class ChainDecodeError(ChainError):
    """A transaction or payload could not be fully decoded (never a partial intent)."""

    code = "chain.decode_error"


def refused(payload_type: str, exc: ChainError) -> DecodeError:
    """A decoder's refusal as the HSM's :class:`DecodeError`, the one error a decoder
    raises (``hsm_emulator.decoding``). Chain code below a decoder raises
    :class:`ChainDecodeError`; the decoder translates at its edge, in the words the HSM's
    registry used when it still had to catch it: ``<type> payload could not be decoded:
    [chain.decode_error] <reason>``."""
    return DecodeError(f"{payload_type} payload could not be decoded: {exc}")


class InvalidAddress(ChainError):
    """Bad checksum, wrong length, or an address of another network."""

    code = "chain.invalid_address"


class InsufficientFunds(ChainError):
    code = "chain.insufficient_funds"


class BuildError(ChainError):
    """The transfer cannot be built (dust, fee above cap, unsupported asset...)."""

    code = "chain.build_error"


class NodeUnavailable(ChainError):
    """The node could not be reached; the caller may retry later."""

    code = "chain.node_unavailable"


class BroadcastRejected(ChainError):
    """The node refused the transaction (its reason is kept)."""

    code = "chain.broadcast_rejected"


class BroadcastExpired(BroadcastRejected):
    """The node refused the transaction as past its validity window (Solana: its recent
    blockhash is not found). Only the node's view at that moment: whether it provably can
    never land is the planner's :meth:`~chains.planning.Planner.expired` to say."""

    code = "chain.broadcast_expired"
