"""The PSBT decoder inside a real HSM: ownership proofs, tiers, fee bumps, Core's verdict.

Every signed transaction is assembled with :func:`finalize` and verified by Bitcoin
Core's consensus code (py-bitcoinkernel), not by our own sighash code.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import pytest
from bitcoin.core import (
    CMutableTransaction,
    COutPoint,
    CTransaction,
    CTxInWitness,
    CTxWitness,
)
from bitcoin.core.script import CScriptWitness

from chains.bitcoin import BitcoinPsbtDecoder, ChangeKey, Payment, build_psbt, bump_fee, finalize
from chains.bitcoin.ownership import key_fingerprint
from chains.bitcoin.psbt import (
    I_NON_WITNESS_UTXO,
    I_SIGHASH_TYPE,
    I_WITNESS_UTXO,
    O_BIP32_DERIVATION,
    O_TAP_BIP32_DERIVATION,
    Psbt,
    TapOrigin,
    key,
)
from chains.bitcoin.scripts import ScriptKind, p2wpkh_script, x_only
from chains.bitcoin.wire import KeyOrigin, TxOut
from hsm_emulator import Hsm, ManualClock
from hsm_emulator.decoders import DecoderRegistry, JsonTransferDecoder
from hsm_emulator.errors import DecodeError, IntentMismatch, PolicyNotMet
from hsm_emulator.model import KeyView
from tests.chains.test_btc_support import coin, core_accepts, prev_tx, spent_outputs
from tests.conftest import SO, TEST_PASSPHRASE
from tests.helpers import Approver, tiered_policy

NET = "regtest"
PT = f"BITCOIN_PSBT:{NET}"
SMALL, MEDIUM = 1_000_000, 50_000_000  # 0.01 BTC auto-signs, 0.5 BTC needs two traders
MAX_FEE = 50_000  #: sat, every tier (a fee bump at 30 sat/vB stays under it)


@pytest.fixture
def bhsm(tmp_path: Path, clock: ManualClock) -> Iterator[Hsm]:
    reg = DecoderRegistry([BitcoinPsbtDecoder(NET), JsonTransferDecoder()])
    h = Hsm.open(tmp_path / "h.sqlite", TEST_PASSPHRASE, so_passphrase=SO, clock=clock,
                 decoders=reg)
    yield h
    h.close()


@pytest.fixture
def wallet(bhsm: Hsm, people: dict[str, Approver]) -> str:
    traders = [people["t1"], people["t2"], people["t3"]]
    policy = tiered_policy(traders, [people["c1"]], asset="BTC", small=SMALL, medium=MEDIUM,
                           max_fee=MAX_FEE)
    bhsm.create_key("btc", "SECP256K1", policy={**policy, "networks": [f"bitcoin:{NET}"]})
    return "btc"


def fp(hsm: Hsm, label: str = "btc") -> bytes:
    return key_fingerprint(hsm.public_key(label))


def pay(hsm: Hsm, amount: int, *, kinds: tuple[ScriptKind, ...] = (ScriptKind.P2WPKH,),
        coin_amount: int = 80_000_000, change_kind: ScriptKind = ScriptKind.P2WPKH,
        dest: str | None = None) -> Psbt:
    def at(path: str) -> bytes:
        return hsm.public_key("btc", path)
    coins = [coin(at, f"0/{i}", coin_amount, k) for i, k in enumerate(kinds)]
    dest = dest or outsider_address(hsm)
    change = ChangeKey("1/0", at("1/0"), change_kind)
    return build_psbt(NET, coins, [Payment(dest, amount)], change, 3, fp(hsm))


def outsider_address(hsm: Hsm) -> str:
    if "other" not in hsm.list_keys():
        hsm.create_key("other", "SECP256K1")
    return hsm.address("other", "p2wpkh", NET, "0/0")


def signed_ok(psbt: Psbt, signatures: tuple[bytes, ...]) -> bool:
    return core_accepts(finalize(psbt, signatures), spent_outputs(psbt))


# -- the happy paths -------------------------------------------------------------------


@pytest.mark.parametrize("kinds", [(ScriptKind.P2WPKH,), (ScriptKind.P2TR,),
                                   (ScriptKind.P2TR, ScriptKind.P2WPKH)])
def test_small_transfer_auto_signs_and_core_accepts(bhsm: Hsm, wallet: str,
                                                    kinds: tuple[ScriptKind, ...]) -> None:
    psbt = pay(bhsm, 500_000, kinds=kinds, coin_amount=300_000 if len(kinds) > 1 else 800_000)
    result = bhsm.sign_now(wallet, psbt.serialize(), PT)
    intent = result.intent
    assert intent is not None
    assert [(t.asset, t.amount, t.destination) for t in intent.transfers] == [
        ("BTC", 500_000, outsider_address(bhsm))]
    spent = sum(s.amount for s in spent_outputs(psbt))
    outs = sum(o.nValue for o in psbt.tx.vout)
    assert intent.fee == spent - outs > 0 and intent.fee_asset == "BTC"
    assert signed_ok(psbt, result.signatures)


def test_change_is_not_a_transfer_so_a_big_coin_still_auto_signs(bhsm: Hsm, wallet: str) -> None:
    """40 BTC back to the wallet as (proven) change; only 0.001 BTC leaves: small tier."""
    psbt = pay(bhsm, 100_000, coin_amount=40 * 10**8, change_kind=ScriptKind.P2TR)
    result = bhsm.sign_now(wallet, psbt.serialize(), PT)
    assert result.intent is not None and result.intent.total("BTC") == 100_000
    assert dict(result.intent.details)["change"] == str(psbt.tx.vout[1].nValue)
    assert signed_ok(psbt, result.signatures)


def test_tier_applies_to_the_decoded_amount(bhsm: Hsm, wallet: str,
                                            people: dict[str, Approver]) -> None:
    psbt = pay(bhsm, 2_000_000)  # above the small tier
    with pytest.raises(PolicyNotMet):
        bhsm.sign_now(wallet, psbt.serialize(), PT)
    ch = bhsm.begin(wallet, payload=psbt.serialize(), payload_type=PT)
    result = bhsm.execute(ch.request_id, [people["t1"].approve(ch.envelope),
                                          people["t2"].approve(ch.envelope)])
    assert signed_ok(psbt, result.signatures)


def test_an_own_address_without_a_derivation_record_counts_as_a_transfer(bhsm: Hsm,
                                                                         wallet: str) -> None:
    """Paying the wallet's own address is not change unless the PSBT proves it."""
    own = bhsm.address(wallet, "p2wpkh", NET, "7/7")
    psbt = pay(bhsm, 2_000_000, dest=own)
    with pytest.raises(PolicyNotMet):
        bhsm.sign_now(wallet, psbt.serialize(), PT)


