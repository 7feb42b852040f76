"""Against a real node: anvil (Foundry), started on a free loopback port for this module.

The wallet key lives in the (real, emulated) HSM; anvil's well-known dev account 0 only
funds it. Covers: ETH signed at once (small) and after two approvals (medium), an
ERC-20 deployed and paid from the HSM wallet, receipts and confirmation depth, and a
stuck transaction replaced in its nonce slot with higher fees.

anvil comes from the npm package ``@foundry-rs/anvil-linux-amd64``; CI installs it with
``npm install --prefix .ci/npm @foundry-rs/anvil-linux-amd64``. The test looks in
``$ANVIL_BIN``, then under ``.ci/npm``, then on ``PATH``, and skips only if none has it.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from eth_account import Account

from chains.base import Source, TransferRequest
from chains.errors import BroadcastRejected, InvalidAddress
from chains.ethereum.adapter import EthereumAdapter
from chains.ethereum.client import EthClient
from chains.ethereum.encoding import checksum
from chains.ethereum.erc20 import encode_transfer
from chains.ethereum.nonces import SqliteNonceStore
from chains.ethereum.parse import decode
from chains.ethereum.tx import Eip1559Tx, assemble, serialize_unsigned
from custody.localnets import find_anvil, free_port
from hsm_emulator import Hsm, ManualClock
from hsm_emulator.decoders import DecoderRegistry, JsonTransferDecoder
from hsm_emulator.errors import PolicyNotMet
from hsm_emulator.model import Intent, IntentKind, Transfer
from tests.conftest import SO, TEST_PASSPHRASE
from tests.helpers import Approver, group, token

pytestmark = pytest.mark.node

CHAIN = 31337
WEI = 10**18
#: anvil's (and hardhat's) dev account 0 - public knowledge, used only as the funder.
FUNDER_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"

#: A minimal ERC-20 in raw EVM bytecode (no compiler at test time). Storage slot = the
#: holder's address, value = its balance; the constructor credits 10**24 to the deployer.
#: Only ``balanceOf(address)`` (70a08231) and ``transfer(address,uint256)`` (a9059cbb,
#: reverts if the balance is short, returns true); no events, no allowances.
#:
#:   init:    PUSH10 10**24  CALLER SSTORE             ; balance[deployer] = supply
#:            PUSH1 83 DUP1 PUSH1 24 PUSH1 0 CODECOPY  ; copy the 83-byte runtime
#:            PUSH1 0 RETURN
#:   runtime: PUSH1 0 CALLDATALOAD PUSH1 0xe0 SHR      ; selector
#:            DUP1 PUSH4 70a08231 EQ PUSH1 bal JUMPI
#:            PUSH4 a9059cbb EQ PUSH1 xfer JUMPI
#:            PUSH1 0 DUP1 REVERT
#:   bal:     JUMPDEST PUSH1 4 CALLDATALOAD SLOAD PUSH1 0 MSTORE PUSH1 32 PUSH1 0 RETURN
#:   xfer:    JUMPDEST CALLER SLOAD PUSH1 0x24 CALLDATALOAD   ; amount, balance[from]
#:            DUP1 DUP3 LT PUSH1 fail JUMPI                   ; balance < amount -> fail
#:            DUP1 DUP3 SUB CALLER SSTORE                     ; balance[from] -= amount
#:            PUSH1 4 CALLDATALOAD DUP1 SLOAD DUP3 ADD SWAP1 SSTORE  ; balance[to] += amount
#:            PUSH1 1 PUSH1 0 MSTORE PUSH1 32 PUSH1 0 RETURN  ; true
#:   fail:    JUMPDEST PUSH1 0 DUP1 REVERT
TOKEN_INITCODE = bytes.fromhex(
    "69d3c21bcecceda1000000335560538060186000396000f360003560e01c806370a0823114601d57"
    "63a9059cbb14602a57600080fd5b6004355460005260206000f35b3354602435808210604e578082"
    "033355600435805482019055600160005260206000f35b600080fd")


@pytest.fixture(scope="module")
def anvil() -> Iterator[str]:
    binary = find_anvil()
    if binary is None:
        hint = ("anvil not found: set ANVIL_BIN or run "
                "`npm install --prefix .ci/npm @foundry-rs/anvil-linux-amd64`")
        if os.environ.get("CI"):
            pytest.fail(hint)  # CI installs it: a missing node there is a broken install
        pytest.skip(hint)
    port = free_port()
    proc = subprocess.Popen([binary, "--host", "127.0.0.1", "--port", str(port), "--quiet",
                             "--chain-id", str(CHAIN)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        client = EthClient(url, timeout=2)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.chain_id()
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def policy(traders: list[Approver]) -> dict[str, Any]:
    admin = [token("admin", [group("admins", 1, traders)])]
    fee = [{"asset": "ETH", "max": WEI // 10}]  # fee cap: gasLimit x maxFeePerGas
    return {"ruleUse": {"tokens": [
        token("small", [], conditions={"amounts": [{"asset": "ETH", "max": WEI}],
                                       "maxFee": fee}),
        token("medium", [group("traders", 2, traders)], timeout=3600,
              conditions={"amounts": [{"asset": "ETH", "max": 50 * WEI}], "maxFee": fee}),
        token("tokens", [group("traders", 2, traders)], timeout=3600),
    ]}, "ruleBlock": {"tokens": admin}, "ruleUnblock": {"tokens": admin},
        "ruleModify": {"tokens": admin}, "networks": [f"ethereum:{CHAIN}"]}


@pytest.fixture(scope="module")
def world(anvil: str, tmp_path_factory: pytest.TempPathFactory,
          people: dict[str, Approver]) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("eth")
    client = EthClient(anvil, expected_chain_id=CHAIN)
    adapter = EthereumAdapter(CHAIN, client, SqliteNonceStore(tmp / "nonces.sqlite"))
    hsm = Hsm.open(tmp / "hsm.sqlite", TEST_PASSPHRASE, so_passphrase=SO, clock=ManualClock(),
                   decoders=DecoderRegistry([*adapter.decoders(), JsonTransferDecoder()]))
    traders = [people["t1"], people["t2"], people["t3"]]
    hsm.create_key("eth-hot", "SECP256K1", policy=policy(traders))
    source = Source("eth-hot", hsm.public_key("eth-hot"),
                    address=hsm.address("eth-hot", "ethereum", "mainnet"))
    funder = Account.from_key(FUNDER_KEY)
    fund(client, funder, source.address, 100 * WEI)
    yield {"client": client, "adapter": adapter, "hsm": hsm, "source": source,
           "funder": funder, "traders": traders}
    hsm.close()


def fund(client: EthClient, funder: Any, to: str, value: int, data: bytes = b"") -> str:
    nonce = client.pending_nonce(funder.address)
    fees = client.fee_quote()
    tx = {"type": 2, "chainId": CHAIN, "nonce": nonce, "maxFeePerGas": fees.max_fee,
          "maxPriorityFeePerGas": fees.priority_fee, "gas": 500_000, "value": value,
          "data": data}
    if to:
        tx["to"] = to
    raw = bytes(Account.sign_transaction(tx, funder.key).raw_transaction)
    txid = client.send_raw_transaction(raw)
    client.wait_for_depth(txid, 1, timeout=20)
    return txid


def send(world: dict[str, Any], request: TransferRequest, approvers: int = 0) -> str:
    adapter, hsm, source = world["adapter"], world["hsm"], world["source"]
    unsigned = adapter.build_transfer(source, request)
    if approvers:
        ch = hsm.begin(source.label, payload=unsigned.payload,
                       payload_type=unsigned.payload_type, fee_cap=unsigned.fee_cap)
        approvals = [t.approve(ch.envelope) for t in world["traders"][:approvers]]
        result = hsm.execute(ch.request_id, approvals)
    else:
        result = hsm.sign_now(source.label, unsigned.payload, unsigned.payload_type)
    raw = adapter.assemble(unsigned, result.signatures)
    return adapter.broadcast(raw)


def test_small_eth_transfer_signed_at_once(world: dict[str, Any]) -> None:
    client = world["client"]
    dest = checksum(os.urandom(20))
    txid = send(world, TransferRequest("ETH", WEI // 10, dest))
    receipt = client.receipt(txid)
    assert receipt is not None and receipt.status == 1
    assert client.balance(dest) == WEI // 10
    client.rpc("anvil_mine", [3])
    conf = client.wait_for_depth(txid, 4, timeout=10)
    assert conf.included and conf.confirmations >= 4 and conf.block_hash == receipt.block_hash


def test_medium_eth_transfer_needs_two_approvals(world: dict[str, Any]) -> None:
    dest = checksum(os.urandom(20))
    txid = send(world, TransferRequest("ETH", 5 * WEI, dest), approvers=2)
    assert world["client"].receipt(txid).status == 1
    assert world["client"].balance(dest) == 5 * WEI


def test_erc20_deploy_and_transfer_from_the_hsm_wallet(world: dict[str, Any]) -> None:
    client, source, funder = world["client"], world["source"], world["funder"]
    txid = fund(client, funder, "", 0, TOKEN_INITCODE)
    receipt = client.w3.eth.get_transaction_receipt(txid)  # type: ignore[arg-type]
    token_addr = checksum(bytes.fromhex(str(receipt["contractAddress"])[2:]))
    asset = "ERC20:" + token_addr.lower()
    assert client.erc20_balance(token_addr, funder.address) == 10**24
    # give the HSM wallet tokens, then pay them out from it
    payout = {"type": 2, "chainId": CHAIN, "nonce": client.pending_nonce(funder.address),
              "maxFeePerGas": 10**11, "maxPriorityFeePerGas": 10**9, "gas": 100_000,
              "to": token_addr, "value": 0,
              "data": "0xa9059cbb" + "00" * 12 + source.address[2:].lower()
              + (5000).to_bytes(32, "big").hex()}
    client.send_raw_transaction(bytes(Account.sign_transaction(payout, funder.key)
                                      .raw_transaction))
    assert client.erc20_balance(token_addr, source.address) == 5000
    dest = checksum(os.urandom(20))
    txid = send(world, TransferRequest(asset, 1234, dest), approvers=2)
    assert client.receipt(txid).status == 1
    assert client.erc20_balance(token_addr, dest) == 1234
    assert client.erc20_balance(token_addr, source.address) == 5000 - 1234


def test_transfer_with_a_trailing_byte_moves_what_the_intent_lists(
        world: dict[str, Any]) -> None:
    """The review's finding 1 on a real node: a ``transfer`` with one trailing calldata
    byte executes as a transfer. The HSM decodes it as an opaque contract call (no auto
    tier releases it) that still lists the token transfer the chain then performs."""
    client, source, funder, hsm = (world["client"], world["source"], world["funder"],
                                   world["hsm"])
    receipt = client.w3.eth.get_transaction_receipt(  # type: ignore[arg-type]
        fund(client, funder, "", 0, TOKEN_INITCODE))
    token_addr = checksum(bytes.fromhex(str(receipt["contractAddress"])[2:]))
    fund(client, funder, token_addr, 0, encode_transfer(bytes.fromhex(source.address[2:]), 900))
    dest = os.urandom(20)
    data = encode_transfer(dest, 321) + b"\x00"
    fees = client.fee_quote()
    tx = Eip1559Tx(CHAIN, client.pending_nonce(source.address), fees.priority_fee,
                   fees.max_fee, 100_000, bytes.fromhex(token_addr[2:]), 0, data)
    payload = serialize_unsigned(tx)
    with pytest.raises(PolicyNotMet):
        hsm.sign_now(source.label, payload, f"ETHEREUM_TX:eip155:{CHAIN}")
    ch = hsm.begin(source.label, payload=payload, payload_type=f"ETHEREUM_TX:eip155:{CHAIN}")
    intent = Intent.from_json(ch.body["intent"])  # what the approvers are shown
    assert intent.kind is IntentKind.CONTRACT_CALL and intent.calls == (token_addr,)
    assert intent.transfers == (Transfer("ERC20:" + token_addr.lower(), 321, checksum(dest)),)
    result = hsm.execute(ch.request_id, [t.approve(ch.envelope) for t in world["traders"][:2]])
    txid = client.send_raw_transaction(assemble(tx, result.signatures[0]))
    client.wait_for_depth(txid, 1, timeout=20)
    assert client.receipt(txid).status == 1
    assert client.erc20_balance(token_addr, checksum(dest)) == 321
    assert client.erc20_balance(token_addr, source.address) == 900 - 321
    # the nonce was used outside the adapter: tell its store
    world["adapter"].nonces.reconcile(CHAIN, source.address,
                                      client.pending_nonce(source.address))


def test_stuck_transaction_is_replaced_in_its_slot(world: dict[str, Any]) -> None:
    client, adapter, hsm, source = (world["client"], world["adapter"], world["hsm"],
                                    world["source"])
    client.rpc("evm_setAutomine", [False])
    try:
        dest = checksum(os.urandom(20))
        first = adapter.build_transfer(source, TransferRequest("ETH", WEI // 5, dest))
        sig = hsm.sign_now(source.label, first.payload, first.payload_type).signatures
        stuck = adapter.broadcast(adapter.assemble(first, sig))
        second = adapter.replace(first)
        assert decode(second.payload).tx.nonce == decode(first.payload).tx.nonce
        sig2 = hsm.sign_now(source.label, second.payload, second.payload_type).signatures
        replacement = adapter.broadcast(adapter.assemble(second, sig2))
        assert replacement != stuck
        client.rpc("evm_mine", [])
    finally:
        client.rpc("evm_setAutomine", [True])
    assert client.receipt(replacement).status == 1
    assert client.receipt(stuck) is None
    assert client.balance(dest) == WEI // 5
    nonce = decode(first.payload).tx.nonce
    assert adapter.nonces.slot(CHAIN, source.address, nonce)[1] == (stuck, replacement)


def test_underpriced_replacement_and_bad_destination_are_refused(
        world: dict[str, Any]) -> None:
    client, adapter, hsm, source = (world["client"], world["adapter"], world["hsm"],
                                    world["source"])
    with pytest.raises(InvalidAddress):
        adapter.build_transfer(source, TransferRequest("ETH", 1, "0xnot-an-address"))
    client.rpc("evm_setAutomine", [False])
    try:
        first = adapter.build_transfer(source, TransferRequest("ETH", 1, checksum(b"\x05" * 20)))
        sig = hsm.sign_now(source.label, first.payload, first.payload_type).signatures
        adapter.broadcast(adapter.assemble(first, sig))
        tx = decode(first.payload).tx
        # same slot, same fees, other destination: the pool wants a 10% bump
        same_fees_other_dest = type(tx)(tx.chain_id, tx.nonce, tx.max_priority_fee_per_gas,
                                        tx.max_fee_per_gas, tx.gas_limit, b"\x06" * 20, 1)
        payload = serialize_unsigned(same_fees_other_dest)
        sig = hsm.sign_now(source.label, payload, first.payload_type).signatures
        with pytest.raises(BroadcastRejected):
            client.send_raw_transaction(assemble(same_fees_other_dest, sig[0]))
        client.rpc("evm_mine", [])
    finally:
        client.rpc("evm_setAutomine", [True])


def test_broadcast_is_idempotent(world: dict[str, Any]) -> None:
    adapter, hsm, source = world["adapter"], world["hsm"], world["source"]
    unsigned = adapter.build_transfer(source, TransferRequest("ETH", 7, checksum(b"\x09" * 20)))
    sig = hsm.sign_now(source.label, unsigned.payload, unsigned.payload_type).signatures
    raw = adapter.assemble(unsigned, sig)
    assert adapter.broadcast(raw) == adapter.broadcast(raw)
    assert world["client"].receipt(adapter.broadcast(raw)).status == 1
