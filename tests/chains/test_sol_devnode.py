"""The JSON-RPC client against the LiteSVM development node, and the adapter end to end:
HSM key -> adapter build -> HSM sign -> assemble -> broadcast -> confirmation."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from solders.hash import Hash
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.transaction import Transaction

from chains.base import Source, TransferRequest
from chains.errors import (
    BroadcastExpired,
    BroadcastRejected,
    BuildError,
    ChainError,
    InsufficientFunds,
    InvalidAddress,
    NodeUnavailable,
)
from chains.solana.adapter import GENESIS, SolanaAdapter, transaction_id
from chains.solana.client import RpcError, SolanaRpcClient
from chains.solana.devnode import DevNode
from chains.solana.tx import build_sol_transfer
from hsm_emulator import Action, Hsm, ManualClock
from hsm_emulator.decoders import DecoderRegistry, JsonTransferDecoder
from tests.chains.test_sol_runtime import create_mint, mint_to
from tests.conftest import SO, TEST_PASSPHRASE
from tests.helpers import Approver, tiered_policy

pytestmark = pytest.mark.node

SOL = 10**9
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def node() -> Iterator[DevNode]:
    with DevNode() as n:
        yield n


@pytest.fixture
def client(node: DevNode) -> SolanaRpcClient:
    return SolanaRpcClient(node.url, timeout=5)


@pytest.fixture
def adapter(client: SolanaRpcClient) -> SolanaAdapter:
    return SolanaAdapter("localnet", client, unit_price=1_000)


@pytest.fixture
def sol_hsm(tmp_path: Path, clock: ManualClock, adapter: SolanaAdapter) -> Iterator[Hsm]:
    h = Hsm.open(tmp_path / "h.sqlite", TEST_PASSPHRASE, so_passphrase=SO, clock=clock,
                 decoders=DecoderRegistry([*adapter.decoders(), JsonTransferDecoder()]))
    yield h
    h.close()


#: What a tier lets a transfer cost beyond its amount, in lamports: the fee and, for a
#: token transfer, the destination account's rent-exempt deposit (2,039,280).
FEE_AND_RENT_CAP = 10_000_000


def hsm_wallet(hsm: Hsm, people: dict[str, Approver], asset: str = "SOL") -> Source:
    traders = [people["t1"], people["t2"], people["t3"]]
    policy = tiered_policy(traders, [people["c1"]], asset=asset, small=SOL, medium=100 * SOL,
                           max_fee=FEE_AND_RENT_CAP, fee_asset="SOL")
    hsm.create_key("w", "ED25519", policy={**policy, "networks": ["solana:localnet"]})
    pub = hsm.public_key("w")
    return Source("w", pub, "", str(Pubkey.from_bytes(pub)))


# -- the client ------------------------------------------------------------------------


def test_client_reads(client: SolanaRpcClient, node: DevNode) -> None:
    who = Keypair().pubkey()
    assert client.balance(str(who)) == 0
    assert client.account_info(str(who)) is None
    assert client.token_balance(str(who)) is None
    sig = client.request_airdrop(str(who), 2 * SOL)
    assert client.balance(str(who)) == 2 * SOL
    client.request_airdrop(str(who), 2 * SOL)  # the same airdrop twice still lands
    assert client.balance(str(who)) == 4 * SOL
    (status,) = client.signature_statuses([sig])
    assert status is not None and status.err is None
    assert client.signature_statuses([str(Keypair().sign_message(b"x"))]) == [None]
    assert client.minimum_balance_for_rent_exemption(0) == 890_880
    info = client.account_info(str(who))
    assert info is not None and info.lamports == 4 * SOL and info.data == b""
    assert client.genesis_hash() == node.genesis_hash
    recent = client.latest_blockhash()
    assert recent.blockhash == str(node.svm.latest_blockhash())
    assert recent.last_valid_block_height > 0


def test_client_errors(client: SolanaRpcClient) -> None:
    with pytest.raises(RpcError) as err:
        client.call("getNoSuchThing")
    assert err.value.rpc_code == -32601
    with pytest.raises(RpcError):
        client.balance("not-base58-0OIl")
    with pytest.raises(BroadcastRejected):
        client.send_transaction(b"\x01garbage")
    with pytest.raises(ChainError):
        client._value("getGenesisHash", [])  # a string where an object is expected
    dead = SolanaRpcClient("http://127.0.0.1:9", timeout=1)
    with pytest.raises(NodeUnavailable):
        dead.latest_blockhash()
    with pytest.raises(ValueError):
        SolanaRpcClient("file:///etc/passwd")


def test_client_in_another_process(node: DevNode) -> None:
    """A broker in another process reaches the node over loopback."""
    code = ("from chains.solana.client import SolanaRpcClient as C; "
            f"print(C({node.url!r}).latest_blockhash().blockhash)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True)
    assert out.stdout.strip() == str(node.svm.latest_blockhash())


def test_bad_signature_is_rejected_by_the_node(client: SolanaRpcClient) -> None:
    me = Keypair()
    client.request_airdrop(str(me.pubkey()), SOL)
    payload = build_sol_transfer(me.pubkey(), Keypair().pubkey(), SOL // 2,
                                 Hash.from_string(client.latest_blockhash().blockhash))
    sig = bytearray(bytes(me.sign_message(payload)))
    sig[0] ^= 1
    with pytest.raises(BroadcastRejected) as err:
        client.send_transaction(b"\x01" + bytes(sig) + payload)
    assert "signature verification" in err.value.reason


# -- the adapter ---------------------------------------------------------------------------


def test_validate_address(adapter: SolanaAdapter) -> None:
    good = str(Keypair().pubkey())
    assert adapter.validate_address(good) == good
    for bad in ("", "0" * 44, "abc", good + "1", "1" * 31, "O" + good[1:], "é" * 40, 12):
        with pytest.raises(InvalidAddress):
            adapter.validate_address(bad)  # type: ignore[arg-type]


def test_sol_transfer_end_to_end(sol_hsm: Hsm, adapter: SolanaAdapter, client: SolanaRpcClient,
                                 people: dict[str, Approver]) -> None:
    src = hsm_wallet(sol_hsm, people)
    bob = str(Keypair().pubkey())
    with pytest.raises(InsufficientFunds):
        adapter.build_transfer(src, TransferRequest("SOL", SOL // 10, bob))
    client.request_airdrop(src.address, 3 * SOL)
    unsigned = adapter.build_transfer(src, TransferRequest("SOL", SOL // 10, bob))
    assert unsigned.payload_type == "SOLANA_TX:localnet"
    assert unsigned.fee_cap == unsigned.intent.fee == 5000 + 1
    result = sol_hsm.sign_now("w", unsigned.payload, unsigned.payload_type)
    assert result.intent == unsigned.intent  # the HSM decodes what the adapter meant
    raw = adapter.assemble(unsigned, result.signatures)
    txid = adapter.broadcast(raw)
    assert txid == transaction_id(raw)
    assert adapter.broadcast(raw) == txid  # idempotent for the same bytes
    conf = adapter.confirmation(txid)
    assert conf.included and conf.confirmations > 0
    assert adapter.balance(bob) == SOL // 10
    assert adapter.confirmation(str(Keypair().sign_message(b"nope"))).included is False


def test_build_refusals(sol_hsm: Hsm, adapter: SolanaAdapter, client: SolanaRpcClient,
                        people: dict[str, Approver]) -> None:
    src = hsm_wallet(sol_hsm, people)
    client.request_airdrop(src.address, SOL)
    bob = str(Keypair().pubkey())
    with pytest.raises(BuildError):  # below the rent-exempt minimum of a new account
        adapter.build_transfer(src, TransferRequest("SOL", 1000, bob))
    with pytest.raises(BuildError):
        adapter.build_transfer(src, TransferRequest("SOL", SOL // 10, bob, fee_cap=5000))
    with pytest.raises(BuildError):
        adapter.build_transfer(src, TransferRequest("BTC", 1, bob))
    with pytest.raises(BuildError):  # not a mint
        adapter.build_transfer(src, TransferRequest(f"SPL:{bob}", 1, bob))
    with pytest.raises(BuildError):
        adapter.build_transfer(Source("w", src.public_key, "0'"), TransferRequest("SOL", 1, bob))
    with pytest.raises(InvalidAddress):
        adapter.build_transfer(src, TransferRequest("SOL", SOL // 10, "bob"))


def test_wrong_cluster_is_refused(client: SolanaRpcClient, node: DevNode) -> None:
    src = Source("w", bytes(Keypair().pubkey()))
    request = TransferRequest("SOL", SOL, str(Keypair().pubkey()))
    with pytest.raises(ChainError, match="genesis"):
        SolanaAdapter("devnet", client).build_transfer(src, request)
    node.genesis_hash = GENESIS["mainnet"]
    with pytest.raises(ChainError, match="genesis"):
        SolanaAdapter("localnet", client).build_transfer(src, request)


def test_held_transfer_is_refreshed_then_broadcast(
        sol_hsm: Hsm, adapter: SolanaAdapter, client: SolanaRpcClient, node: DevNode,
        clock: ManualClock, people: dict[str, Approver]) -> None:
    src = hsm_wallet(sol_hsm, people)
    client.request_airdrop(src.address, 20 * SOL)
    bob = str(Keypair().pubkey())
    unsigned = adapter.build_transfer(src, TransferRequest("SOL", 10 * SOL, bob))
    ch = sol_hsm.begin("w", Action.USE, unsigned.payload, unsigned.payload_type,
                       fee_cap=unsigned.fee_cap)
    approvals = [people["t1"].approve(ch.envelope), people["t3"].approve(ch.envelope)]
    clock.advance(600)
    node.expire_blockhash()
    fresh = adapter.refresh(unsigned)
    assert fresh.details["recentBlockhash"] != unsigned.details["recentBlockhash"]
    result = sol_hsm.execute(ch.request_id, approvals, payload=fresh.payload)
    adapter.broadcast(adapter.assemble(fresh, result.signatures))
    assert adapter.balance(bob) == 10 * SOL


def test_spl_transfer_end_to_end(sol_hsm: Hsm, adapter: SolanaAdapter, client: SolanaRpcClient,
                                 node: DevNode, people: dict[str, Approver]) -> None:
    authority = Keypair()
    with node.lock:
        mint = create_mint(node.svm, authority)
    src = hsm_wallet(sol_hsm, people, asset=f"SPL:{mint}")
    client.request_airdrop(src.address, SOL)
    bob = str(Keypair().pubkey())
    request = TransferRequest(f"SPL:{mint}", 1_500_000, bob)
    with pytest.raises(InsufficientFunds):
        adapter.build_transfer(src, request)
    with node.lock:
        mint_to(node.svm, authority, mint, Pubkey.from_string(src.address), 10**7)
    unsigned = adapter.build_transfer(src, request)
    result = sol_hsm.sign_now("w", unsigned.payload, unsigned.payload_type)
    assert result.intent is not None and result.intent.transfers[0].destination == bob
    txid = adapter.broadcast(adapter.assemble(unsigned, result.signatures))
    assert adapter.confirmation(txid).included
    assert adapter.balance(bob, f"SPL:{mint}") == 1_500_000
    assert adapter.balance(src.address, f"SPL:{mint}") == 10**7 - 1_500_000
    assert adapter.estimate_fee() == 5000


def test_expiry_is_proven_by_the_node_blockhash_first(
        sol_hsm: Hsm, adapter: SolanaAdapter, client: SolanaRpcClient, node: DevNode,
        people: dict[str, Approver]) -> None:
    """A signed transaction is provably dead only once its blockhash is gone (the node's
    height past its lastValidBlockHeight, or the node calls it invalid) and its signature
    is unknown: not while the blockhash lives, never once it landed. The dev node's
    heights agree with LiteSVM, which takes its latest blockhash only."""
    src = hsm_wallet(sol_hsm, people)
    client.request_airdrop(src.address, 3 * SOL)
    bob = str(Keypair().pubkey())
    signed = []
    for _ in range(2):
        unsigned = adapter.build_transfer(src, TransferRequest("SOL", SOL // 10, bob))
        last_valid = int(unsigned.details["lastValidBlockHeight"])
        assert client.block_height() == last_valid
        assert client.blockhash_valid(unsigned.details["recentBlockhash"])
        result = sol_hsm.sign_now("w", unsigned.payload, unsigned.payload_type)
        raw = adapter.assemble(unsigned, result.signatures)
        assert not adapter.expired(raw, last_valid) and not adapter.expired(raw, None)
        signed.append((raw, last_valid))
        node.expire_blockhash()
    (lost, lost_valid), (late, late_valid) = signed
    with pytest.raises(BroadcastExpired):  # the node's words for a gone blockhash
        adapter.broadcast(lost)
    assert client.block_height() > lost_valid
    assert adapter.expired(lost, lost_valid) and adapter.expired(lost, None)
    node.svm.send_transaction(Transaction.from_bytes(late))  # its blockhash went: refused
    assert adapter.expired(late, late_valid)
    # one that landed is never dead, whatever its blockhash
    unsigned = adapter.build_transfer(src, TransferRequest("SOL", SOL // 10, bob))
    result = sol_hsm.sign_now("w", unsigned.payload, unsigned.payload_type)
    raw = adapter.assemble(unsigned, result.signatures)
    txid = adapter.broadcast(raw)
    node.expire_blockhash()
    assert not adapter.expired(raw, int(unsigned.details["lastValidBlockHeight"]))
    assert adapter.broadcast(raw) == txid  # refused for its blockhash, known as landed
    assert adapter.balance(bob) == SOL // 10
