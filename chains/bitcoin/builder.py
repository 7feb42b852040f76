"""Building PSBTs from given coins, and bumping their fee - pure, no node access.

Transactions are version 2 with opt-in RBF on every input (BIP125), payments in the
order given and one change output last, paid to a fresh key of the wallet whose BIP32 /
BIP371 derivation record lets the HSM's decoder prove it is change (see
:mod:`chains.bitcoin.ownership` for the convention: the HSM key is the origin, paths
relative to it). A fee bump keeps every input and every non-change output byte for byte
- the approved intent - and takes the extra fee from change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bitcoin.core import (
    COutPoint,
    CTransaction,
    CTxIn,
    CTxOut,
    lx,
)
from bitcoin.core.script import CScript

from chains.errors import BuildError, ChainDecodeError

from . import psbt as P
from .addresses import address_to_script
from .coins import (
    DUST_CHANGE,
    INCREMENTAL_RELAY_SAT_VB,
    RBF_SEQUENCE,
    Utxo,
    dust_threshold,
    fee_for,
    select_coins,
    vsize,
)
from .psbt import Psbt, TapOrigin
from .scripts import ScriptKind, classify, p2tr_script, p2wpkh_script, x_only
from .wire import KeyOrigin, TxOut, parse_path


@dataclass(frozen=True)
class Payment:
    address: str
    amount: int  #: satoshis


@dataclass(frozen=True)
class ChangeKey:
    """Where change goes: a fresh key of the wallet (``path`` relative to the HSM key)."""

    path: str
    public_key: bytes
    kind: ScriptKind = ScriptKind.P2WPKH

    @property
    def script(self) -> bytes:
        return p2tr_script(self.public_key) if self.kind is ScriptKind.P2TR else \
            p2wpkh_script(self.public_key)


def build_psbt(network: str, utxos: Sequence[Utxo], payments: Sequence[Payment],
               change: ChangeKey, fee_rate_sat_vb: float, fingerprint: bytes, *,
               locktime: int = 0) -> Psbt:
    """A PSBT paying ``payments`` from ``utxos`` at ``fee_rate_sat_vb``.

    Destinations are checked for ``network`` first (:class:`~chains.errors.InvalidAddress`);
    payments below their dust threshold are refused; ``fingerprint`` is the HSM key's.
    """
    scripts = [address_to_script(network, p.address) for p in payments]
    if not payments:
        raise BuildError("nothing to pay")
    for p, script in zip(payments, scripts, strict=True):
        if not isinstance(p.amount, int) or p.amount < max(dust_threshold(script), 1):
            raise BuildError(f"payment of {p.amount} sat to {p.address} is below dust")
    for u in utxos:
        u.check()
    target = sum(p.amount for p in payments)
    sel = select_coins(utxos, target, scripts, change.script, fee_rate_sat_vb)
    outs = [TxOut(p.amount, s) for p, s in zip(payments, scripts, strict=True)]
    if sel.change:
        outs.append(TxOut(sel.change, change.script))
    vin = [CTxIn(COutPoint(lx(u.txid), u.vout), nSequence=RBF_SEQUENCE) for u in sel.inputs]
    tx = _tx(vin, outs, locktime)
    inputs = [_input_map(u, fingerprint) for u in sel.inputs]
    outputs: list[dict[bytes, bytes]] = [{} for _ in payments]
    if sel.change:
        outputs.append(_key_record(change.kind, change.public_key, change.path, fingerprint,
                                   output=True))
    return Psbt(tx, {}, inputs, outputs)


def _tx(vin: Sequence[object], outs: Sequence[TxOut], locktime: int) -> object:
    vout = [CTxOut(o.amount, CScript(o.script)) for o in outs]
    return CTransaction(vin, vout, nLockTime=locktime, nVersion=2)


def _input_map(u: Utxo, fingerprint: bytes) -> dict[bytes, bytes]:
    """Both UTXO fields, as Bitcoin Core writes them: the previous transaction (without
    its witness) proves a P2WPKH coin's amount to the HSM; ``witness_utxo`` names it."""
    m = {P.key(P.I_WITNESS_UTXO): TxOut(u.amount, u.script).serialize()}
    if u.prev_tx is not None:
        m[P.key(P.I_NON_WITNESS_UTXO)] = P.without_witness(u.prev_tx)
    m.update(_key_record(u.kind, u.public_key, u.path, fingerprint, output=False))
    return m