# -- change must be proven ---------------------------------------------------------------


def test_forged_change_claim_is_refused(bhsm: Hsm, wallet: str) -> None:
    """The payment output claims to be change at 1/0 (the real change key's path):
    the claimed key derives, but its script is not the output's - refused, not hidden."""
    psbt = pay(bhsm, 5_000_000)
    real = bhsm.public_key(wallet, "1/0")
    psbt.outputs[0][key(O_BIP32_DERIVATION, real)] = KeyOrigin(fp(bhsm), (1, 0)).serialize()
    with pytest.raises(DecodeError, match="claims to be change"):
        bhsm.sign_now(wallet, psbt.serialize(), PT)


def test_forged_change_with_a_key_that_does_not_derive_is_refused(bhsm: Hsm, wallet: str) -> None:
    psbt = pay(bhsm, 5_000_000)
    outsider = bhsm.public_key("other", "0/0")
    psbt.outputs[0][key(O_BIP32_DERIVATION, outsider)] = KeyOrigin(fp(bhsm), (1, 0)).serialize()
    with pytest.raises(DecodeError, match="claims to be change"):
        bhsm.sign_now(wallet, psbt.serialize(), PT)


def test_forged_taproot_change_claim_is_refused(bhsm: Hsm, wallet: str) -> None:
    psbt = pay(bhsm, 5_000_000)
    xonly = x_only(bhsm.public_key(wallet, "1/0"))
    psbt.outputs[0][key(O_TAP_BIP32_DERIVATION, xonly)] = TapOrigin(
        (), KeyOrigin(fp(bhsm), (1, 0))).serialize()
    with pytest.raises(DecodeError, match="claims to be change"):
        bhsm.sign_now(wallet, psbt.serialize(), PT)


