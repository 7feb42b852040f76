"""The regtest node on Bitcoin Core's kernel: mining, mempool, Core's rejections, restart.

Transactions are built and signed independently of the node's code, with
python-bitcoinlib (BIP143 sighash) and coincurve, plus a BIP341 key-path sighash
written here from the BIP's text.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from bitcoin.core import (
    CMutableTransaction,
    CMutableTxIn,
    CMutableTxOut,
    COutPoint,
    CScriptWitness,
    CTxInWitness,
    CTxWitness,
    lx,
)
from bitcoin.core.script import SIGHASH_ALL, SIGVERSION_WITNESS_V0, CScript, SignatureHash
from coincurve import PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from chains.bitcoin import blocks as wire
from chains.bitcoin.addresses import decode_segwit, script_to_address
from chains.bitcoin.node import RegtestNode, RpcServer, miner
from chains.bitcoin.node.descriptor import DescriptorError, checksum, strip_checksum
from chains.bitcoin.node.policy import TxDecodeFailed, decode
from chains.bitcoin.node.server import handle_one
from chains.bitcoin.rpc import BitcoinRpc, RpcBroadcastRejected, RpcCallError, btc_to_sats
from chains.errors import BroadcastRejected
from chains.errors import InvalidAddress as AddressError

pytestmark = pytest.mark.node

ROOT = Path(__file__).resolve().parents[2]
VECTORS = Path(__file__).parents[1] / "vectors"
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
FEE = 2_000


def hash160(data: bytes) -> bytes:
    return hashlib.new("ripemd160", hashlib.sha256(data).digest()).digest()


def tagged(tag: str, msg: bytes) -> bytes:
    t = hashlib.sha256(tag.encode()).digest()
    return hashlib.sha256(t + t + msg).digest()


@dataclass
class Key:
    priv: PrivateKey

    @property
    def pub(self) -> bytes:
        return bytes(self.priv.public_key.format())

    @property
    def p2wpkh(self) -> bytes:
        return b"\x00\x14" + hash160(self.pub)

    @property
    def address(self) -> str:
        return script_to_address("regtest", self.p2wpkh)

    def taproot_tweaked(self) -> tuple[PrivateKey, bytes]:
        """BIP86-style key-path output key (no script tree): Q = P + H_TapTweak(P)G."""
        d = int.from_bytes(self.priv.secret, "big")
        if self.pub[0] == 3:
            d = N - d
        xonly = self.pub[1:]
        tweaked = (d + int.from_bytes(tagged("TapTweak", xonly), "big")) % N
        key = PrivateKey(tweaked.to_bytes(32, "big"))
        return key, b"\x51\x20" + bytes(key.public_key.format())[1:]


@dataclass(frozen=True)
class Utxo:
    txid: str
    vout: int
    value: int
    script: bytes


def spend_p2wpkh(key: Key, coins: list[Utxo], outputs: list[tuple[bytes, int]]) -> str:
    """Signed with python-bitcoinlib's BIP143 SignatureHash and coincurve ECDSA."""
    tx = CMutableTransaction(
        [CMutableTxIn(COutPoint(lx(c.txid), c.vout), nSequence=0xFFFFFFFD) for c in coins],
        [CMutableTxOut(v, CScript(s)) for s, v in outputs],
        nVersion=2,
    )
    code = CScript(b"\x76\xa9\x14" + hash160(key.pub) + b"\x88\xac")
    wits = []
    for i, c in enumerate(coins):
        digest = SignatureHash(
            code, tx, i, SIGHASH_ALL, amount=c.value, sigversion=SIGVERSION_WITNESS_V0
        )
        sig = key.priv.sign(digest, hasher=None) + bytes([SIGHASH_ALL])
        wits.append(CTxInWitness(CScriptWitness([sig, key.pub])))
    tx.wit = CTxWitness(wits)
    return tx.serialize().hex()