def _key_record(kind: ScriptKind, public_key: bytes, path: str, fingerprint: bytes, *,
                output: bool) -> dict[bytes, bytes]:
    """BIP174 / BIP371 derivation entries naming ``path`` under the HSM key."""
    try:
        origin = KeyOrigin(fingerprint, parse_path(path))
    except ChainDecodeError as exc:
        raise BuildError(f"path {path!r}: {exc.reason}") from None
    if kind is ScriptKind.P2WPKH:
        t = P.O_BIP32_DERIVATION if output else P.I_BIP32_DERIVATION
        return {P.key(t, public_key): origin.serialize()}
    internal = P.O_TAP_INTERNAL_KEY if output else P.I_TAP_INTERNAL_KEY
    t = P.O_TAP_BIP32_DERIVATION if output else P.I_TAP_BIP32_DERIVATION
    xonly = x_only(public_key)
    return {P.key(internal): xonly, P.key(t, xonly): TapOrigin((), origin).serialize()}


# --------------------------------------------------------------------------- fee bump

#: Input fields that sign the old transaction and must go when it changes.
_SIGNATURE_TYPES = frozenset({P.I_PARTIAL_SIG, P.I_FINAL_SCRIPTSIG, P.I_FINAL_SCRIPTWITNESS,
                              P.I_TAP_KEY_SIG, P.I_TAP_SCRIPT_SIG})


def bump_fee(psbt: Psbt, new_fee_rate_sat_vb: float, fingerprint: bytes) -> Psbt:
    """A replacement paying at least ``new_fee_rate_sat_vb`` and BIP125's increment.

    Inputs and non-change outputs are kept identical, so the HSM decodes the same
    transfers and accepts it under the existing approvals (within the fee cap). Change
    that would fall below :data:`DUST_CHANGE` is dropped into the fee; if change cannot
    pay, :class:`BuildError` (adding inputs is not done here).
    """
    change_at = _change_index(psbt, fingerprint)
    spent = [psbt.witness_utxo(i) for i in range(len(psbt.inputs))]
    if any(s is None for s in spent):
        raise BuildError("every input needs its witness_utxo")
    kinds = [classify(s.script) for s in spent if s is not None]
    outs = [TxOut(int(o.nValue), bytes(o.scriptPubKey)) for o in psbt.tx.vout]
    old_fee = sum(s.amount for s in spent if s is not None) - sum(o.amount for o in outs)
    outputs = [dict(m) for m in psbt.outputs]
    new_change = outs[change_at].amount - (_bump_fee(kinds, outs, old_fee, new_fee_rate_sat_vb)
                                           - old_fee)
    if new_change >= DUST_CHANGE:
        outs[change_at] = TxOut(new_change, outs[change_at].script)
    else:  # drop the change: the smaller transaction may still pay from it
        budget = old_fee + outs[change_at].amount
        del outs[change_at], outputs[change_at]
        if not outs:
            raise BuildError("the change is the only output; it cannot be dropped")
        needed = _bump_fee(kinds, outs, old_fee, new_fee_rate_sat_vb)
        if needed > budget:
            raise BuildError(f"change cannot pay a fee of {needed} sat; the bump needs "
                             "another input")
    tx = _tx(psbt.tx.vin, outs, psbt.tx.nLockTime)
    inputs = [{k: v for k, v in m.items() if P.split_key(k)[0] not in _SIGNATURE_TYPES}
              for m in psbt.inputs]
    return Psbt(tx, dict(psbt.globals), inputs, outputs)


def _bump_fee(kinds: Sequence[ScriptKind], outs: Sequence[TxOut], old_fee: int,
              rate: float) -> int:
    size = vsize(kinds, [o.script for o in outs])
    return max(fee_for(size, rate), old_fee + size * INCREMENTAL_RELAY_SAT_VB)


def _change_index(psbt: Psbt, fingerprint: bytes) -> int:
    found = [o for o in range(len(psbt.outputs))
             if any(d.fingerprint == fingerprint for d in psbt.output_derivations(o).values())
             or any(t.origin.fingerprint == fingerprint
                    for t in psbt.output_tap_derivations(o).values())]
    if len(found) != 1:
        raise BuildError(f"a fee bump needs exactly one change output, found {len(found)}")
    return found[0]

