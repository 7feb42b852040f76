"""CVE-2020-14199 against the HSM: segwit v0 input amounts must be proven, not believed.

BIP143 signs only the amount of the input being signed. A compromised broker sends two
requests over the same two P2WPKH coins of 50 BTC, one transaction, each request
under-stating the *other* coin's amount: each decodes to a 0.5 BTC payment and a
10,000 sat fee, inside the small tier and the shipped policy's 0.0005 BTC ``maxFee``, and
auto-signs. The honest signature of each (input 0 from the first, input 1 from the
second) make one valid transaction whose real fee is 49 BTC.

Here, on the regtest node (blocks accepted only through Bitcoin Core's consensus code,
libbitcoinkernel): the decoder as it was - ``witness_utxo`` believed, rebuilt below as
:class:`TrustingDecoder` - signs both, and Core mines the combined transaction paying
49 BTC to the miner. The production decoder refuses both requests (and every way of
dressing the lie up), because a P2WPKH input is signed only with the transaction that
created its coin, which hashes to the outpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import coincurve
import pytest
from bitcoin.core import CMutableTransaction, CTransaction

from chains.bitcoin.adapter import BitcoinAdapter
from chains.bitcoin.addresses import script_to_address
from chains.bitcoin.assemble import finalize
from chains.bitcoin.builder import ChangeKey, Payment, build_psbt
from chains.bitcoin.coins import Utxo
from chains.bitcoin.decoder import BitcoinPsbtDecoder
from chains.bitcoin.node import RegtestNode, RpcServer
from chains.bitcoin.ownership import key_fingerprint
from chains.bitcoin.psbt import I_NON_WITNESS_UTXO, I_WITNESS_UTXO, Psbt, key, without_witness
from chains.bitcoin.rpc import BitcoinRpc, RpcCallError, btc_to_sats
from chains.bitcoin.scripts import ScriptKind, p2wpkh_script
from chains.bitcoin.wire import TxOut
from chains.errors import BuildError
from custody.treasury.policy import AssetInfo, treasury_policy
from hsm_emulator import Hsm
from hsm_emulator.decoders import DecoderRegistry
from hsm_emulator.errors import DecodeError, PolicyNotMet
from tests.chains.test_btc_support import core_accepts, prev_tx, spent_outputs
from tests.conftest import SO, TEST_PASSPHRASE
from tests.helpers import Approver

pytestmark = pytest.mark.node

NET, PT = "regtest", "BITCOIN_PSBT:regtest"
BTC = 100_000_000
BURN = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"  # BIP173's example program, regtest
PAID, CHANGE = BTC // 2, 50 * BTC + BTC // 2  #: what the combined transaction pays out
CLAIMED_FEE = 10_000  #: sat: what each lying request shows, under the 50,000 sat cap


class TrustingDecoder(BitcoinPsbtDecoder):
    """The decoder before the fix: a P2WPKH input's amount is what ``witness_utxo``
    says (a ``non_witness_utxo`` was checked only when the broker chose to send one)."""

    def _spent(self, psbt: Psbt, i: int) -> TxOut:
        utxo = psbt.witness_utxo(i)
        assert utxo is not None
        return utxo


@pytest.fixture(scope="module")
def rpc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BitcoinRpc]:
    node = RegtestNode(tmp_path_factory.mktemp("btc") / "node")
    server = RpcServer(node, 0, "desk", "regtest-password")
    server.start()
    yield BitcoinRpc(f"http://127.0.0.1:{server.port}", "desk", "regtest-password", timeout=30)
    server.shutdown()
    server.server_close()


def shipped_policy(people: dict[str, Approver]) -> dict[str, Any]:
    """The treasury template the service ships, with the finding's 50,000 sat fee cap."""
    config = {"traders": [people[p].entry() for p in ("t1", "t2", "t3")],
              "compliance": [people["c1"].entry()], "maxFee": "0.0005",
              "tiers": {"BTC": {"small": "1", "medium": "50", "dailySmall": "5"}}}
    return treasury_policy(config, [AssetInfo("BTC", "BTC", 8)], network=f"bitcoin:{NET}")