def bip341_keypath_digest(tx: wire.Tx, spent: list[Utxo], index: int) -> bytes:
    """SigMsg for SIGHASH_DEFAULT, key path, no annex (BIP341 'Common signature message')."""
    sha = lambda b: hashlib.sha256(b).digest()  # noqa: E731
    msg = b"\x00\x00" + tx.version.to_bytes(4, "little") + tx.locktime.to_bytes(4, "little")
    msg += sha(b"".join(i.prev_txid + i.prev_index.to_bytes(4, "little") for i in tx.inputs))
    msg += sha(b"".join(c.value.to_bytes(8, "little") for c in spent))
    msg += sha(b"".join(bytes([len(c.script)]) + c.script for c in spent))
    msg += sha(b"".join(i.sequence.to_bytes(4, "little") for i in tx.inputs))
    msg += sha(
        b"".join(
            o.amount.to_bytes(8, "little") + bytes([len(o.script)]) + o.script
            for o in tx.outputs
        )
    )
    msg += b"\x00" + index.to_bytes(4, "little")
    return tagged("TapSighash", msg)


class Chain:
    def __init__(self, rpc: BitcoinRpc, node: RegtestNode, key: Key) -> None:
        self.rpc, self.node, self.key = rpc, node, key

    def coinbase(self, height: int) -> Utxo:
        block = self.rpc.call("getblock", self.rpc.call("getblockhash", height), 2)
        out = block["tx"][0]["vout"][0]
        return Utxo(block["tx"][0]["txid"], 0, btc_to_sats(out["value"]), self.key.p2wpkh)

    def mine(self, n: int = 1) -> list[str]:
        return self.rpc.generatetoaddress(n, self.key.address)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    node = RegtestNode(tmp_path_factory.mktemp("btc") / "node")
    server = RpcServer(node, 0, "alice", "secret")
    server.start()
    rpc = BitcoinRpc(f"http://127.0.0.1:{server.port}", "alice", "secret", timeout=10)
    key = Key(PrivateKey(hashlib.sha256(b"node test key").digest()))
    c = Chain(rpc, node, key)
    c.mine(101)  # coinbase 1 matures for block 101 + 1; ten more so each test has its own coin
    c.mine(10)
    yield c
    server.shutdown()
    server.server_close()
    node.close()


def test_mining_101_blocks_pays_the_address(chain: Chain) -> None:
    info = chain.rpc.getblockchaininfo()
    assert info["chain"] == "regtest" and info["blocks"] >= 101
    scan = chain.rpc.scantxoutset([f"addr({chain.key.address})"])
    heights = {u["height"] for u in scan["unspents"] if u["coinbase"]}
    assert set(range(1, 102)) <= heights
    first = next(u for u in scan["unspents"] if u["height"] == 1)
    assert (
        first["amount"] == Decimal("50.00000000")
        and first["scriptPubKey"] == chain.key.p2wpkh.hex()
    )
    assert first["desc"].startswith(f"addr({chain.key.address})#")


def test_p2wpkh_spend_is_mined_and_indexed(chain: Chain) -> None:
    coin = chain.coinbase(1)
    dest = Key(PrivateKey(hashlib.sha256(b"destination").digest()))
    raw = spend_p2wpkh(
        chain.key,
        [coin],
        [(dest.p2wpkh, 10 * 10**8), (chain.key.p2wpkh, coin.value - 10 * 10**8 - FEE)],
    )
    accepted = chain.rpc.testmempoolaccept([raw])[0]
    assert accepted["allowed"] is True and accepted["fees"]["base"] == Decimal("0.00002000")
    txid = chain.rpc.sendrawtransaction(raw)
    assert txid in chain.rpc.call("getrawmempool")
    assert chain.rpc.sendrawtransaction(raw) == txid  # already there: Core answers the txid
    assert chain.rpc.gettxout(coin.txid, 0) is None  # spent in the mempool
    block_hash = chain.mine()[0]
    tx = chain.rpc.getrawtransaction(txid, True)
    assert tx["confirmations"] == 1 and tx["blockhash"] == block_hash
    assert tx["vout"][0]["scriptPubKey"]["address"] == dest.address
    block = chain.rpc.call("getblock", block_hash)
    assert txid in block["tx"] and block["tx"][0] != txid
    coinbase = chain.rpc.call("getblock", block_hash, 2)["tx"][0]
    assert coinbase["vout"][0]["value"] == Decimal("50.00002000")  # subsidy plus the fee
    found = chain.rpc.scantxoutset([f"addr({dest.address})"])["unspents"]
    assert [(u["txid"], u["vout"], u["amount"]) for u in found] == [
        (txid, 0, Decimal("10.00000000"))
    ]
    assert chain.rpc.gettxout(txid, 0)["confirmations"] == 1


