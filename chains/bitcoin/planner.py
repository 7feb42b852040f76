"""Bitcoin's transfer steps for the broker (:class:`~chains.planning.Planner`).

The draft locks its coins at once: the outpoints are recorded on the transfer, and other
live transfers' outpoints are excluded, so the draft is final.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

from bitcoin.core import CTransaction
from sqlalchemy.orm import Session, sessionmaker

from chains.base import Confirmation, Source, TransferRequest, UnsignedTx
from chains.errors import ChainError
from chains.planning import Balance, Coin, Connection, Ledger, TransferRow, WalletRow

from .adapter import BitcoinAdapter
from .psbt import Psbt
from .rpc import BitcoinRpc


class BitcoinPlanner:
    serial_drafts = True  #: coins are picked: one draft of a wallet at a time

    def __init__(self, adapter: BitcoinAdapter, ledger: Ledger) -> None:
        self.adapter = adapter
        self.ledger = ledger

    def draft(self, s: Session, wallet: WalletRow, source: Source,
              request: TransferRequest) -> tuple[UnsignedTx, dict[str, object]]:
        locked = self.ledger.locked_inputs(s, wallet.id)
        unsigned = self.adapter.build_transfer(source, request, exclude=frozenset(locked))
        psbt = Psbt.parse(unsigned.payload)
        spent = [f"{i.prevout.hash[::-1].hex()}:{i.prevout.n}" for i in psbt.tx.vin]
        return unsigned, {"inputs": spent, "details": {"final": True}}

    def finalize(self, sessions: sessionmaker[Session], t: TransferRow,
                 wallet: WalletRow, source: Source, unsigned: UnsignedTx,
                 ) -> tuple[UnsignedTx, dict[str, object]]:
        return unsigned, {}

    def assemble(self, unsigned: UnsignedTx, signatures: Sequence[bytes]) -> bytes:
        return self.adapter.assemble(unsigned, signatures)

    def txid(self, raw: bytes) -> str:
        txid: bytes = CTransaction.deserialize(raw).GetTxid()
        return txid[::-1].hex()

    def broadcast(self, raw: bytes) -> str:
        try:
            return self.adapter.broadcast(raw)
        except ChainError:
            txid = self.txid(raw)
            if self.confirmation(txid).confirmations > 0:  # mined already: sent before
                return txid
            raise

    def confirmation(self, txid: str) -> Confirmation:
        return self.adapter.confirmation(txid)

    def known(self, txid: str) -> bool:
        return self.adapter.known(txid)

    def expired(self, t: TransferRow) -> bool:
        """Never: a signed transaction of this chain stays valid until it is mined (or a
        conflicting one is)."""
        return False

    def after_broadcast(self, s: Session, t: TransferRow) -> None:
        pass

    def after_failure(self, s: Session, t: TransferRow) -> None:
        pass  # its outpoints stop being locked once the transfer is terminal

    def balance(self, wallet: WalletRow, asset: str) -> Balance:
        """The wallet's coins among its issued addresses and the gap (see the adapter)."""
        coins = self.adapter.coins(wallet.key_label, prev_txs=False)
        return Balance(sum(c.amount for c in coins), tuple(
            Coin(f"{c.txid}:{c.vout}", c.amount, c.path) for c in coins))


def connect(c: Connection) -> BitcoinPlanner:
    url, user, password = _split_credentials(c.rpc)
    adapter = BitcoinAdapter(c.network, BitcoinRpc(url, user, password), c.keys.public_key,
                             confirmations=c.depth, issued=c.issued)
    return BitcoinPlanner(adapter, c.ledger)


def _split_credentials(url: str) -> tuple[str, str, str]:
    """``http://user:password@host:port`` as Bitcoin Core's RPC takes it: URL, user,
    password."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    bare = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return bare, parts.username or "", parts.password or ""
