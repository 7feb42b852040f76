"""Coins, sizes, dust and coin selection - pure arithmetic over given UTXOs.

Sizes follow BIP141 weight (https://github.com/bitcoin/bips/blob/master/bip-0141.mediawiki#transaction-size-calculations):
non-witness bytes count 4 weight units, witness bytes 1, ``vsize = ceil(weight / 4)``.
Dust follows Bitcoin Core's ``GetDustThreshold`` (``src/policy/policy.cpp``) at the default
``-dustrelayfee`` of 3 sat/vB.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from chains.errors import BuildError, ChainDecodeError, InsufficientFunds

from .psbt import parse_tx, spent_output
from .scripts import (
    ScriptKind,
    classify,
    is_unspendable,
    p2tr_script,
    p2wpkh_script,
    witness_version,
)
from .wire import MAX_MONEY, TxOut, compact_size

#: Change below this is not created; the amount goes to the fee instead (546 sat is the
#: P2PKH dust threshold, the most conservative of the common ones).
DUST_CHANGE = 546
DUST_RELAY_SAT_VB = 3
#: BIP125 rule 4 with Bitcoin Core's historical -incrementalrelayfee (1 sat/vB): a
#: replacement pays at least this much more per vbyte of its own size.
INCREMENTAL_RELAY_SAT_VB = 1
#: Opt-in replace-by-fee (BIP125): any nSequence below 0xfffffffe signals it.
RBF_SEQUENCE = 0xFFFF_FFFD

#: Weight of one input: outpoint + empty scriptSig + nSequence (41 bytes x 4) + witness.
#: P2WPKH witness: item count, a DER signature of at most 71 bytes + sighash byte, a
#: 33-byte key. P2TR key path: item count, a 64-byte signature (SIGHASH_DEFAULT).
INPUT_WEIGHT = {
    ScriptKind.P2WPKH: 41 * 4 + 1 + (1 + 72) + (1 + 33),
    ScriptKind.P2TR: 41 * 4 + 1 + (1 + 64),
}


@dataclass(frozen=True)
class Utxo:
    """A coin of the wallet. ``txid`` as RPC shows it; ``path`` relative to the HSM key."""

    txid: str
    vout: int
    amount: int
    script: bytes
    path: str
    public_key: bytes  #: compressed key at ``path``
    #: the transaction ``txid`` itself: required for P2WPKH coins, whose amount the HSM
    #: believes only when this hashes to ``txid`` and its output ``vout`` agrees
    prev_tx: bytes | None = None

    @property
    def kind(self) -> ScriptKind:
        try:
            kind = classify(self.script)
        except ChainDecodeError as exc:
            raise BuildError(f"coin {self.txid}:{self.vout}: {exc.reason}") from None
        if kind not in INPUT_WEIGHT:
            raise BuildError(f"coin {self.txid}:{self.vout} is {kind.value}; only P2WPKH and "
                             "P2TR coins can be spent")
        return kind

    def check(self) -> None:
        """What the HSM would refuse, refused here first: a script that is not the key's,
        an amount out of range, a P2WPKH coin without its previous transaction, or a
        previous transaction that is not this coin's."""
        own = p2wpkh_script if self.kind is ScriptKind.P2WPKH else p2tr_script
        if own(self.public_key) != self.script:
            raise BuildError(f"coin {self.txid}:{self.vout}: script is not the key's at "
                             f"{self.path!r}")
        if not 0 < self.amount <= MAX_MONEY:
            raise BuildError(f"coin {self.txid}:{self.vout}: amount out of range")
        if self.prev_tx is None and self.kind is ScriptKind.P2WPKH:
            raise BuildError(f"coin {self.txid}:{self.vout}: a P2WPKH coin needs its previous "
                             "transaction (prev_tx), or the HSM cannot prove its amount")
        if self.prev_tx is not None:
            self._check_prev_tx(self.prev_tx)

    def _check_prev_tx(self, raw: bytes) -> None:
        try:
            out = spent_output(parse_tx(raw), bytes.fromhex(self.txid)[::-1], self.vout)
        except ChainDecodeError as exc:
            raise BuildError(f"coin {self.txid}:{self.vout}: {exc.reason}") from None
        if out != TxOut(self.amount, self.script):
            raise BuildError(f"coin {self.txid}:{self.vout}: its previous transaction pays "
                             f"{out.amount} sat to {out.script.hex()}, not this coin")


def output_size(script: bytes) -> int:
    return 8 + len(compact_size(len(script))) + len(script)


def vsize(input_kinds: Sequence[ScriptKind], output_scripts: Sequence[bytes]) -> int:
    """Virtual size of a signed segwit transaction with these inputs and outputs."""
    base = 4 + 4 + len(compact_size(len(input_kinds))) + len(compact_size(len(output_scripts)))
    base += sum(output_size(s) for s in output_scripts)
    weight = base * 4 + 2 + sum(INPUT_WEIGHT[k] for k in input_kinds)  # 2: marker, flag
    return math.ceil(weight / 4)


def fee_for(size: int, fee_rate_sat_vb: float) -> int:
    if not fee_rate_sat_vb > 0:
        raise BuildError("the fee rate must be positive")
    return math.ceil(size * fee_rate_sat_vb)


def dust_threshold(script: bytes) -> int:
    """Core's ``GetDustThreshold`` of any output script: the cost of creating and
    spending it at 3 sat/vB. Unspendable outputs (OP_RETURN) are never dust."""
    if is_unspendable(script):
        return 0
    witness = witness_version(script) is not None
    spend = 32 + 4 + 1 + (107 // 4 if witness else 107) + 4
    return (output_size(script) + spend) * DUST_RELAY_SAT_VB


@dataclass(frozen=True)
class Selection:
    inputs: tuple[Utxo, ...]
    fee: int
    change: int  #: 0 when no change output is made


def select_coins(utxos: Sequence[Utxo], target: int, output_scripts: Sequence[bytes],
                 change_script: bytes, fee_rate_sat_vb: float) -> Selection:
    """Largest coins first until the payments and fee are covered.

    Deterministic (ties by txid, vout) so a rebuild picks the same coins. Change below
    :data:`DUST_CHANGE` is not created: it goes to the fee.
    """
    ordered = sorted(utxos, key=lambda u: (-u.amount, u.txid, u.vout))
    chosen: list[Utxo] = []
    for coin in ordered:
        chosen.append(coin)
        kinds = [u.kind for u in chosen]
        total = sum(u.amount for u in chosen)
        bare = fee_for(vsize(kinds, output_scripts), fee_rate_sat_vb)
        if total < target + bare:
            continue
        with_change = fee_for(vsize(kinds, [*output_scripts, change_script]), fee_rate_sat_vb)
        change = total - target - with_change
        if change >= DUST_CHANGE:
            return Selection(tuple(chosen), with_change, change)
        return Selection(tuple(chosen), total - target, 0)
    have = sum(u.amount for u in utxos)
    raise InsufficientFunds(f"{have} sat available, {target} sat plus fee needed")
