"""``BITCOIN_PSBT:<network>``: what a PSBT does, decoded inside the HSM.

The payload is a binary BIP174 v0 PSBT (:mod:`chains.bitcoin.psbt`). The decoder

* requires every input to be a coin of the signing key: a ``witness_utxo`` whose script
  is the P2WPKH or BIP86 P2TR script of ``owner.public_key(path)`` at the path its
  derivation record names (:mod:`chains.bitcoin.ownership`) - the HSM signs only its own
  coins;
* requires every P2WPKH input to carry its full previous transaction
  (``non_witness_utxo``), which must hash to the outpoint's txid and whose output at the
  outpoint's index must be exactly the ``witness_utxo`` (amount and script). A P2TR input
  may carry only its ``witness_utxo`` (BIP341 signs every input's amount and script), but
  a ``non_witness_utxo`` given for it must agree the same way;
* counts an output as change only when its derivation record is proven the same way;
  a record that names the HSM key's fingerprint but does not derive to the output's
  script is a forged change claim and the whole PSBT is **refused** (loud, rather than
  silently counted as a transfer);
* makes every other output a :class:`Transfer` of ``"BTC"`` to its address on the
  decoder's network; an OP_RETURN output is a transfer of its value (normally 0) to
  ``"OP_RETURN:<hex of the data after the opcode>"``, so approvers see the data;
* sets ``fee`` = inputs - outputs, from amounts proven as above.

Sign items, one per input in order: P2WPKH -> ``ECDSA_SECP256K1_DIGEST`` over the BIP143
SIGHASH_ALL digest; P2TR -> ``SCHNORR_BIP340_DIGEST`` over the BIP341 SIGHASH_DEFAULT
digest with ``tweak=b""`` (BIP86: no script tree).

Why the previous transaction, always: BIP143 signs only the spent input's *own* amount
(CVE-2020-14199). With ``witness_utxo`` alone, a broker could send two requests over the
same two P2WPKH coins, each under-stating the *other* coin's amount: each decodes to a
small fee and is signed, and the honest signature of each combines into one valid
transaction whose real fee is anything up to both coins (the attack is reproduced in
``tests/test_btc_prev_tx.py``). No option turns this check off.
"""

from __future__ import annotations

from typing import Any

from chains.errors import ChainDecodeError, ChainError
from hsm_emulator.decoding import (
    DecodeError,
    HsmError,
    Intent,
    IntentKind,
    KeyAlgorithm,
    KeyView,
    SignItem,
    SignScheme,
    Transfer,
)

from .addresses import network_params, script_to_address
from .ownership import Owned, Prover, proven
from .psbt import I_TAP_MERKLE_ROOT, Psbt, key, spent_output
from .scripts import ScriptKind, classify, x_only
from .sighash import SIGHASH_ALL, SIGHASH_DEFAULT, p2wpkh_sighash, taproot_sighash
from .wire import MAX_MONEY, TxOut

MAX_PAYLOAD = 1024 * 1024  #: bytes; the HSM registry refuses larger payloads too
ASSET = "BTC"


