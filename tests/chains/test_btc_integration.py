"""Bitcoin end to end: an HSM wallet on the regtest node, spent only under its policy.

Coins are mined to HSM-derived addresses; transfers are built by the adapter from the
node's UTXO set, decoded and signed by the HSM under the tiered policy, broadcast, and
mined - and the node accepts blocks only through Bitcoin Core's own validation
(libbitcoinkernel via py-bitcoinkernel), so a confirmed transaction is one Core accepted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chains.base import Source, TransferRequest
from chains.bitcoin.adapter import BitcoinAdapter
from chains.bitcoin.decoder import BitcoinPsbtDecoder
from chains.bitcoin.node import RegtestNode, RpcServer
from chains.bitcoin.rpc import BitcoinRpc
from chains.bitcoin.scripts import ScriptKind
from chains.errors import BroadcastRejected, InvalidAddress
from hsm_emulator import Action, Hsm, ManualClock
from hsm_emulator.decoders import DecoderRegistry
from hsm_emulator.errors import PolicyNotMet
from tests.conftest import SO, TEST_PASSPHRASE
from tests.helpers import Approver, tiered_policy

pytestmark = pytest.mark.node

BTC = 100_000_000
BURN = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"  # BIP173's example program, regtest
MAX_FEE = 50_000  #: sat, every tier: room for the 25 sat/vB fee bump below


def regtest(policy: dict[str, Any]) -> dict[str, Any]:
    """The policy for a key that signs on this network only."""
    return {**policy, "networks": ["bitcoin:regtest"]}


@pytest.fixture(scope="module")
def rpc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BitcoinRpc]:
    node = RegtestNode(tmp_path_factory.mktemp("btc") / "node")
    server = RpcServer(node, 0, "desk", "regtest-password")
    server.start()
    yield BitcoinRpc(f"http://127.0.0.1:{server.port}", "desk", "regtest-password", timeout=30)
    server.shutdown()
    server.server_close()


@pytest.fixture
def wallet(tmp_path: Path, rpc: BitcoinRpc,
           people: dict[str, Approver]) -> Iterator[tuple[Hsm, BitcoinAdapter]]:
    hsm = Hsm.open(tmp_path / "hsm.sqlite", TEST_PASSPHRASE, so_passphrase=SO,
                   clock=ManualClock(), decoders=DecoderRegistry([BitcoinPsbtDecoder("regtest")]))
    hsm.create_key("btc", "SECP256K1", policy=regtest(tiered_policy(
        [people["t1"], people["t2"], people["t3"]], [people["c1"]], asset="BTC", small=1 * BTC,
        medium=50 * BTC, max_fee=MAX_FEE)))
    yield hsm, BitcoinAdapter("regtest", rpc, hsm.public_key)
    hsm.close()


def fund(rpc: BitcoinRpc, adapter: BitcoinAdapter, paths: list[str]) -> None:
    for path in paths:
        rpc.generatetoaddress(1, adapter.address_at("btc", path))
    rpc.generatetoaddress(100, BURN)  # coinbase maturity


def mine_and_check(rpc: BitcoinRpc, adapter: BitcoinAdapter, txid: str) -> None:
    height = rpc.getblockcount()
    block_hash = rpc.generatetoaddress(1, BURN)[0]
    assert rpc.getblockcount() == height + 1  # Core's validation accepted the block
    assert txid in rpc.call("getblock", block_hash, 1)["tx"]
    assert adapter.confirmation(txid).included


def test_small_and_medium_transfers_confirm(wallet: tuple[Hsm, BitcoinAdapter], rpc: BitcoinRpc,
                                            people: dict[str, Approver]) -> None:
    hsm, adapter = wallet
    fund(rpc, adapter, ["0/0", "0/1"])
    source = Source("btc", hsm.public_key("btc"))

    small = adapter.build_transfer(source, TransferRequest("BTC", BTC // 2, BURN))
    signed = hsm.sign_now("btc", small.payload, small.payload_type)
    assert signed.token == "small" and signed.intent is not None
    assert signed.intent.transfers == small.intent.transfers  # HSM decoded what was meant
    txid = adapter.broadcast(adapter.assemble(small, signed.signatures))
    mine_and_check(rpc, adapter, txid)

    medium = adapter.build_transfer(source, TransferRequest("BTC", 20 * BTC, BURN))
    with pytest.raises(PolicyNotMet):
        hsm.sign_now("btc", medium.payload, medium.payload_type)
    ch = hsm.begin("btc", Action.USE, medium.payload, medium.payload_type,
                   fee_cap=medium.fee_cap)
    result = hsm.execute(ch.request_id, [people["t1"].approve(ch.envelope),
                                         people["t3"].approve(ch.envelope)])
    txid = adapter.broadcast(adapter.assemble(medium, result.signatures))
    mine_and_check(rpc, adapter, txid)
    # change came back to a fresh change address of the wallet, and is spendable
    assert any(c.path.startswith("1/") for c in adapter.coins("btc"))


def test_replace_by_fee(wallet: tuple[Hsm, BitcoinAdapter], rpc: BitcoinRpc) -> None:
    hsm, adapter = wallet
    fund(rpc, adapter, ["0/2"])
    source = Source("btc", hsm.public_key("btc"))
    first = adapter.build_transfer(source, TransferRequest("BTC", BTC // 4, BURN))
    raw1 = adapter.assemble(first, hsm.sign_now("btc", first.payload,
                                                first.payload_type).signatures)
    txid1 = adapter.broadcast(raw1)
    bumped = adapter.bump(first, "btc", 25.0)
    assert bumped.intent.transfers == first.intent.transfers and bumped.intent.fee > first.intent.fee
    raw2 = adapter.assemble(bumped, hsm.sign_now("btc", bumped.payload,
                                                 bumped.payload_type).signatures)
    txid2 = adapter.broadcast(raw2)
    assert txid2 != txid1
    mine_and_check(rpc, adapter, txid2)
    with pytest.raises(BroadcastRejected):  # the replaced one can never confirm now
        adapter.broadcast(raw1)


def test_taproot_wallet(tmp_path: Path, rpc: BitcoinRpc, people: dict[str, Approver]) -> None:
    hsm = Hsm.open(tmp_path / "hsm.sqlite", TEST_PASSPHRASE, so_passphrase=SO,
                   decoders=DecoderRegistry([BitcoinPsbtDecoder("regtest")]))
    hsm.create_key("btc", "SECP256K1", policy=regtest(tiered_policy(
        [people["t1"], people["t2"]], [people["c1"]], asset="BTC", small=1 * BTC,
        max_fee=MAX_FEE)))
    adapter = BitcoinAdapter("regtest", rpc, hsm.public_key, kind=ScriptKind.P2TR)
    assert adapter.address_at("btc", "0/0").startswith("bcrt1p")
    fund(rpc, adapter, ["0/0"])
    tx = adapter.build_transfer(Source("btc", hsm.public_key("btc")),
                                TransferRequest("BTC", BTC // 3, BURN))
    signed = hsm.sign_now("btc", tx.payload, tx.payload_type)
    assert all(len(s) == 64 for s in signed.signatures)  # BIP340 Schnorr
    txid = adapter.broadcast(adapter.assemble(tx, signed.signatures))
    mine_and_check(rpc, adapter, txid)
    hsm.close()


def test_wrong_network_address_refused_before_building(wallet: tuple[Hsm, BitcoinAdapter]) -> None:
    hsm, adapter = wallet
    mainnet = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"
    with pytest.raises(InvalidAddress):
        adapter.build_transfer(Source("btc", hsm.public_key("btc")),
                               TransferRequest("BTC", 1000, mainnet))