def test_a_claim_under_another_fingerprint_is_just_a_transfer(bhsm: Hsm, wallet: str) -> None:
    psbt = pay(bhsm, 500_000)
    outsider = bhsm.public_key("other", "0/0")
    psbt.outputs[0][key(O_BIP32_DERIVATION, outsider)] = KeyOrigin(
        fp(bhsm, "other"), (0, 0)).serialize()
    result = bhsm.sign_now(wallet, psbt.serialize(), PT)
    assert result.intent is not None and result.intent.total("BTC") == 500_000


# -- inputs must be the key's own coins --------------------------------------------------


def test_input_of_another_key_is_refused(bhsm: Hsm, wallet: str) -> None:
    """A real coin of another key, with its previous transaction, claimed at 0/0."""
    outsider_address(bhsm)
    foreign = coin(functools.partial(bhsm.public_key, "other"), "0/0", 80_000_000)
    psbt = build_psbt(NET, [foreign], [Payment(outsider_address(bhsm), 500_000)],
                      ChangeKey("1/0", bhsm.public_key(wallet, "1/0")), 3, fp(bhsm))
    with pytest.raises(DecodeError, match="not proven to be a coin"):
        bhsm.sign_now(wallet, psbt.serialize(), PT)


def test_input_without_witness_utxo_is_refused(bhsm: Hsm, wallet: str) -> None:
    psbt = pay(bhsm, 500_000)
    del psbt.inputs[0][key(I_WITNESS_UTXO)]
    with pytest.raises(DecodeError, match="no witness_utxo"):
        bhsm.sign_now(wallet, psbt.serialize(), PT)


def _view(hsm: Hsm, label: str = "btc") -> KeyView:
    return hsm.records.view(hsm.records.state(label))


DECODER = BitcoinPsbtDecoder(NET)


def test_p2wpkh_input_without_its_previous_transaction_is_refused(bhsm: Hsm, wallet: str) -> None:
    """CVE-2020-14199: BIP143 signs only the input's own amount, so the HSM believes a
    P2WPKH amount only from the transaction that created the coin. No option lifts it."""
    psbt = pay(bhsm, 500_000)
    del psbt.inputs[0][key(I_NON_WITNESS_UTXO)]
    with pytest.raises(DecodeError, match="input 0 needs its previous transaction"):
        bhsm.sign_now(wallet, psbt.serialize(), PT)
    with pytest.raises(TypeError):
        BitcoinPsbtDecoder(NET, require_prev_tx=False)  # type: ignore[call-arg]


def test_understated_p2wpkh_amount_is_refused(bhsm: Hsm, wallet: str) -> None:
    psbt = pay(bhsm, 500_000, kinds=(ScriptKind.P2WPKH, ScriptKind.P2WPKH),
               coin_amount=300_000)
    utxo = psbt.witness_utxo(1)
    assert utxo is not None and len(psbt.inputs) == 2
    psbt.inputs[1][key(I_WITNESS_UTXO)] = TxOut(100_000, utxo.script).serialize()
    with pytest.raises(DecodeError, match=r"input 1.*\(100000 sat claimed.*holds 300000 sat"):
        bhsm.sign_now(wallet, psbt.serialize(), PT)