class BitcoinPsbtDecoder:
    """:class:`~hsm_emulator.decoding.PayloadDecoder` for one Bitcoin network."""

    def __init__(self, network: str) -> None:
        self.network = network_params(network).name
        self.payload_type = f"BITCOIN_PSBT:{self.network}"

    def decode(self, payload: bytes, owner: KeyView) -> Intent:
        return self.prepare(payload, owner)[0]

    def sign_items(self, payload: bytes, owner: KeyView) -> tuple[SignItem, ...]:
        return self.prepare(payload, owner)[1]

    def prepare(self, payload: bytes, owner: KeyView) -> tuple[Intent, tuple[SignItem, ...]]:
        """The intent and the digests to sign, from one parse. Only :class:`DecodeError`."""
        try:
            return self._prepare(payload, owner)
        except DecodeError:
            raise
        except (ChainError, HsmError) as exc:
            raise DecodeError(f"{self.payload_type}: {exc.reason}") from None

    def _prepare(self, payload: bytes, owner: KeyView) -> tuple[Intent, tuple[SignItem, ...]]:
        if not isinstance(payload, bytes) or len(payload) > MAX_PAYLOAD:
            raise DecodeError(f"{self.payload_type}: payload must be at most {MAX_PAYLOAD} bytes")
        if owner.algorithm is not KeyAlgorithm.SECP256K1:
            raise DecodeError(f"{self.payload_type}: needs a secp256k1 key")
        psbt = Psbt.parse(payload)
        prover = Prover(owner)
        spent = [self._spent(psbt, i) for i in range(len(psbt.inputs))]
        owned = [self._owned_input(psbt, i, spent[i], prover) for i in range(len(spent))]
        transfers, change = self._outputs(psbt, prover)
        total_in = sum(s.amount for s in spent)
        total_out = sum(t.amount for t in transfers) + change
        if total_in > MAX_MONEY or total_out > total_in:
            raise DecodeError(f"{self.payload_type}: outputs ({total_out}) exceed inputs "
                              f"({total_in}) or the money range")
        intent = Intent(
            chain="bitcoin", network=self.network, kind=IntentKind.TRANSFER,
            transfers=tuple(transfers), fee=total_in - total_out, fee_asset=ASSET,
            details=(("change", str(change)), ("inputs", str(len(spent))),
                     ("txid", psbt.tx.GetTxid()[::-1].hex())),
        )
        return intent, self._items(psbt.tx, spent, owned)

    # -- inputs -----------------------------------------------------------------------

    def _spent(self, psbt: Psbt, i: int) -> TxOut:
        """The coin input ``i`` spends, proven by its previous transaction unless it is
        P2TR (whose signatures commit to every input's amount and script themselves)."""
        utxo = psbt.witness_utxo(i)
        if utxo is None:
            raise DecodeError(f"{self.payload_type}: input {i} has no witness_utxo")
        prev = psbt.non_witness_utxo(i)
        if prev is None:
            if classify(utxo.script) is ScriptKind.P2TR:
                return utxo
            raise DecodeError(f"{self.payload_type}: input {i} needs its previous transaction "
                              "(non_witness_utxo): a segwit v0 signature does not commit to "
                              "the other inputs' amounts")
        outpoint = psbt.tx.vin[i].prevout
        try:
            out = spent_output(prev, outpoint.hash, outpoint.n)
        except ChainDecodeError as exc:
            raise DecodeError(f"{self.payload_type}: input {i}: {exc.reason}") from None
        if out != utxo:
            script = "" if out.script == utxo.script else ", to another script"
            raise DecodeError(f"{self.payload_type}: input {i}'s witness_utxo disagrees with "
                              f"its non_witness_utxo ({utxo.amount} sat claimed, the output "
                              f"it spends holds {out.amount} sat{script})")
        return utxo

    def _owned_input(self, psbt: Psbt, i: int, utxo: TxOut, prover: Prover) -> Owned:
        kind = classify(utxo.script)
        if kind not in (ScriptKind.P2WPKH, ScriptKind.P2TR):
            raise DecodeError(f"{self.payload_type}: input {i} is {kind.value}; only P2WPKH "
                              "and P2TR key-path coins of this key are signed")
        owned = proven(prover.claims(psbt, i, output=False), utxo.script)
        if owned is None:
            raise DecodeError(f"{self.payload_type}: input {i} is not proven to be a coin of "
                              "this key (no derivation record derives to its script)")
        if kind is ScriptKind.P2TR:
            internal = psbt.input_tap_internal_key(i)
            if (internal is not None and internal != x_only(owned.public_key)) or \
                    psbt.inputs[i].get(key(I_TAP_MERKLE_ROOT)) is not None:
                raise DecodeError(f"{self.payload_type}: input {i} is not a BIP86 key-path "
                                  "coin (internal key or merkle root disagree)")
        wanted = SIGHASH_ALL if kind is ScriptKind.P2WPKH else SIGHASH_DEFAULT
        declared = psbt.sighash_type(i)
        if declared is not None and declared != wanted:
            raise DecodeError(f"{self.payload_type}: input {i} asks for sighash type "
                              f"{declared:#x}; only {wanted:#x} is signed")
        return owned

    # -- outputs ----------------------------------------------------------------------

    def _outputs(self, psbt: Psbt, prover: Prover) -> tuple[list[Transfer], int]:
        transfers, change = [], 0
        for o, out in enumerate(psbt.tx.vout):
            script, amount = bytes(out.scriptPubKey), int(out.nValue)
            if not 0 <= amount <= MAX_MONEY:
                raise DecodeError(f"{self.payload_type}: output {o} amount out of range")
            classify(script)  # refuses scripts the wallet does not pay to
            if self._is_change(psbt, o, script, prover):
                change += amount
            else:
                transfers.append(Transfer(ASSET, amount, script_to_address(self.network, script)))
        return transfers, change

    def _is_change(self, psbt: Psbt, o: int, script: bytes, prover: Prover) -> bool:
        if not prover.names_owner(psbt, o, output=True):
            return False
        if proven(prover.claims(psbt, o, output=True), script) is None:
            raise DecodeError(f"{self.payload_type}: output {o} claims to be change of this "
                              "key but its derivation does not produce its script")
        return True

    # -- sign items -------------------------------------------------------------------

    @staticmethod
    def _items(tx: Any, spent: list[TxOut], owned: list[Owned]) -> tuple[SignItem, ...]:
        items = []
        for i, own in enumerate(owned):
            if own.kind is ScriptKind.P2WPKH:
                digest = p2wpkh_sighash(tx, i, own.public_key, spent[i].amount)
                items.append(SignItem(SignScheme.ECDSA_SECP256K1_DIGEST, digest, own.path))
            else:
                digest = taproot_sighash(tx, spent, i, SIGHASH_DEFAULT)
                items.append(SignItem(SignScheme.SCHNORR_BIP340_DIGEST, digest, own.path, b""))
        return tuple(items)
