"""Solana's transfer steps for the broker (:class:`~chains.planning.Planner`).

A transaction is good for one recent blockhash (about a minute), so it is built again
with a fresh one just before the HSM signs: a hold outlives a blockhash. A signed one
whose blockhash went before it landed (a crash, an outage or load delayed its broadcast)
is :meth:`~SolanaPlanner.expired` once the node proves it can never land; the treasury
then raises a new sign request for the transfer.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from solders.transaction import Transaction
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

    def expired(self, t: TransferRow) -> bool:
        """:meth:`SolanaAdapter.expired` on the signed transaction, with the
        ``lastValidBlockHeight`` recorded when it was finalized (if it was recorded for
        the blockhash the transaction carries; else the node's ``isBlockhashValid``
        alone decides)."""
        if not t.raw_b64:
            return False
        raw = base64.b64decode(t.raw_b64)
        recorded = t.details.get("lastValidBlockHeight")
        same = t.details.get("recentBlockhash") == _blockhash(raw)
        height = int(str(recorded)) if same and str(recorded or "").isdigit() else None
        return self.adapter.expired(raw, height)

    def after_broadcast(self, s: Session, t: TransferRow) -> None:
        pass

    def after_failure(self, s: Session, t: TransferRow) -> None:
        pass

    def balance(self, wallet: WalletRow, asset: str) -> Balance:
        return Balance(self.adapter.balance(wallet.address, asset))


def _blockhash(raw: bytes) -> str:
    try:
        return str(Transaction.from_bytes(raw).message.recent_blockhash)
    except ValueError:
        return ""


def connect(c: Connection) -> SolanaPlanner:
    return SolanaPlanner(SolanaAdapter(c.network, SolanaRpcClient(c.rpc)))