def test_p2tr_key_path_spend(chain: Chain) -> None:
    """Funds a BIP86-style output, then spends it with a BIP341 Schnorr signature."""
    tweaked, spk = chain.key.taproot_tweaked()
    coin = chain.coinbase(2)
    fund_txid = chain.rpc.sendrawtransaction(
        spend_p2wpkh(chain.key, [coin], [(spk, coin.value - FEE)])
    )
    chain.mine()
    tr = Utxo(fund_txid, 0, coin.value - FEE, spk)
    unsigned = wire.Tx(
        2,
        (wire.TxIn(bytes.fromhex(tr.txid)[::-1], 0, b"", 0xFFFFFFFD),),
        (wire.TxOut(tr.value - FEE, chain.key.p2wpkh),),
        0,
    )
    sig = tweaked.sign_schnorr(bip341_keypath_digest(unsigned, [tr], 0), bytes(32))
    signed = wire.Tx(
        2,
        (wire.TxIn(unsigned.inputs[0].prev_txid, 0, b"", 0xFFFFFFFD, (sig,)),),
        unsigned.outputs,
        0,
    )
    bad = wire.Tx(
        2,
        (
            wire.TxIn(
                unsigned.inputs[0].prev_txid, 0, b"", 0xFFFFFFFD, (sig[:-1] + bytes([sig[-1] ^ 1]),)
            ),
        ),
        unsigned.outputs,
        0,
    )
    with pytest.raises(RpcBroadcastRejected) as err:
        chain.rpc.sendrawtransaction(bad.serialize().hex())
    assert err.value.rpc_code == -26
    assert chain.rpc.sendrawtransaction(signed.serialize().hex()) == signed.txid[::-1].hex()


def _reject(chain: Chain, raw: str) -> RpcBroadcastRejected:
    with pytest.raises(RpcBroadcastRejected) as err:
        chain.rpc.sendrawtransaction(raw)
    assert isinstance(err.value, BroadcastRejected)
    return err.value


def test_bad_signature_is_rejected_by_cores_interpreter(chain: Chain) -> None:
    coin = chain.coinbase(3)
    tx = CMutableTransaction.deserialize(
        bytes.fromhex(spend_p2wpkh(chain.key, [coin], [(chain.key.p2wpkh, coin.value - FEE)]))
    )
    sig = bytearray(tx.wit.vtxinwit[0].scriptWitness.stack[0])
    sig[10] ^= 1
    tx.wit = CTxWitness([CTxInWitness(CScriptWitness([bytes(sig), chain.key.pub]))])
    err = _reject(chain, tx.serialize().hex())
    assert err.rpc_code == -26
    assert err.reason.startswith("mempool-script-verify-flag-failed")
    assert f"spending {coin.txid}:0" in err.reason


def test_double_spends_are_rejected(chain: Chain) -> None:
    coin = chain.coinbase(4)
    first = spend_p2wpkh(chain.key, [coin], [(chain.key.p2wpkh, coin.value - FEE)])
    chain.rpc.sendrawtransaction(first)
    same_fee = spend_p2wpkh(chain.key, [coin], [(b"\x00\x14" + bytes(20), coin.value - FEE)])
    err = _reject(chain, same_fee)
    assert err.rpc_code == -26 and err.reason.startswith("insufficient fee, rejecting replacement")
    chain.mine()
    err = _reject(chain, same_fee)
    assert (err.rpc_code, err.reason) == (-25, "bad-txns-inputs-missingorspent")


def test_replacement_by_fee_evicts_the_original(chain: Chain) -> None:
    coin = chain.coinbase(5)
    first = chain.rpc.sendrawtransaction(
        spend_p2wpkh(chain.key, [coin], [(chain.key.p2wpkh, coin.value - FEE)])
    )
    bumped = chain.rpc.sendrawtransaction(
        spend_p2wpkh(chain.key, [coin], [(chain.key.p2wpkh, coin.value - 3 * FEE)])
    )
    assert chain.rpc.call("getrawmempool") == [bumped] and first != bumped
    chain.mine()


