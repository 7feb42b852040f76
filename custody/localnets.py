"""The three local test networks, started in this process or beside it, with faucets.

* Bitcoin: the project's regtest node (blocks validated by Bitcoin Core's consensus code
  through py-bitcoinkernel) behind its JSON-RPC server, in a thread.
* Ethereum: ``anvil`` (npm package ``@foundry-rs/anvil-linux-amd64``) as a subprocess;
  ``ANVIL_BIN``, ``.ci/npm`` or ``PATH`` tell where it is. Its first dev account funds.
* Solana: LiteSVM (``solders.litesvm``) behind the JSON-RPC dev node, in a thread.

Used by ``custody demo``, the end-to-end tests and the notebooks. Development only.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account import Account
from solders.instruction import AccountMeta, Instruction
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.system_program import CreateAccountParams, create_account
from solders.transaction import Transaction

from chains.base import Chain
from chains.bitcoin.node import RegtestNode, RpcServer
from chains.bitcoin.rpc import BitcoinRpc
from chains.ethereum.client import EthClient
from chains.ethereum.encoding import checksum
from chains.solana import spl
from chains.solana.devnode import DevNode
from custody.errors import CustodyError
from custody.treasury.networks import ChainEndpoints, default_depths

ETH_CHAIN_ID = 31337
#: anvil's first well-known development account (public test key, funds nothing real).
ANVIL_FUNDER = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
#: A minimal ERC-20 (balanceOf, transfer; 10^24 units to the deployer), hand-assembled;
#: source in tests/test_eth_anvil.py.
TOKEN_INITCODE = bytes.fromhex(
    "69d3c21bcecceda1000000335560538060186000396000f360003560e01c806370a0823114601d57"
    "63a9059cbb14602a57600080fd5b6004355460005260206000f35b3354602435808210604e578082"
    "033355600435805482019055600160005260206000f35b600080fd")
#: Where coinbase rewards we do not want go: BIP173's example witness program (regtest).
BURN = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
ROOT = Path(__file__).resolve().parent.parent


def find_anvil() -> str | None:
    env = os.environ.get("ANVIL_BIN")
    if env and Path(env).is_file():
        return env
    for candidate in sorted((ROOT / ".ci" / "npm").glob("**/bin/anvil")):
        if candidate.is_file():
            return str(candidate)
    return shutil.which("anvil")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalNets:
    """Start with :meth:`start`; stop with :meth:`stop` (or use as a context manager)."""

    data_dir: Path
    chains: tuple[str, ...] = tuple(Chain)  #: which to start (:class:`Chain` values)
    btc_rpc: BitcoinRpc | None = None
    eth: EthClient | None = None
    sol: DevNode | None = None
    _btc_server: Any = None
    _anvil: subprocess.Popen[bytes] | None = None
    _btc_password: str = field(default_factory=lambda: secrets.token_hex(16))
    _eth_url: str = ""

    def __enter__(self) -> LocalNets:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LocalNets:
        try:
            if Chain.BITCOIN in self.chains:
                self._start_bitcoin()
            if Chain.ETHEREUM in self.chains:
                self._start_anvil()
            if Chain.SOLANA in self.chains:
                self.sol = DevNode().start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_bitcoin(self) -> None:
        node = RegtestNode(self.data_dir / "bitcoin-regtest")
        self._btc_server = RpcServer(node, 0, "custody", self._btc_password)
        self._btc_server.start()
        self.btc_rpc = BitcoinRpc(f"http://127.0.0.1:{self._btc_server.port}", "custody",
                                  self._btc_password, timeout=60)

    def _start_anvil(self) -> None:
        binary = find_anvil()
        if binary is None:
            raise CustodyError("anvil not found: `npm install --prefix .ci/npm "
                               "@foundry-rs/anvil-linux-amd64` (or set ANVIL_BIN)")
        port = free_port()
        self._anvil = subprocess.Popen(  # noqa: S603 - a local binary, fixed arguments
            [binary, "--host", "127.0.0.1", "--port", str(port), "--quiet", "--chain-id",
             str(ETH_CHAIN_ID)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._eth_url = f"http://127.0.0.1:{port}"
        client = EthClient(self._eth_url, timeout=10)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.chain_id()
                break
            except Exception:
                if time.monotonic() > deadline or self._anvil.poll() is not None:
                    raise CustodyError("anvil did not start") from None
                time.sleep(0.1)
        self.eth = EthClient(self._eth_url, expected_chain_id=ETH_CHAIN_ID)

    def stop(self) -> None:
        if self.sol is not None:
            self.sol.stop()
            self.sol = None
        if self._anvil is not None:
            self._anvil.terminate()
            try:
                self._anvil.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._anvil.kill()
            self._anvil = None
        if self._btc_server is not None:
            self._btc_server.shutdown()
            self._btc_server.server_close()
            self._btc_server = None

    def endpoints(self, confirmations: dict[str, int] | None = None) -> ChainEndpoints:
        depth = {**default_depths(), **(confirmations or {})}
        btc = "" if self._btc_server is None else (
            f"http://custody:{self._btc_password}@127.0.0.1:{self._btc_server.port}")
        rpc: dict[str, str] = {Chain.BITCOIN: btc, Chain.ETHEREUM: self._eth_url,
                               Chain.SOLANA: self.sol.url if self.sol is not None else ""}
        networks: dict[str, str] = {Chain.BITCOIN: "regtest", Chain.ETHEREUM: str(ETH_CHAIN_ID),
                                    Chain.SOLANA: "localnet"}
        return ChainEndpoints(rpc, networks, depth)

    # -- faucets --------------------------------------------------------------------------

    def mine(self, blocks: int = 1, address: str = BURN) -> list[str]:
        assert self.btc_rpc is not None
        hashes: list[str] = self.btc_rpc.generatetoaddress(blocks, address)
        return hashes

    def fund_bitcoin(self, address: str, blocks: int = 1) -> None:
        """Coinbase rewards to ``address``, then 100 blocks so they mature."""
        self.mine(blocks, address)
        self.mine(100)

    def _eth_send(self, to: str, value: int, data: bytes = b"") -> str:
        assert self.eth is not None
        funder = Account.from_key(ANVIL_FUNDER)
        fees = self.eth.fee_quote()
        tx: dict[str, Any] = {"type": 2, "chainId": ETH_CHAIN_ID,
                              "nonce": self.eth.pending_nonce(funder.address),
                              "maxFeePerGas": fees.max_fee,
                              "maxPriorityFeePerGas": fees.priority_fee, "gas": 500_000,
                              "value": value, "data": data}
        if to:
            tx["to"] = to
        txid = self.eth.send_raw_transaction(bytes(Account.sign_transaction(
            tx, funder.key).raw_transaction))
        self.eth.wait_for_depth(txid, 1, timeout=30)
        return txid

    def fund_ether(self, address: str, wei: int) -> None:
        self._eth_send(address, wei)

    def deploy_token(self) -> str:
        """A test ERC-20; the funder holds its whole supply. Returns its address."""
        assert self.eth is not None
        txid = self._eth_send("", 0, TOKEN_INITCODE)
        receipt = self.eth.w3.eth.get_transaction_receipt(txid)  # type: ignore[arg-type]
        return checksum(bytes.fromhex(str(receipt["contractAddress"])[2:]))

    def fund_token(self, token: str, address: str, amount: int) -> None:
        data = bytes.fromhex("a9059cbb") + bytes(12) + bytes.fromhex(address[2:]) + (
            amount.to_bytes(32, "big"))
        self._eth_send(token, 0, data)

    def fund_sol(self, address: str, lamports: int) -> None:
        assert self.sol is not None
        with self.sol.lock:
            self.sol.svm.airdrop(Pubkey.from_string(address), lamports)

    def create_spl_mint(self, decimals: int) -> tuple[Pubkey, Keypair]:
        """System CreateAccount + SPL InitializeMint2; returns the mint and its authority."""
        assert self.sol is not None
        authority, mint = Keypair(), Keypair()
        with self.sol.lock:
            svm = self.sol.svm
            svm.airdrop(authority.pubkey(), 10**9)
            space = 82
            create = create_account(CreateAccountParams(
                from_pubkey=authority.pubkey(), to_pubkey=mint.pubkey(),
                owner=spl.TOKEN_PROGRAM_ID,
                lamports=svm.minimum_balance_for_rent_exemption(space), space=space))
            init = Instruction(spl.TOKEN_PROGRAM_ID,
                               bytes([20, decimals]) + bytes(authority.pubkey()) + b"\x00",
                               [AccountMeta(mint.pubkey(), False, True)])
            self._sol_tx(authority, [create, init], mint)
        return mint.pubkey(), authority

    def mint_spl(self, mint: Pubkey, authority: Keypair, owner: str, amount: int,
                 decimals: int) -> None:
        assert self.sol is not None
        who = Pubkey.from_string(owner)
        ata = spl.associated_token_address(who, mint)
        ix = Instruction(spl.TOKEN_PROGRAM_ID, struct.pack("<BQB", 14, amount, decimals), [
            AccountMeta(mint, False, True), AccountMeta(ata, False, True),
            AccountMeta(authority.pubkey(), True, False)])
        with self.sol.lock:
            self._sol_tx(authority, [spl.create_idempotent(authority.pubkey(), who, mint), ix])

    def _sol_tx(self, payer: Keypair, ixs: list[Instruction], *signers: Keypair) -> None:
        assert self.sol is not None
        svm = self.sol.svm
        msg = Message.new_with_blockhash(ixs, payer.pubkey(), svm.latest_blockhash())
        result = svm.send_transaction(Transaction([payer, *signers], msg,
                                                  svm.latest_blockhash()))
        if not hasattr(result, "signature"):
            raise CustodyError(f"local Solana transaction failed: {result}")