@dataclass
class Wallet:
    hsm: Hsm
    adapter: BitcoinAdapter
    rpc: BitcoinRpc
    label: str = "btc"

    @classmethod
    def open(cls, path: Path, decoder: BitcoinPsbtDecoder, rpc: BitcoinRpc,
             people: dict[str, Approver]) -> Wallet:
        hsm = Hsm.open(path, TEST_PASSPHRASE, so_passphrase=SO,
                       decoders=DecoderRegistry([decoder]))
        hsm.create_key("btc", "SECP256K1", policy=shipped_policy(people))
        wallet = cls(hsm, BitcoinAdapter(NET, rpc, hsm.public_key), rpc)
        for path_ in ("0/0", "0/1"):  # two 50 BTC coinbase coins
            rpc.generatetoaddress(1, wallet.adapter.address_at("btc", path_))
        rpc.generatetoaddress(100, BURN)  # coinbase maturity
        return wallet

    def honest(self, coins: list[Utxo]) -> Psbt:
        """The one transaction both requests are about: 0.5 BTC out, 50.5 BTC back as
        (proven) change, 49 BTC left to the miner. Built by the wallet's own builder, then
        its outputs set the way a hostile broker would."""
        pub = self.hsm.public_key
        base = build_psbt(NET, coins, [Payment(attacker(), 60 * BTC)],
                          ChangeKey("1/0", pub(self.label, "1/0")), 2.0,
                          key_fingerprint(pub(self.label, "")))
        mtx = CMutableTransaction.from_tx(base.tx)
        mtx.vout[0].nValue, mtx.vout[1].nValue = PAID, CHANGE
        return Psbt(CTransaction.from_tx(mtx), base.globals, base.inputs, base.outputs)


def attacker() -> str:
    return script_to_address(NET, p2wpkh_script(coincurve.PrivateKey(b"\x07" * 32)
                                                .public_key.format()))


def understating(honest: Psbt, other: int, *, keep_prev_tx: bool = False,
                 forged_prev_tx: bool = False) -> Psbt:
    """``honest`` with input ``other``'s amount under-stated so the fee reads 10,000 sat."""
    real = spent_outputs(honest)
    fee = sum(s.amount for s in real) - PAID - CHANGE
    lie = TxOut(real[other].amount - fee + CLAIMED_FEE, real[other].script)
    inputs = [dict(m) for m in honest.inputs]
    inputs[other][key(I_WITNESS_UTXO)] = lie.serialize()
    if forged_prev_tx:  # a made-up transaction that agrees with the lie
        inputs[other][key(I_NON_WITNESS_UTXO)] = prev_tx("forged", [lie])
    elif not keep_prev_tx:
        del inputs[other][key(I_NON_WITNESS_UTXO)]
    return replace(honest, inputs=inputs)


@pytest.fixture
def coins_for(tmp_path: Path, rpc: BitcoinRpc, people: dict[str, Approver]) -> Iterator[Any]:
    """A funded wallet whose HSM decodes with ``decoder``, and its two coins."""
    opened: list[Hsm] = []

    def make(decoder: BitcoinPsbtDecoder) -> tuple[Wallet, list[Utxo]]:
        wallet = Wallet.open(tmp_path / f"{type(decoder).__name__}.sqlite", decoder, rpc,
                             people)
        opened.append(wallet.hsm)
        coins = wallet.adapter.coins(wallet.label)
        assert len(coins) == 2 and all(c.kind is ScriptKind.P2WPKH for c in coins)
        return wallet, coins
    yield make
    for hsm in opened:
        hsm.close()


