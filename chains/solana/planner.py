"""Solana's transfer steps for the broker (:class:`~chains.planning.Planner`).

A transaction is good for one recent blockhash (about a minute), so it is built again
with a fresh one just before the HSM signs: a hold outlives a blockhash.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session, sessionmaker

from chains.base import Confirmation, Source, TransferRequest, UnsignedTx
from chains.planning import Balance, Connection, TransferRow, WalletRow

from .adapter import SolanaAdapter, transaction_id
from .client import SolanaRpcClient


class SolanaPlanner:
    serial_drafts = False  #: a draft takes nothing another draft needs

    def __init__(self, adapter: SolanaAdapter) -> None:
        self.adapter = adapter

    def draft(self, s: Session, wallet: WalletRow, source: Source,
              request: TransferRequest) -> tuple[UnsignedTx, dict[str, object]]:
        unsigned = self.adapter.build_transfer(source, request)
        return unsigned, {"details": {"final": False}}

    def finalize(self, sessions: sessionmaker[Session], t: TransferRow,
                 wallet: WalletRow, source: Source, unsigned: UnsignedTx,
                 ) -> tuple[UnsignedTx, dict[str, object]]:
        return self.adapter.refresh(unsigned), {}

    def assemble(self, unsigned: UnsignedTx, signatures: Sequence[bytes]) -> bytes:
        return self.adapter.assemble(unsigned, signatures)

    def txid(self, raw: bytes) -> str:
        return transaction_id(raw)

    def broadcast(self, raw: bytes) -> str:
        return self.adapter.broadcast(raw)

    def confirmation(self, txid: str) -> Confirmation:
        return self.adapter.confirmation(txid)

    def known(self, txid: str) -> bool:
        """Not asked: a Solana transaction is good for one blockhash (about a minute), so
        sending the same bytes later would be refused, not helpful."""
        return True

    def after_broadcast(self, s: Session, t: TransferRow) -> None:
        pass

    def after_failure(self, s: Session, t: TransferRow) -> None:
        pass

    def balance(self, wallet: WalletRow, asset: str) -> Balance:
        return Balance(self.adapter.balance(wallet.address, asset))


def connect(c: Connection) -> SolanaPlanner:
    return SolanaPlanner(SolanaAdapter(c.network, SolanaRpcClient(c.rpc)))
