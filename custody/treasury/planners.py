"""Chain-specific steps of a transfer, behind one small interface.

The treasury service is chain-agnostic; what differs per chain lives here:

* **draft** - at request time, through the chain adapter: checks funding, the address,
  the network, and produces the payload whose decoded intent approvers approve.
  Bitcoin locks its coins at once (the outpoints are recorded on the transfer, and other
  live transfers' outpoints are excluded), so the draft is final.
* **finalize** - just before the HSM signs: Ethereum takes its nonce *now*, in release
  order, from the broker's database (a rejected or expired transfer never held one, so
  none is skipped) and re-quotes fees; Solana takes a fresh blockhash (a hold outlives
  one). The HSM accepts such a rebuild only if asset, amount and destination are the
  approved ones and the fee stays within the approved cap.
* **txid**, **broadcast**, **confirmation** - broadcasting the same bytes again is
  harmless on every chain (same id), which is what lets a restart re-send safely.
* **known** - whether the node still has a broadcast transaction: a node restarted
  without its mempool forgets one it accepted, and the treasury then sends it again.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from chains.base import Confirmation, Source, TransferRequest, UnsignedTx
from chains.bitcoin.adapter import BitcoinAdapter
from chains.bitcoin.psbt import Psbt
from chains.errors import ChainError
from chains.ethereum.adapter import EthereumAdapter
from chains.ethereum.encoding import keccak256
from chains.solana.adapter import SolanaAdapter, transaction_id
from hsm_emulator.model import Intent

from .models import TERMINAL, NonceSlot, TransferRecord, Wallet


def unsigned_of(t: TransferRecord, intent: Intent, network: str, chain: str) -> UnsignedTx:
    from chains.base import Chain

    return UnsignedTx(Chain(chain), network, t.payload_type, base64.b64decode(t.payload_b64),
                      intent, int(t.fee_cap), {k: str(v) for k, v in t.details.items()})


class Planner(Protocol):
    def draft(self, s: Session, wallet: Wallet, source: Source,
              request: TransferRequest) -> tuple[UnsignedTx, dict[str, object]]:
        """Build at request time; returns the unsigned tx and columns to store with it."""
        ...

    def finalize(self, sessions: sessionmaker[Session], t: TransferRecord,
                 wallet: Wallet, source: Source, unsigned: UnsignedTx,
                 ) -> tuple[UnsignedTx, dict[str, object]]:
        ...

    def assemble(self, unsigned: UnsignedTx, signatures: Sequence[bytes]) -> bytes: ...

    def txid(self, raw: bytes) -> str: ...

    def broadcast(self, raw: bytes) -> str: ...

    def confirmation(self, txid: str) -> Confirmation: ...

    def known(self, txid: str) -> bool: ...

    def after_broadcast(self, s: Session, t: TransferRecord) -> None: ...

    def after_failure(self, s: Session, t: TransferRecord) -> None: ...


class BitcoinPlanner:
    def __init__(self, adapter: BitcoinAdapter) -> None:
        self.adapter = adapter

    def draft(self, s: Session, wallet: Wallet, source: Source,
              request: TransferRequest) -> tuple[UnsignedTx, dict[str, object]]:
        locked: set[str] = set()
        for inputs in s.scalars(select(TransferRecord.inputs).where(
                TransferRecord.wallet_id == wallet.id,
                TransferRecord.state.not_in([st.value for st in TERMINAL]))):
            locked.update(inputs or ())
        unsigned = self.adapter.build_transfer(source, request, exclude=frozenset(locked))
        psbt = Psbt.parse(unsigned.payload)
        spent = [f"{i.prevout.hash[::-1].hex()}:{i.prevout.n}" for i in psbt.tx.vin]
        return unsigned, {"inputs": spent, "details": {"final": True}}

    def finalize(self, sessions: sessionmaker[Session], t: TransferRecord,
                 wallet: Wallet, source: Source, unsigned: UnsignedTx,
                 ) -> tuple[UnsignedTx, dict[str, object]]:
        return unsigned, {}

    def assemble(self, unsigned: UnsignedTx, signatures: Sequence[bytes]) -> bytes:
        return self.adapter.assemble(unsigned, signatures)

    def txid(self, raw: bytes) -> str:
        from bitcoin.core import CTransaction

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

    def after_broadcast(self, s: Session, t: TransferRecord) -> None:
        pass

    def after_failure(self, s: Session, t: TransferRecord) -> None:
        pass  # its outpoints stop being locked once the transfer is terminal


class EthereumPlanner:
    def __init__(self, adapter: EthereumAdapter) -> None:
        self.adapter = adapter

    def draft(self, s: Session, wallet: Wallet, source: Source,
              request: TransferRequest) -> tuple[UnsignedTx, dict[str, object]]:
        """Built in the account's next on-chain slot only to show and approve the intent;
        the real nonce is taken at release."""
        pending = self.adapter.client.pending_nonce(wallet.address)
        unsigned = self.adapter.build_with_nonce(source, request, pending)
        # approvals bind to the intent and a fee cap with headroom for fee moves
        unsigned = replace(unsigned, fee_cap=request.fee_cap or unsigned.fee_cap * 2)
        return unsigned, {"details": {"from": unsigned.details["from"], "final": False}}

    def finalize(self, sessions: sessionmaker[Session], t: TransferRecord,
                 wallet: Wallet, source: Source, unsigned: UnsignedTx,
                 ) -> tuple[UnsignedTx, dict[str, object]]:
        nonce = t.nonce if t.nonce is not None else self._allocate(sessions, t, wallet)
        request = TransferRequest(t.asset, int(t.amount), t.destination, int(t.fee_cap))
        built = self.adapter.build_with_nonce(source, request, nonce)
        return replace(built, fee_cap=int(t.fee_cap)), {"nonce": nonce}

    def _allocate(self, sessions: sessionmaker[Session], t: TransferRecord,
                  wallet: Wallet) -> int:
        """The lowest freed slot, else the next one - committed before anything is signed
        with it. One transaction per attempt, opened by writing the wallet's row (a row
        lock on PostgreSQL, the write lock on SQLite): two finalizers of one transfer
        (an API releasing it, a worker advancing it) never both find it without a slot,
        so it never holds two; the unique constraint settles anything else."""
        chain_id, address = self.adapter.chain_id, wallet.address.lower()
        for _ in range(20):
            try:
                with sessions.begin() as s:
                    s.execute(update(Wallet).where(Wallet.id == wallet.id).values(
                        name=Wallet.name).execution_options(synchronize_session=False))
                    owned = s.scalar(select(NonceSlot.nonce).where(
                        NonceSlot.transfer_id == t.id, NonceSlot.state != "free"))
                    if owned is not None:
                        return int(owned)
                    free = s.scalar(select(NonceSlot).where(
                        NonceSlot.chain_id == chain_id, NonceSlot.address == address,
                        NonceSlot.state == "free").order_by(NonceSlot.nonce).limit(1))
                    if free is not None:
                        free.state, free.transfer_id = "reserved", t.id
                        return int(free.nonce)
                    highest = self._highest(s, chain_id, address)
                    nonce = max(highest + 1, self.adapter.client.pending_nonce(wallet.address))
                    s.add(NonceSlot(chain_id=chain_id, address=address, nonce=nonce,
                                    state="reserved", transfer_id=t.id))
                    return nonce
            except IntegrityError:
                continue
        raise ChainError("could not allocate a nonce (contention); retry")

    @staticmethod
    def _highest(s: Session, chain_id: int, address: str) -> int:
        value = s.scalar(select(func.max(NonceSlot.nonce)).where(
            NonceSlot.chain_id == chain_id, NonceSlot.address == address))
        return -1 if value is None else int(value)

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

    def after_broadcast(self, s: Session, t: TransferRecord) -> None:
        s.execute(update(NonceSlot).where(NonceSlot.transfer_id == t.id,
                                          NonceSlot.state == "reserved").values(
                                              state="broadcast"))

    def after_failure(self, s: Session, t: TransferRecord) -> None:
        """Never broadcast: give its nonce to the next transfer, so none is skipped."""
        s.execute(update(NonceSlot).where(NonceSlot.transfer_id == t.id,
                                          NonceSlot.state == "reserved").values(
                                              state="free", transfer_id=None))


class SolanaPlanner:
    def __init__(self, adapter: SolanaAdapter) -> None:
        self.adapter = adapter

    def draft(self, s: Session, wallet: Wallet, source: Source,
              request: TransferRequest) -> tuple[UnsignedTx, dict[str, object]]:
        unsigned = self.adapter.build_transfer(source, request)
        return unsigned, {"details": {"final": False}}

    def finalize(self, sessions: sessionmaker[Session], t: TransferRecord,
                 wallet: Wallet, source: Source, unsigned: UnsignedTx,
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

    def after_broadcast(self, s: Session, t: TransferRecord) -> None:
        pass

    def after_failure(self, s: Session, t: TransferRecord) -> None:
        pass


def payload_digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()