def test_immature_coinbase_and_unknown_input(chain: Chain) -> None:
    tip = chain.rpc.getblockcount()
    young = chain.coinbase(tip)
    err = _reject(chain, spend_p2wpkh(chain.key, [young], [(chain.key.p2wpkh, young.value - FEE)]))
    assert err.rpc_code == -26
    assert err.reason == "bad-txns-premature-spend-of-coinbase, tried to spend coinbase at depth 1"
    ghost = Utxo("11" * 32, 0, 10**8, chain.key.p2wpkh)
    err = _reject(chain, spend_p2wpkh(chain.key, [ghost], [(chain.key.p2wpkh, 10**8 - FEE)]))
    assert (err.rpc_code, err.reason) == (-25, "bad-txns-inputs-missingorspent")
    result = chain.rpc.testmempoolaccept(
        [spend_p2wpkh(chain.key, [ghost], [(chain.key.p2wpkh, 1000)])]
    )
    assert (
        result[0]["allowed"] is False
        and result[0]["reject-reason"] == "bad-txns-inputs-missingorspent"
    )


def test_fee_above_maxfeerate_is_refused(chain: Chain) -> None:
    coin = chain.coinbase(6)
    raw = spend_p2wpkh(chain.key, [coin], [(chain.key.p2wpkh, 10**8)])  # 49 BTC of fee
    err = _reject(chain, raw)
    assert err.rpc_code == -25 and "maxfeerate" in err.reason


def _block_on_tip(chain: Chain, txs: list[wire.Tx], value_extra: int = 0) -> wire.Block:
    node = chain.node
    tip = node.height
    return miner.assemble(
        node.kernel.block_hash(tip),
        tip + 1,
        node.median_time_past(tip) + 1,
        0x207FFFFF,
        chain.key.p2wpkh,
        txs,
        value_extra,
    )


def test_blocks_core_rejects_are_rejected_with_its_reason(chain: Chain) -> None:
    coin = chain.coinbase(7)
    tx = CMutableTransaction.deserialize(
        bytes.fromhex(spend_p2wpkh(chain.key, [coin], [(chain.key.p2wpkh, coin.value - FEE)]))
    )
    tx.wit = CTxWitness([CTxInWitness(CScriptWitness([b"\x30" + bytes(70), chain.key.pub]))])
    bad_tx = wire.parse_tx(tx.serialize())
    height = chain.rpc.getblockcount()
    reason = chain.rpc.call("submitblock", _block_on_tip(chain, [bad_tx]).serialize().hex())
    assert reason.startswith("block-script-verify-flag-failed")
    assert (
        chain.rpc.call("submitblock", _block_on_tip(chain, [], value_extra=1).serialize().hex())
        == "bad-cb-amount"
    )
    good = _block_on_tip(chain, [])
    h = good.header
    unsolved = wire.Header(h.version, h.prev_hash, h.merkle_root, h.time, h.bits, h.nonce)
    while int.from_bytes(unsolved.hash, "little") <= miner.bits_to_target(h.bits):
        unsolved = wire.Header(
            h.version, h.prev_hash, h.merkle_root, h.time, h.bits, unsolved.nonce + 1
        )
    assert (
        chain.rpc.call("submitblock", wire.Block(unsolved, good.txs).serialize().hex())
        == "high-hash"
    )
    assert chain.rpc.getblockcount() == height
    assert chain.rpc.call("submitblock", good.serialize().hex()) is None
    assert chain.rpc.call("submitblock", good.serialize().hex()) == "duplicate"
    assert chain.rpc.getblockcount() == height + 1