def test_the_attack_was_real_before_the_fix(coins_for: Any, rpc: BitcoinRpc) -> None:
    wallet, coins = coins_for(TrustingDecoder(NET))
    honest = wallet.honest(coins)
    first, second = understating(honest, other=1), understating(honest, other=0)
    signed = []
    for request in (first, second):
        result = wallet.hsm.sign_now(wallet.label, request.serialize(), PT)  # auto tier
        assert result.intent is not None
        assert (result.intent.total("BTC"), result.intent.fee) == (PAID, CLAIMED_FEE)
        signed.append(result.signatures)
    with pytest.raises(BuildError, match="does not verify"):
        finalize(honest, signed[0])  # alone, each request's lie voids one signature
    # Input 0's signature from the request honest about input 0, input 1's likewise.
    raw = finalize(honest, [signed[0][0], signed[1][1]])
    real_fee = sum(s.amount for s in spent_outputs(honest)) - PAID - CHANGE
    assert real_fee == 49 * BTC
    assert core_accepts(raw, spent_outputs(honest))  # Core's script interpreter
    # and Core's block validation: the default maxfeerate is the sender's safety catch
    # (a hostile broker turns it off, or hands the transaction to a miner), not consensus.
    txid = rpc.sendrawtransaction(raw.hex(), maxfeerate=Decimal(0))
    block = rpc.generatetoaddress(1, BURN)[0]
    mined = rpc.call("getblock", block, 1)
    assert txid in mined["tx"]
    coinbase = rpc.getrawtransaction(mined["tx"][0], True)
    subsidy = 50 * BTC >> (mined["height"] // 150)
    assert sum(btc_to_sats(o["value"]) for o in coinbase["vout"]) == subsidy + 49 * BTC


def test_the_attack_is_refused_now(coins_for: Any) -> None:
    wallet, coins = coins_for(BitcoinPsbtDecoder(NET))
    assert all(c.prev_tx for c in coins)  # the adapter proves each P2WPKH coin
    honest_psbt = wallet.honest(coins)
    refusals = [
        ("needs its previous transaction", understating(honest_psbt, other=1)),
        ("disagrees", understating(honest_psbt, other=0, keep_prev_tx=True)),
        ("does not hash to the txid", understating(honest_psbt, other=1, forged_prev_tx=True)),
    ]
    for reason, request in refusals:
        with pytest.raises(DecodeError, match=reason):
            wallet.hsm.sign_now(wallet.label, request.serialize(), PT)
    # The truth decodes, and the fee cap holds it back: 49 BTC is not 0.0005 BTC.
    view = wallet.hsm.records.view(wallet.hsm.records.state(wallet.label))
    assert BitcoinPsbtDecoder(NET).decode(honest_psbt.serialize(), view).fee == 49 * BTC
    with pytest.raises(PolicyNotMet, match="fee"):
        wallet.hsm.sign_now(wallet.label, honest_psbt.serialize(), PT)


def test_the_adapter_takes_previous_transactions_from_the_node(coins_for: Any,
                                                               rpc: BitcoinRpc) -> None:
    """By ``getrawtransaction`` with the block hash ``scantxoutset`` gives, as on a Core
    node without ``-txindex``; carried without the witness, as Core writes a PSBT."""
    wallet, coins = coins_for(BitcoinPsbtDecoder(NET))
    scripts = [f"raw({c.script.hex()})" for c in coins]
    where = {u["txid"]: u["blockhash"] for u in rpc.scantxoutset(scripts)["unspents"]}
    for c in coins:
        raw = bytes.fromhex(rpc.getrawtransaction(c.txid, False, where[c.txid]))
        assert c.prev_tx == without_witness(raw)
        assert rpc.getrawtransaction(c.txid, True, where[c.txid])["in_active_chain"] is True
    other_block = rpc.getbestblockhash()
    with pytest.raises(RpcCallError, match="No such transaction found in the provided block"):
        rpc.getrawtransaction(coins[0].txid, False, other_block)
    assert all(c.prev_tx is None for c in wallet.adapter.coins(wallet.label, prev_txs=False))