def test_previous_transaction_must_be_the_one_spent(bhsm: Hsm, wallet: str) -> None:
    psbt = pay(bhsm, 500_000)
    utxo = psbt.witness_utxo(0)
    assert utxo is not None
    # A made-up transaction agreeing with a lie: it does not hash to the outpoint's txid.
    psbt.inputs[0][key(I_NON_WITNESS_UTXO)] = prev_tx("forged", [utxo])
    with pytest.raises(DecodeError, match="does not hash to the txid"):
        DECODER.decode(psbt.serialize(), _view(bhsm))
    # The right transaction, but the outpoint names an output it does not have.
    honest = pay(bhsm, 500_000)
    mtx = CMutableTransaction.from_tx(honest.tx)
    mtx.vin[0].prevout = COutPoint(mtx.vin[0].prevout.hash, 7)
    honest.tx = CTransaction.from_tx(mtx)
    with pytest.raises(DecodeError, match="no output 7"):
        DECODER.decode(honest.serialize(), _view(bhsm))


def test_previous_transaction_with_its_witness_is_accepted(bhsm: Hsm, wallet: str) -> None:
    """BIP174 allows either serialization (Core writes it without the witness); the txid
    is the same, so the proof is."""
    psbt = pay(bhsm, 500_000)
    prev = CTransaction.deserialize(psbt.inputs[0][key(I_NON_WITNESS_UTXO)])
    wit = CTxWitness([CTxInWitness(CScriptWitness([b"\x01" * 72]))])
    with_witness = CTransaction(prev.vin, prev.vout, prev.nLockTime, prev.nVersion, wit)
    psbt.inputs[0][key(I_NON_WITNESS_UTXO)] = bytes(with_witness.serialize())
    assert DECODER.decode(psbt.serialize(), _view(bhsm)).total("BTC") == 500_000


def test_taproot_input_needs_no_previous_transaction_but_one_given_must_agree(
        bhsm: Hsm, wallet: str) -> None:
    """BIP341 signs every input's amount and script, so a lie would only void the
    signature; a previous transaction given anyway is still checked."""
    at = functools.partial(bhsm.public_key, wallet)
    lone = coin(at, "0/0", 800_000, ScriptKind.P2TR)
    carried = coin(at, "0/1", 800_000, ScriptKind.P2TR, with_prev=True)
    change = ChangeKey("1/0", at("1/0"))
    for c in (lone, carried):
        psbt = build_psbt(NET, [c], [Payment(outsider_address(bhsm), 500_000)], change, 3,
                          fp(bhsm))
        assert (key(I_NON_WITNESS_UTXO) in psbt.inputs[0]) is (c is carried)
        result = bhsm.sign_now(wallet, psbt.serialize(), PT)
        assert signed_ok(psbt, result.signatures)
    psbt.inputs[0][key(I_WITNESS_UTXO)] = TxOut(700_000, carried.script).serialize()
    with pytest.raises(DecodeError, match="disagrees"):
        DECODER.decode(psbt.serialize(), _view(bhsm))


def test_other_sighash_types_are_refused(bhsm: Hsm, wallet: str) -> None:
    psbt = pay(bhsm, 500_000)
    psbt.inputs[0][key(I_SIGHASH_TYPE)] = (0x83).to_bytes(4, "little")
    with pytest.raises(DecodeError, match="sighash"):
        bhsm.sign_now(wallet, psbt.serialize(), PT)


def test_op_return_is_shown_with_its_data(bhsm: Hsm, wallet: str) -> None:
    from bitcoin.core import CMutableTransaction, CTransaction, CTxOut
    from bitcoin.core.script import CScript

    psbt = pay(bhsm, 500_000)
    mtx = CMutableTransaction.from_tx(psbt.tx)
    mtx.vout.append(CTxOut(0, CScript(b"\x6a\x04memo")))
    psbt.tx = CTransaction.from_tx(mtx)
    psbt.outputs.append({})
    result = bhsm.sign_now(wallet, psbt.serialize(), PT)
    assert result.intent is not None
    assert result.intent.transfers[-1].destination == "OP_RETURN:" + b"\x04memo".hex()
    assert signed_ok(psbt, result.signatures)


