"""EIP-1559 fee choices: a quote from fee history, caps, and replacement bumps. Pure.

``maxFeePerGas = 2 * baseFee + priorityFee`` survives six consecutive full blocks
(the base fee rises at most 12.5% a block, EIP-1559), and only ``baseFee + priority``
is ever charged. A replacement must raise *both* the fee cap and the tip by at least
10% (geth's and anvil's ``txpool.pricebump`` default), or the node refuses it as
"replacement transaction underpriced".

EIP-1559: https://eips.ethereum.org/EIPS/eip-1559
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from chains.errors import BuildError

from .tx import Eip1559Tx

#: Replacement bump, percent (geth ``--txpool.pricebump``); one more wei absorbs rounding.
REPLACEMENT_BUMP_PERCENT = 10
#: A floor for the tip when recent blocks paid none (local nodes, empty blocks).
MIN_PRIORITY_FEE = 1_000_000_000  # 1 gwei


@dataclass(frozen=True)
class FeeQuote:
    base_fee: int  #: the next block's base fee, wei per gas
    priority_fee: int  #: tip, wei per gas
    max_fee: int  #: maxFeePerGas to sign, wei per gas


def quote(next_base_fee: int, recent_tips: list[int], *, max_fee_cap: int | None = None,
          max_priority_cap: int | None = None) -> FeeQuote:
    """A quote from the next base fee and recent blocks' tips (median), within caps."""
    tips = sorted(recent_tips)
    tip = max(tips[len(tips) // 2] if tips else 0, MIN_PRIORITY_FEE)
    if max_priority_cap is not None:
        tip = min(tip, max_priority_cap)
    max_fee = 2 * next_base_fee + tip
    if max_fee_cap is not None:
        if max_fee_cap < next_base_fee + tip:
            raise BuildError(f"fee cap {max_fee_cap} wei/gas is below the current base fee "
                             f"{next_base_fee} + tip {tip}")
        max_fee = min(max_fee, max_fee_cap)
    return FeeQuote(next_base_fee, tip, max_fee)


def bumped(value: int) -> int:
    """The least value a node accepts in place of ``value`` (+10%, rounded up, +1)."""
    return value + (value * REPLACEMENT_BUMP_PERCENT + 99) // 100 + 1


def replacement(tx: Eip1559Tx, current: FeeQuote | None = None) -> Eip1559Tx:
    """The same transaction (same nonce) with both fees bumped - at least 10% each, and
    at least what the market asks now."""
    tip = bumped(tx.max_priority_fee_per_gas)
    max_fee = bumped(tx.max_fee_per_gas)
    if current is not None:
        tip = max(tip, current.priority_fee)
        max_fee = max(max_fee, current.max_fee, tip)
    return replace(tx, max_priority_fee_per_gas=tip, max_fee_per_gas=max(max_fee, tip))
