"""What ``custody bench transfers`` needs of each chain: the wallet's tier configuration,
funding on the local node, fresh destinations, the node-ingest baseline (transactions
signed beforehand with a plain key of the same kind, sent through the same JSON-RPC
client the broker's adapter uses) and a look at the node that every transfer landed.

Every transfer goes to a destination of its own, so "landed" is checked on the node by
each destination's balance, and no two transactions are alike (a Solana transaction
identical to an earlier one, same blockhash and same transfer, would be refused).
"""

from __future__ import annotations

import os
from typing import Any

from eth_account import Account
from solders.hash import Hash
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.system_program import TransferParams, transfer
from solders.transaction import Transaction

from chains.ethereum.encoding import checksum
from chains.solana.client import SolanaRpcClient

from ...localnets import ETH_CHAIN_ID, LocalNets
from .base import NewAddress, Presigned
from .btc_kit import BitcoinKit


class EthereumKit:
    chain, symbol, network = "ethereum", "ETH", str(ETH_CHAIN_ID)
    amount, base = "0.001", 10**15  #: per transfer, in ETH and in wei

    def __init__(self, nets: LocalNets) -> None:
        assert nets.eth is not None
        self.nets, self.eth = nets, nets.eth

    def fund(self, wallet: dict[str, Any], count: int, new_address: NewAddress) -> None:
        self.nets.fund_ether(wallet["address"], 10**18 + count * 2 * self.base)

    def destinations(self, count: int) -> list[str]:
        return [checksum(os.urandom(20)) for _ in range(count)]

    def presigned(self, count: int) -> Presigned:
        """EIP-1559 transfers from a fresh funded key, signed with ``eth_account``."""
        key = Account.create()
        self.nets.fund_ether(key.address, 10**18 + count * 2 * self.base)
        fees = self.eth.fee_quote()
        raws = [bytes(Account.sign_transaction({
            "type": 2, "chainId": ETH_CHAIN_ID, "nonce": i, "to": to, "value": self.base,
            "gas": 21_000, "maxFeePerGas": fees.max_fee,
            "maxPriorityFeePerGas": fees.priority_fee}, key.key).raw_transaction)
            for i, to in enumerate(self.destinations(count))]
        return Presigned(raws, self.eth.send_raw_transaction)

    def landed(self, destinations: list[str]) -> int:
        return sum(self.eth.balance(d) == self.base for d in destinations)


class SolanaKit:
    chain, symbol, network = "solana", "SOL", "localnet"
    amount, base = "0.01", 10_000_000  #: above a new account's rent-exempt minimum

    def __init__(self, nets: LocalNets) -> None:
        assert nets.sol is not None
        self.nets, self.client = nets, SolanaRpcClient(nets.sol.url)

    def fund(self, wallet: dict[str, Any], count: int, new_address: NewAddress) -> None:
        self.nets.fund_sol(wallet["address"], 10**9 + count * 2 * self.base)

    def destinations(self, count: int) -> list[str]:
        return [str(Keypair().pubkey()) for _ in range(count)]

    def presigned(self, count: int) -> Presigned:
        """System transfers from a fresh funded keypair, signed with ``solders``."""
        payer = Keypair()
        self.nets.fund_sol(str(payer.pubkey()), 10**9 + count * 2 * self.base)
        blockhash = Hash.from_string(self.client.latest_blockhash().blockhash)
        raws = [bytes(Transaction.new_signed_with_payer(
            [transfer(TransferParams(from_pubkey=payer.pubkey(),
                                     to_pubkey=Pubkey.from_string(to), lamports=self.base))],
            payer.pubkey(), [payer], blockhash)) for to in self.destinations(count)]
        return Presigned(raws, self.client.send_transaction)

    def landed(self, destinations: list[str]) -> int:
        return sum(self.client.balance(d) == self.base for d in destinations)


Kit = EthereumKit | SolanaKit | BitcoinKit
KITS: dict[str, type[EthereumKit] | type[SolanaKit] | type[BitcoinKit]] = {
    "ethereum": EthereumKit, "solana": SolanaKit, "bitcoin": BitcoinKit}