# -- fee bumps keep approvals --------------------------------------------------------------


def test_fee_bump_keeps_approvals_and_a_changed_destination_is_refused(
        bhsm: Hsm, wallet: str, people: dict[str, Approver]) -> None:
    psbt = pay(bhsm, 2_000_000, kinds=(ScriptKind.P2WPKH, ScriptKind.P2TR))
    ch = bhsm.begin(wallet, payload=psbt.serialize(), payload_type=PT, fee_cap=50_000)
    approvals = [people["t1"].approve(ch.envelope), people["t3"].approve(ch.envelope)]
    bumped = bump_fee(psbt, 30, fp(bhsm))
    # The broker swaps the destination in the "bump": the HSM refuses it.
    evil = bump_fee(psbt, 30, fp(bhsm))
    from bitcoin.core import CMutableTransaction, CTransaction, CTxOut
    from bitcoin.core.script import CScript

    mtx = CMutableTransaction.from_tx(evil.tx)
    mtx.vout[0] = CTxOut(mtx.vout[0].nValue, CScript(p2wpkh_script(bhsm.public_key("other", "6"))))
    evil.tx = CTransaction.from_tx(mtx)
    with pytest.raises(IntentMismatch):
        bhsm.execute(ch.request_id, approvals, payload=evil.serialize())
    result = bhsm.execute(ch.request_id, approvals, payload=bumped.serialize())
    assert result.intent is not None and result.intent.fee > 0
    assert signed_ok(bumped, result.signatures)
    # Every non-change output is identical; only the change paid for the bump.
    assert [bytes(o.serialize()) for o in bumped.tx.vout[:1]] == \
        [bytes(o.serialize()) for o in psbt.tx.vout[:1]]
    assert bumped.tx.vout[1].nValue < psbt.tx.vout[1].nValue


def test_fee_bump_above_the_cap_is_refused(bhsm: Hsm, wallet: str,
                                           people: dict[str, Approver]) -> None:
    psbt = pay(bhsm, 2_000_000)
    ch = bhsm.begin(wallet, payload=psbt.serialize(), payload_type=PT)  # cap = its fee
    approvals = [people["t1"].approve(ch.envelope), people["t2"].approve(ch.envelope)]
    with pytest.raises(IntentMismatch, match="cap"):
        bhsm.execute(ch.request_id, approvals, payload=bump_fee(psbt, 50, fp(bhsm)).serialize())


# -- the decoder's own guards ------------------------------------------------------------------


def test_payload_type_names_the_network() -> None:
    assert BitcoinPsbtDecoder("mainnet").payload_type == "BITCOIN_PSBT:mainnet"
    assert BitcoinPsbtDecoder("signet").payload_type == "BITCOIN_PSBT:signet"


def test_mainnet_decoder_renders_mainnet_addresses(bhsm: Hsm, wallet: str) -> None:
    psbt = pay(bhsm, 500_000)
    intent = BitcoinPsbtDecoder("mainnet").decode(psbt.serialize(), bhsm.records.view(bhsm.records.state(wallet)))
    assert intent.network == "mainnet"
    assert intent.transfers[0].destination == bhsm.address("other", "p2wpkh", "mainnet", "0/0")


def test_payload_for_another_network_has_no_decoder(bhsm: Hsm, wallet: str) -> None:
    with pytest.raises(DecodeError):
        bhsm.sign_now(wallet, pay(bhsm, 500_000).serialize(), "BITCOIN_PSBT:mainnet")


def test_oversized_payload_is_refused(bhsm: Hsm, wallet: str) -> None:
    decoder = BitcoinPsbtDecoder(NET)
    with pytest.raises(DecodeError):
        decoder.decode(b"psbt\xff" + bytes(1024 * 1024), bhsm.records.view(bhsm.records.state(wallet)))
