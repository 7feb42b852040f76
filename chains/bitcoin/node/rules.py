"""Pure transaction rules the mempool applies before scripts: Core's checks and constants.

Sources (Bitcoin Core): consensus/tx_check.cpp (CheckTransaction), policy/policy.cpp
(IsStandardTx, GetDustThreshold), consensus/tx_verify.cpp (IsFinalTx, sequence locks
of BIP68: https://github.com/bitcoin/bips/blob/master/bip-0068.mediawiki), util/moneystr.cpp.
Standardness is a subset: version, size, output script types and dust.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from chains.bitcoin.blocks import Tx
from chains.bitcoin.coins import dust_threshold
from chains.bitcoin.node.chainindex import Coin
from chains.bitcoin.node.mempool import MEMPOOL_HEIGHT
from chains.bitcoin.scripts import script_type
from chains.bitcoin.wire import MAX_MONEY

COIN = 100_000_000
COINBASE_MATURITY = 100
MAX_BLOCK_WEIGHT = 4_000_000
MAX_STANDARD_TX_WEIGHT = 400_000
MIN_STANDARD_TX_NONWITNESS_SIZE = 65
TX_MAX_STANDARD_VERSION = 3
LOCKTIME_THRESHOLD = 500_000_000
SEQUENCE_FINAL = 0xFFFFFFFF
SEQUENCE_DISABLE_FLAG = 1 << 31
SEQUENCE_TYPE_FLAG = 1 << 22
DEFAULT_MIN_RELAY_FEERATE = 100  #: sat/kvB (policy.h DEFAULT_MIN_RELAY_TX_FEE, Core v30)
INCREMENTAL_RELAY_FEERATE = 100  #: sat/kvB (policy.h DEFAULT_INCREMENTAL_RELAY_FEE)


def money_range(value: int) -> bool:
    return 0 <= value <= MAX_MONEY


def fee_for(feerate_per_kvb: int, vsize: int) -> int:
    """CFeeRate::GetFee: rounded up."""
    return math.ceil(feerate_per_kvb * vsize / 1000)


def format_money(sats: int) -> str:
    """Core's FormatMoney: 8 decimals, trailing zeros trimmed down to two."""
    sign = "-" if sats < 0 else ""
    whole, frac = divmod(abs(sats), COIN)
    text = f"{whole}.{frac:08d}".rstrip("0")
    return sign + (text + "0" * (2 - len(text.split(".")[1])))


def feerate_str(fee: int, vsize: int) -> str:
    """CFeeRate(fee, vsize).ToString()."""
    per_kvb = fee * 1000 // vsize if vsize else 0
    return f"{per_kvb // COIN}.{per_kvb % COIN:08d} BTC/kvB"


def _output_values_reason(tx: Tx) -> str | None:
    total = 0
    for out in tx.outputs:
        total += out.amount
        for bad, reason in ((out.amount < 0, "bad-txns-vout-negative"),
                            (out.amount > MAX_MONEY, "bad-txns-vout-toolarge"),
                            (total > MAX_MONEY, "bad-txns-txouttotal-toolarge")):
            if bad:
                return reason
    return None


def check_transaction(tx: Tx) -> str | None:
    """Context-free consensus checks (CheckTransaction), then PreChecks' coinbase refusal."""
    checks: tuple[tuple[Callable[[], bool], str], ...] = (
        (lambda: not tx.inputs, "bad-txns-vin-empty"),
        (lambda: not tx.outputs, "bad-txns-vout-empty"),
        (lambda: len(tx.serialize(witness=False)) * 4 > MAX_BLOCK_WEIGHT, "bad-txns-oversize"),
        (lambda: bool(_output_values_reason(tx)), _output_values_reason(tx) or ""),
        (lambda: len({(i.prev_txid, i.prev_index) for i in tx.inputs}) != len(tx.inputs),
         "bad-txns-inputs-duplicate"),
        (lambda: tx.is_coinbase, "coinbase"),
        (lambda: any(i.is_null for i in tx.inputs), "bad-txns-prevout-null"),
    )
    return next((reason for failed, reason in checks if failed()), None)


def check_standard(tx: Tx) -> str | None:
    """The part of IsStandardTx a wallet meets, and PreChecks' minimum size."""
    checks: tuple[tuple[Callable[[], bool], str], ...] = (
        (lambda: not 1 <= tx.version <= TX_MAX_STANDARD_VERSION, "version"),
        (lambda: tx.weight > MAX_STANDARD_TX_WEIGHT, "tx-size"),
        (lambda: any(len(i.script_sig) > 1650 for i in tx.inputs), "scriptsig-size"),
        (lambda: any(script_type(o.script) == "nonstandard" for o in tx.outputs),
         "scriptpubkey"),
        (lambda: any(o.amount < dust_threshold(o.script) for o in tx.outputs), "dust"),
        (lambda: len(tx.serialize(witness=False)) < MIN_STANDARD_TX_NONWITNESS_SIZE,
         "tx-size-small"),
    )
    return next((reason for failed, reason in checks if failed()), None)


def is_final(tx: Tx, height: int, mtp: int) -> bool:
    if tx.locktime == 0:
        return True
    limit = height if tx.locktime < LOCKTIME_THRESHOLD else mtp
    return tx.locktime < limit or all(i.sequence == SEQUENCE_FINAL for i in tx.inputs)


def sequence_locks_ok(
    tx: Tx, coins: Sequence[Coin], next_height: int, tip_mtp: int, mtp_at: Callable[[int], int]
) -> bool:
    """BIP68 relative lock-times, evaluated for a block at ``next_height``."""
    if tx.version < 2:
        return True
    min_height = min_time = -1
    for txin, coin in zip(tx.inputs, coins, strict=True):
        if txin.sequence & SEQUENCE_DISABLE_FLAG:
            continue
        coin_height = next_height if coin.height == MEMPOOL_HEIGHT else coin.height
        if txin.sequence & SEQUENCE_TYPE_FLAG:
            coin_time = mtp_at(max(coin_height - 1, 0))
            min_time = max(min_time, coin_time + ((txin.sequence & 0xFFFF) << 9) - 1)
        else:
            min_height = max(min_height, coin_height + (txin.sequence & 0xFFFF) - 1)
    return min_height < next_height and min_time < tip_mtp