def _post(chain: Chain, body: bytes, auth: str = "alice:secret") -> tuple[int, Any]:
    req = urllib.request.Request(
        chain.rpc.url,
        data=body,
        headers={"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()},
    )
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_malformed_requests_get_json_rpc_errors(chain: Chain) -> None:
    assert _post(chain, b"{nope")[1]["error"]["code"] == -32700
    assert _post(chain, b'{"method": "nosuch", "id": 1}') == (
        404,
        {"result": None, "error": {"code": -32601, "message": "Method not found"}, "id": 1},
    )
    status, reply = _post(
        chain, b'{"jsonrpc": "2.0", "method": "getblockhash", "params": ["x"], "id": 2}'
    )
    assert status == 200 and reply["error"]["code"] == -3 and "result" not in reply
    assert (
        _post(chain, b'[{"method": "getblockcount", "id": 1}, 7]')[1][1]["error"]["code"] == -32600
    )
    assert _post(chain, b'{"method": "getblockcount"}', auth="alice:wrong")[0] == 401
    with pytest.raises(RpcCallError) as err:
        chain.rpc.call("getblock", "00" * 32)
    assert (err.value.rpc_code, err.value.reason) == (-5, "Block not found")
    with pytest.raises(RpcCallError) as err:
        chain.rpc.call("getblockhash", 10**6)
    assert err.value.rpc_code == -8
    with pytest.raises(RpcBroadcastRejected) as err2:
        chain.rpc.sendrawtransaction("zz")
    assert err2.value.rpc_code == -22


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(
        st.none(),
        st.integers(),
        st.text(),
        st.lists(st.integers()),
        st.dictionaries(
            st.sampled_from(["method", "params", "id", "jsonrpc"]),
            st.one_of(
                st.sampled_from(
                    ["getblock", "gettxout", "scantxoutset", "sendrawtransaction", "2.0"]
                ),
                st.integers(),
                st.lists(st.text(max_size=5)),
                st.none(),
            ),
        ),
    )
)
def test_any_request_gets_an_answer(chain: Chain, request: Any) -> None:
    reply, status = handle_one(chain.node, request)
    assert status in (200, 204, 400, 404, 500)
    assert reply is None or "error" in reply or "result" in reply


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_transaction_decoding_fails_only_with_decode_error(data: bytes) -> None:
    with contextlib.suppress(TxDecodeFailed):
        decode(data)


def test_restart_on_the_same_datadir_keeps_the_chain(tmp_path: Path) -> None:
    datadir = tmp_path / "d"

    def start() -> tuple[subprocess.Popen[str], BitcoinRpc]:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "chains.bitcoin.node",
                "--datadir",
                str(datadir),
                "--rpcport",
                "0",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        port = json.loads(proc.stdout.readline())["rpcport"]
        return proc, BitcoinRpc.from_cookie(f"http://127.0.0.1:{port}", datadir / ".cookie")

    proc, rpc = start()
    address = Key(PrivateKey(hashlib.sha256(b"restart").digest())).address
    hashes = rpc.generatetoaddress(7, address)
    coinbase = rpc.call("getblock", hashes[2])["tx"][0]
    assert rpc.call("stop") == "regtest node stopping"
    assert proc.wait(timeout=20) == 0
    proc, rpc = start()
    try:
        assert rpc.getblockcount() == 7 and rpc.getbestblockhash() == hashes[-1]
        assert rpc.getrawtransaction(coinbase)["confirmations"] == 5
        assert len(rpc.scantxoutset([f"addr({address})"])["unspents"]) == 7
        assert len(rpc.generatetoaddress(1, address)) == 1
    finally:
        proc.kill()  # no clean shutdown: the kernel never flushes, the journal is replayed
        proc.wait(timeout=20)
    proc, rpc = start()
    try:
        assert rpc.getblockcount() == 8
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0


def test_segwit_addresses_follow_bip350_vectors() -> None:
    vectors = json.loads((VECTORS / "bip350.json").read_text())
    for v in vectors["valid"]:
        addr = v["address"]
        hrp = addr[: addr.rfind("1")].lower()
        version, program = decode_segwit(hrp, addr)
        op = 0x50 + version if version else 0
        assert (bytes([op, len(program)]) + program).hex() == v["scriptPubKey"]
    for v in vectors["invalid"]:
        for hrp in ("bc", "tb", "bcrt"):
            with pytest.raises(AddressError):
                decode_segwit(hrp, v["address"])


def test_descriptor_checksums_follow_bip380_vectors() -> None:
    vectors = json.loads((VECTORS / "bip380_checksum.json").read_text())
    for v in vectors["vectors"]:
        if v["valid"]:
            assert strip_checksum(v["descriptor"]) == "raw(deadbeef)"
        else:
            with pytest.raises(DescriptorError):
                strip_checksum(v["descriptor"])
    assert checksum("raw(deadbeef)") == "89f8spxm"
