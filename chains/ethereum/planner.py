"""Ethereum's transfer steps for the broker (:class:`~chains.planning.Planner`).

The draft is built in the account's next on-chain slot only to show and approve the
intent; the real nonce is taken at release, in release order, from the broker's
database (a rejected or expired transfer never held one, so none is skipped), and fees
are quoted again then.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from sqlalchemy.orm import Session, sessionmaker

from chains.base import Confirmation, Source, TransferRequest, UnsignedTx
from chains.planning import Balance, Connection, Ledger, TransferRow, WalletRow

from .adapter import EthereumAdapter
from .client import EthClient
from .encoding import keccak256
from .nonces import SqliteNonceStore


class EthereumPlanner:
    serial_drafts = False  #: a draft takes no slot (the nonce is taken at release)

    def __init__(self, adapter: EthereumAdapter, ledger: Ledger) -> None:
        self.adapter = adapter
        self.ledger = ledger

    def draft(self, s: Session, wallet: WalletRow, source: Source,
              request: TransferRequest) -> tuple[UnsignedTx, dict[str, object]]:
        """Built in the account's next on-chain slot only to show and approve the intent;
        the real nonce is taken at release."""
        pending = self.adapter.client.pending_nonce(wallet.address)
        unsigned = self.adapter.build_with_nonce(source, request, pending)
        # approvals bind to the intent and a fee cap with headroom for fee moves
        unsigned = replace(unsigned, fee_cap=request.fee_cap or unsigned.fee_cap * 2)
        return unsigned, {"details": {"from": unsigned.details["from"], "final": False}}

    def finalize(self, sessions: sessionmaker[Session], t: TransferRow,
                 wallet: WalletRow, source: Source, unsigned: UnsignedTx,
                 ) -> tuple[UnsignedTx, dict[str, object]]:
        nonce = t.nonce if t.nonce is not None else self._allocate(sessions, t, wallet)
        request = TransferRequest(t.asset, int(t.amount), t.destination, int(t.fee_cap))
        built = self.adapter.build_with_nonce(source, request, nonce)
        return replace(built, fee_cap=int(t.fee_cap)), {"nonce": nonce}

    def _allocate(self, sessions: sessionmaker[Session], t: TransferRow,
                  wallet: WalletRow) -> int:
        """The account's slot for ``t``, in the broker's nonce ledger (per chain id and
        lower-case address), never below the node's next nonce."""
        return self.ledger.allocate_nonce(
            sessions, t.id, wallet.id, self.adapter.chain_id, wallet.address.lower(),
            lambda: self.adapter.client.pending_nonce(wallet.address))

    def assemble(self, unsigned: UnsignedTx, signatures: Sequence[bytes]) -> bytes:
        return self.adapter.assemble(unsigned, signatures)

    def txid(self, raw: bytes) -> str:
        return "0x" + keccak256(raw).hex()

    def broadcast(self, raw: bytes) -> str:
        return self.adapter.send(raw)

    def confirmation(self, txid: str) -> Confirmation:
        return self.adapter.confirmation(txid)

    def known(self, txid: str) -> bool:
        return self.adapter.client.known(txid)

    def expired(self, t: TransferRow) -> bool:
        """Never: a signed transaction of this chain stays valid until it is mined (or a
        conflicting one is)."""
        return False

    def after_broadcast(self, s: Session, t: TransferRow) -> None:
        self.ledger.nonce_broadcast(s, t.id)

    def after_failure(self, s: Session, t: TransferRow) -> None:
        """Never broadcast: give its nonce to the next transfer, so none is skipped."""
        self.ledger.nonce_free(s, t.id)

    def balance(self, wallet: WalletRow, asset: str) -> Balance:
        client = self.adapter.client
        return Balance(client.balance(wallet.address) if asset == "ETH" else (
            client.erc20_balance(asset[len("ERC20:"):], wallet.address)))


def connect(c: Connection) -> EthereumPlanner:
    chain_id = int(c.network)
    # the adapter's own nonce store is unused: the broker allocates nonces in its
    # database at release time (the planner's ledger)
    store = SqliteNonceStore(":memory:") if c.scratch is None else (
        SqliteNonceStore(c.scratch / "unused-nonces.sqlite"))
    adapter = EthereumAdapter(chain_id, EthClient(c.rpc, expected_chain_id=chain_id), store)
    return EthereumPlanner(adapter, c.ledger)
