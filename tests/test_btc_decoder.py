"""The PSBT decoder inside a real HSM: ownership proofs, tiers, fee bumps, Core's verdict.

Every signed transaction is assembled with :func:`finalize` and verified by Bitcoin
Core's consensus code (py-bitcoinkernel), not by our own sighash code.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
from tests.conftest import SO, TEST_PASSPHRASE
from tests.helpers import Approver, tiered_policy
from tests.test_btc_support import coin, core_accepts, spent_outputs

NET = "regtest"
PT = f"BITCOIN_PSBT:{NET}"
SMALL, MEDIUM = 1_000_000, 50_000_000  # 0.01 BTC auto-signs, 0.5 BTC needs two traders


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
    bhsm.create_key("btc", "SECP256K1", policy=tiered_policy(
        traders, [people["c1"]], asset="BTC", small=SMALL, medium=MEDIUM))
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
    psbt = pay(bhsm, 500_000)
    foreign = bhsm.public_key("other", "0/0")
    psbt.inputs[0][key(I_WITNESS_UTXO)] = TxOut(80_000_000, p2wpkh_script(foreign)).serialize()
    with pytest.raises(DecodeError, match="not proven to be a coin"):
        bhsm.sign_now(wallet, psbt.serialize(), PT)


def test_input_without_witness_utxo_is_refused(bhsm: Hsm, wallet: str) -> None:
    psbt = pay(bhsm, 500_000)
    del psbt.inputs[0][key(I_WITNESS_UTXO)]
    with pytest.raises(DecodeError, match="no witness_utxo"):
        bhsm.sign_now(wallet, psbt.serialize(), PT)


def test_non_witness_utxo_must_agree(bhsm: Hsm, wallet: str) -> None:
    from bitcoin.core import COutPoint, CTransaction, CTxIn, CTxOut
    from bitcoin.core.script import CScript

    psbt = pay(bhsm, 500_000)
    utxo = psbt.witness_utxo(0)
    assert utxo is not None

    def prev_with(amount: int) -> bytes:
        tx = CTransaction([CTxIn(COutPoint(b"\x11" * 32, 0))],
                          [CTxOut(amount, CScript(utxo.script))], 0, 2)
        return bytes(tx.serialize())

    # A previous transaction whose txid is the outpoint's, agreeing: accepted.
    good = prev_with(utxo.amount)
    from bitcoin.core import CMutableTransaction, CMutableTxIn

    mtx = CMutableTransaction.from_tx(psbt.tx)
    mtx.vin[0] = CMutableTxIn(COutPoint(CTransaction.deserialize(good).GetTxid(), 0),
                              nSequence=psbt.tx.vin[0].nSequence)
    psbt.tx = CTransaction.from_tx(mtx)
    psbt.inputs[0][key(I_NON_WITNESS_UTXO)] = good
    decoder = BitcoinPsbtDecoder(NET, require_prev_tx=True)
    view = bhsm._view(bhsm._state(wallet))
    assert decoder.decode(psbt.serialize(), view).total("BTC") == 500_000
    # Disagreeing amount: a different txid, so it is not the spent transaction at all.
    psbt.inputs[0][key(I_NON_WITNESS_UTXO)] = prev_with(utxo.amount + 1)
    with pytest.raises(DecodeError, match="non_witness_utxo"):
        decoder.decode(psbt.serialize(), view)
    del psbt.inputs[0][key(I_NON_WITNESS_UTXO)]
    with pytest.raises(DecodeError, match="previous transaction"):
        decoder.decode(psbt.serialize(), view)


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
    intent = BitcoinPsbtDecoder("mainnet").decode(psbt.serialize(), bhsm._view(bhsm._state(wallet)))
    assert intent.network == "mainnet"
    assert intent.transfers[0].destination == bhsm.address("other", "p2wpkh", "mainnet", "0/0")


def test_payload_for_another_network_has_no_decoder(bhsm: Hsm, wallet: str) -> None:
    with pytest.raises(DecodeError):
        bhsm.sign_now(wallet, pay(bhsm, 500_000).serialize(), "BITCOIN_PSBT:mainnet")


def test_oversized_payload_is_refused(bhsm: Hsm, wallet: str) -> None:
    decoder = BitcoinPsbtDecoder(NET)
    with pytest.raises(DecodeError):
        decoder.decode(b"psbt\xff" + bytes(1024 * 1024), bhsm._view(bhsm._state(wallet)))
