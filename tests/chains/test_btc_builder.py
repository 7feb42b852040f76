"""Building, coin selection, fee bumps and assembly - checked by Bitcoin Core's verdict."""

from __future__ import annotations

from dataclasses import replace

import pytest
from bitcoin.core import CTransaction, CTxInWitness, CTxWitness
from bitcoin.core.script import CScriptWitness

from chains.bitcoin import BitcoinPsbtDecoder, ChangeKey, Payment, Psbt, build_psbt, bump_fee
from chains.bitcoin.assemble import finalize
from chains.bitcoin.coins import DUST_CHANGE, RBF_SEQUENCE, dust_threshold, vsize
from chains.bitcoin.ownership import key_fingerprint
from chains.bitcoin.psbt import I_NON_WITNESS_UTXO, I_PARTIAL_SIG, key
from chains.bitcoin.scripts import ScriptKind
from chains.errors import BuildError, InsufficientFunds
from hsm_emulator.addresses import AddressKind, Network, address
from hsm_emulator.keys import KeyMaterial, MaterialView
from hsm_emulator.model import KeyAlgorithm
from tests.chains.test_btc_support import coin, core_accepts, spent_outputs, weight

MATERIAL = KeyMaterial.generate(KeyAlgorithm.SECP256K1)
VIEW = MaterialView(MATERIAL, may_derive=True)
FP = key_fingerprint(VIEW.public_key())
DEST = address(AddressKind.P2WPKH, Network.REGTEST,
               KeyMaterial.generate(KeyAlgorithm.SECP256K1).public_key)
DECODER = BitcoinPsbtDecoder("regtest")


def build(amounts: list[int], pay: int, rate: float = 2, *, kind: ScriptKind = ScriptKind.P2WPKH,
          change_kind: ScriptKind = ScriptKind.P2WPKH) -> Psbt:
    coins = [coin(VIEW.public_key, f"0/{i}", a, kind) for i, a in enumerate(amounts)]
    change = ChangeKey("1/3", VIEW.public_key("1/3"), change_kind)
    return build_psbt("regtest", coins, [Payment(DEST, pay)], change, rate, FP)


def sign(psbt: Psbt) -> bytes:
    """Sign as the HSM would: the decoder's items, with the key at each item's path."""
    _, items = DECODER.prepare(psbt.serialize(), VIEW)
    sigs = [MATERIAL.derive(i.path).sign(i.scheme, i.data, i.tweak) for i in items]
    return finalize(psbt, sigs)


