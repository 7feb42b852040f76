"""Chain-specific steps of a transfer, behind one small interface (broker side).

The treasury service is chain-agnostic; each chain's ``planner.py`` implements
:class:`Planner`:

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
* **expired** - whether the transfer's signed transaction provably can never land
  (Solana: its blockhash is gone and its signature unknown, per the node). Only then
  does the treasury have it signed again, under a new HSM request. Bitcoin and Ethereum
  transactions never expire: always False.
* **balance** - from the node, now.

A planner keeps no state of its own: what must survive a restart is in the broker's
database, reached through the :class:`Ledger` the broker hands it (coins locked by live
transfers, account nonce slots). The broker's rows reach it as the read-only views below,
so nothing here imports the broker. The broker loads a chain's planner module by the name
its spec gives (:func:`connect`), as HWI loads a device module by name: the HSM, which
reads the specs for their decoders, never loads a node client.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from .base import Confirmation, Source, TransferRequest, UnsignedTx
from .spec import ChainSpec, KeySource


class WalletRow(Protocol):
    """What a planner reads of the broker's wallet row."""

    @property
    def id(self) -> str: ...

    @property
    def address(self) -> str: ...

    @property
    def key_label(self) -> str: ...


class TransferRow(Protocol):
    """What a planner reads of the broker's transfer row (amounts in base units)."""

    @property
    def id(self) -> str: ...

    @property
    def asset(self) -> str: ...

    @property
    def amount(self) -> str: ...

    @property
    def destination(self) -> str: ...

    @property
    def fee_cap(self) -> str: ...

    @property
    def nonce(self) -> int | None: ...

    @property
    def raw_b64(self) -> str | None:
        """The signed transaction, once signed."""
        ...

    @property
    def details(self) -> dict[str, object]:
        """What the planner stored at draft and finalize (Solana: lastValidBlockHeight)."""
        ...


class Ledger(Protocol):
    """The broker's bookkeeping a planner relies on, in the broker's database and in the
    caller's transaction. Two models cover today's chains: coins locked by live
    transfers (UTXO chains) and account nonce slots (account chains with nonces)."""

    def locked_inputs(self, s: Session, wallet_id: str) -> set[str]:
        """Outpoints (``txid:vout``) that the wallet's live transfers spend."""
        ...

    def allocate_nonce(self, sessions: sessionmaker[Session], transfer_id: str,
                       wallet_id: str, network_id: int, account: str,
                       pending: Callable[[], int]) -> int:
        """The transfer's nonce slot: the one it holds, the lowest freed one, else the
        next (at least ``pending()``, the node's next) - committed before use."""
        ...

    def nonce_broadcast(self, s: Session, transfer_id: str) -> None:
        """The transfer's reserved slot is spent on chain."""
        ...

    def nonce_free(self, s: Session, transfer_id: str) -> None:
        """The transfer will never broadcast: its slot goes to the next one."""
        ...


@dataclass(frozen=True)
class Coin:
    """One unspent output of a wallet (UTXO chains)."""

    outpoint: str  #: ``txid:vout``
    amount: int
    path: str  #: below the wallet key


@dataclass(frozen=True)
class Balance:
    amount: int  #: base units
    coins: tuple[Coin, ...] | None = None  #: UTXO chains: what makes up the amount


class Planner(Protocol):
    #: Whether one wallet's drafts must be built one at a time: a draft that picks coins
    #: (Bitcoin) must not pick the ones another draft is picking; an account draft
    #: (Ethereum, Solana) takes nothing another needs, so drafts run side by side.
    serial_drafts: bool

    @property
    def adapter(self) -> object:
        """The chain's :class:`~chains.base.ChainAdapter`."""
        ...

    def draft(self, s: Session, wallet: WalletRow, source: Source,
              request: TransferRequest) -> tuple[UnsignedTx, dict[str, object]]:
        """Build at request time; returns the unsigned tx and columns to store with it."""
        ...

    def finalize(self, sessions: sessionmaker[Session], t: TransferRow,
                 wallet: WalletRow, source: Source, unsigned: UnsignedTx,
                 ) -> tuple[UnsignedTx, dict[str, object]]:
        ...

    def assemble(self, unsigned: UnsignedTx, signatures: Sequence[bytes]) -> bytes: ...

    def txid(self, raw: bytes) -> str: ...

    def broadcast(self, raw: bytes) -> str: ...

    def confirmation(self, txid: str) -> Confirmation: ...

    def known(self, txid: str) -> bool: ...

    def expired(self, t: TransferRow) -> bool:
        """True only if ``t``'s signed transaction provably can never land."""
        ...

    def after_broadcast(self, s: Session, t: TransferRow) -> None: ...

    def after_failure(self, s: Session, t: TransferRow) -> None: ...

    def balance(self, wallet: WalletRow, asset: str) -> Balance: ...


@dataclass(frozen=True)
class Connection:
    """What the broker hands a chain's ``connect``: the configured endpoint and the few
    broker services a planner uses."""

    rpc: str  #: the node's URL (credentials in it, for Bitcoin Core)
    network: str  #: as the chain's spec parsed it: ``regtest``, ``31337``, ``localnet``
    depth: int  #: confirmations at which a transfer counts as confirmed
    keys: KeySource
    ledger: Ledger
    issued: Callable[[str], int]  #: ``label -> deposit addresses handed out``
    scratch: Path | None = None  #: a directory for files the adapter keeps, if any


def connect(spec: ChainSpec, connection: Connection) -> Planner:
    """The chain's planner, from the module its spec names."""
    module = importlib.import_module(spec.planner)
    factory: Callable[[Connection], Planner] = module.connect
    return factory(connection)
