"""The velocity ledger: what each key family has released, per asset and token.

Policy conditions such as "at most X per day" (see :mod:`hsm_emulator.evaluate`) count
the rows here. A row is written in the transaction that signs, so a signature and the
spend it counts for are committed together or not at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .clock import Clock
from .evaluate import SpentFn
from .model import Intent
from .store import Store

_Row = tuple[str, str, str, float, str]  #: family, asset, amount, at, token


class VelocityLedger:
    """Spends per key family, in the store's ``spends`` table."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        #: Rows of a batch not yet written (see :meth:`buffered`), else None.
        self._pending: list[_Row] | None = None

    def spent(self, family: str) -> SpentFn:
        """How much ``family`` has released of an asset since a time (by some tokens)."""
        def spent(asset: str, since: float, tokens: frozenset[str] | None = None) -> int:
            rows = self._store.execute(
                "SELECT amount, token FROM spends WHERE family=? AND asset=? AND at>=?",
                (family, asset, since))
            pending = self._pending or ()
            return sum(int(r[0]) for r in rows if tokens is None or r[1] in tokens) + sum(
                int(p[2]) for p in pending if p[0] == family and p[1] == asset and
                p[3] >= since and (tokens is None or p[4] in tokens))
        return spent

    def record(self, family: str, intent: Intent | None, token: str) -> None:
        """Ledger rows of what ``token`` released: the intent's outflow per asset."""
        if intent is None:
            return
        now = self._clock.now()
        rows = [(family, asset, str(total), now, token)
                for asset, total in intent.outflow().items()]
        if self._pending is not None:
            self._pending.extend(rows)
        else:
            self._store.insert_rows("spends", rows)  # bound to the store's state row

    @contextmanager
    def buffered(self) -> Iterator[None]:
        """Inside a batch: keep ledger rows in memory (counted by :meth:`spent`) and
        write them in one statement, in the batch's transaction."""
        pending: list[_Row] = []
        self._pending = pending
        try:
            yield
            self._store.insert_rows("spends", pending)
        finally:
            self._pending = None