@pytest.mark.parametrize("kind", [ScriptKind.P2WPKH, ScriptKind.P2TR])
@pytest.mark.parametrize("n_inputs", [1, 3])
def test_signed_build_passes_core_and_vsize_estimate_is_tight(kind: ScriptKind,
                                                              n_inputs: int) -> None:
    psbt = build([100_000] * n_inputs, 100_000 * n_inputs - 60_000, 7, kind=kind)
    assert len(psbt.tx.vin) == n_inputs
    raw = sign(psbt)
    assert core_accepts(raw, spent_outputs(psbt))
    actual = (weight(raw) + 3) // 4
    estimate = vsize([kind] * n_inputs, [bytes(o.scriptPubKey) for o in psbt.tx.vout])
    assert actual <= estimate <= actual + n_inputs
    fee = sum(s.amount for s in spent_outputs(psbt)) - sum(o.nValue for o in psbt.tx.vout)
    assert fee == -(-estimate * 7 // 1)  # ceil(vsize x rate)


def test_core_rejects_a_tampered_signature() -> None:
    """Negative control for the outside check itself."""
    psbt = build([200_000], 50_000)
    raw = bytearray(sign(psbt))
    raw[-40] ^= 1  # inside the witness public key / signature area
    assert not core_accepts(bytes(raw), spent_outputs(psbt))


def test_transaction_shape_rbf_version_and_change_record() -> None:
    psbt = build([300_000], 100_000)
    assert psbt.tx.nVersion == 2
    assert all(i.nSequence == RBF_SEQUENCE for i in psbt.tx.vin)
    assert len(psbt.tx.vout) == 2 and psbt.output_derivations(1)
    intent = DECODER.decode(psbt.serialize(), VIEW)
    assert intent.total("BTC") == 100_000
    assert dict(intent.details)["change"] == str(psbt.tx.vout[1].nValue)


def test_largest_coins_first_and_only_as_many_as_needed() -> None:
    psbt = build([10_000, 500_000, 20_000, 400_000], 450_000)
    assert len(psbt.tx.vin) == 1
    assert spent_outputs(psbt)[0].amount == 500_000


def test_dust_change_goes_to_the_fee() -> None:
    fee_one_out = -(-vsize([ScriptKind.P2WPKH], [b"\0" * 22]) * 2 // 1)
    psbt = build([100_000], 100_000 - fee_one_out - (DUST_CHANGE - 1))
    assert len(psbt.tx.vout) == 1  # no change output
    intent = DECODER.decode(psbt.serialize(), VIEW)
    assert intent.fee == fee_one_out + DUST_CHANGE - 1


def test_insufficient_funds_and_dust_payments_are_refused() -> None:
    with pytest.raises(InsufficientFunds):
        build([10_000, 20_000], 30_000)
    with pytest.raises(BuildError, match="dust"):
        build([100_000], 293)  # P2WPKH dust threshold is 294 sat at 3 sat/vB
    assert dust_threshold(b"\x00\x14" + bytes(20)) == 294
    assert dust_threshold(b"\x76\xa9\x14" + bytes(20) + b"\x88\xac") == 546


def test_coin_whose_script_is_not_its_key_is_refused() -> None:
    good = coin(VIEW.public_key, "0/0", 100_000)
    bad = type(good)(good.txid, 0, good.amount, good.script, "0/1", VIEW.public_key("0/1"))
    with pytest.raises(BuildError, match="not the key"):
        build_psbt("regtest", [bad], [Payment(DEST, 10_000)],
                   ChangeKey("1/0", VIEW.public_key("1/0")), 1, FP)


def test_p2wpkh_coin_needs_its_previous_transaction() -> None:
    """The HSM refuses a P2WPKH input it cannot prove; the builder refuses it first."""
    bare = replace(coin(VIEW.public_key, "0/0", 100_000), prev_tx=None)
    with pytest.raises(BuildError, match="needs its previous transaction"):
        build_psbt("regtest", [bare], [Payment(DEST, 10_000)],
                   ChangeKey("1/0", VIEW.public_key("1/0")), 1, FP)


@pytest.mark.parametrize("lie", ["amount", "index", "other transaction"])
def test_previous_transaction_that_is_not_the_coins_is_refused(lie: str) -> None:
    good = coin(VIEW.public_key, "0/0", 100_000)
    bad = {"amount": replace(good, amount=90_000),
           "index": replace(good, vout=1),
           "other transaction": replace(good, prev_tx=coin(VIEW.public_key, "0/1",
                                                             100_000).prev_tx)}[lie]
    with pytest.raises(BuildError, match=bad.txid):
        build_psbt("regtest", [bad], [Payment(DEST, 10_000)],
                   ChangeKey("1/0", VIEW.public_key("1/0")), 1, FP)


def test_previous_transaction_is_carried_without_its_witness() -> None:
    """As Bitcoin Core writes ``non_witness_utxo``: the witness is not what the txid
    hashes, and only makes the payload bigger. Taproot coins need none."""
    plain = coin(VIEW.public_key, "0/0", 300_000)
    assert plain.prev_tx is not None
    prev = CTransaction.deserialize(plain.prev_tx)
    wit = CTxWitness([CTxInWitness(CScriptWitness([b"\x02" * 64]))])
    fat = CTransaction(prev.vin, prev.vout, prev.nLockTime, prev.nVersion, wit).serialize()
    taproot = coin(VIEW.public_key, "0/1", 300_000, ScriptKind.P2TR)
    psbt = build_psbt("regtest", [replace(plain, prev_tx=fat), taproot],
                      [Payment(DEST, 500_000)], ChangeKey("1/0", VIEW.public_key("1/0")), 2, FP)
    carried = {spent.script: m.get(key(I_NON_WITNESS_UTXO))
               for spent, m in zip(spent_outputs(psbt), psbt.inputs, strict=True)}
    assert carried == {plain.script: plain.prev_tx, taproot.script: None}
    assert core_accepts(sign(psbt), spent_outputs(psbt))


# -- fee bumps ---------------------------------------------------------------------------


def test_bump_keeps_inputs_and_payments_and_pays_bip125_increment() -> None:
    psbt = build([300_000, 200_000], 350_000, 2, change_kind=ScriptKind.P2TR)
    psbt.inputs[0][key(I_PARTIAL_SIG, VIEW.public_key("0/0"))] = b"old signature"
    old = DECODER.decode(psbt.serialize(), VIEW)
    bumped = bump_fee(psbt, 2.5, FP)  # a tiny rate rise still pays BIP125's increment
    new = DECODER.decode(bumped.serialize(), VIEW)
    assert new.binding() == old.binding()
    size = vsize([ScriptKind.P2WPKH] * 2, [bytes(o.scriptPubKey) for o in psbt.tx.vout])
    assert new.fee >= old.fee + size
    assert [i.serialize() for i in bumped.tx.vin] == [i.serialize() for i in psbt.tx.vin]
    assert key(I_PARTIAL_SIG, VIEW.public_key("0/0")) not in bumped.inputs[0]
    assert core_accepts(sign(bumped), spent_outputs(bumped))


def test_bump_drops_change_that_would_be_dust() -> None:
    psbt = build([100_000], 90_000, 1)
    change = psbt.tx.vout[1].nValue
    bumped = bump_fee(psbt, (change + 200) / 140, FP)
    assert len(bumped.tx.vout) == 1 and len(bumped.outputs) == 1
    assert DECODER.decode(bumped.serialize(), VIEW).fee == 100_000 - 90_000


def test_bump_that_change_cannot_pay_is_refused() -> None:
    psbt = build([100_000], 90_000, 1)
    with pytest.raises(BuildError, match="another input"):
        bump_fee(psbt, 1000, FP)


def test_bump_needs_one_change_output() -> None:
    psbt = build([100_000], 90_000, 1)
    with pytest.raises(BuildError, match="exactly one change"):
        bump_fee(psbt, 5, b"\x01\x02\x03\x04")


# -- assembly ------------------------------------------------------------------------------


def test_finalize_refuses_wrong_or_missing_signatures() -> None:
    psbt = build([100_000, 100_000], 150_000, kind=ScriptKind.P2TR)
    _, items = DECODER.prepare(psbt.serialize(), VIEW)
    sigs = [MATERIAL.derive(i.path).sign(i.scheme, i.data, i.tweak) for i in items]
    with pytest.raises(BuildError):
        finalize(psbt, sigs[:1])
    with pytest.raises(BuildError, match="does not verify"):
        finalize(psbt, list(reversed(sigs)))
    p2wpkh = build([100_000], 50_000)
    _, items = DECODER.prepare(p2wpkh.serialize(), VIEW)
    wrong = MATERIAL.sign(items[0].scheme, items[0].data)  # the root key, not 0/0
    with pytest.raises(BuildError, match="does not verify"):
        finalize(p2wpkh, [wrong])
