"""The velocity ledger: what each key family has released, per asset and token.

Policy conditions such as "at most X per day" (see :mod:`hsm_emulator.evaluate`) count
the rows here. A row is written in the transaction that signs, so a signature and the
spend it counts for are committed together or not at all.

Each row carries two running totals (prefix sums, as decimal text: amounts exceed 64
bits): ``cum_all``, everything the family released of the asset up to and including the
row, and ``cum_token``, the same for the row's token only. What was released since a
time is then the newest total minus the total of the newest row before that time: two
index look-ups per (asset, token), however many rows the window holds - the per-signature
cost does not grow with the ledger. For the suffix to be the window, a row's time never
precedes the family's previous row for the asset: if the clock steps back, the row keeps
the previous time, so it stays in windows a little longer (never shorter: a limit only
counts more, never less).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .clock import Clock
from .evaluate import SpentFn
from .model import Intent
from .store import Store

#: family, asset, amount, at, token, cum_all, cum_token (the ``spends`` columns in order)
_Row = tuple[str, str, str, float, str, str, str]

_LAST_ALL = ("SELECT cum_all, at FROM spends WHERE family=? AND asset=? "
             "ORDER BY at DESC, rowid DESC LIMIT 1")
#: the newest total and the total before the window, in one statement
_WINDOW_ALL = ("SELECT (SELECT cum_all FROM spends WHERE family=?1 AND asset=?2 "
               "ORDER BY at DESC, rowid DESC LIMIT 1), "
               "(SELECT cum_all FROM spends WHERE family=?1 AND asset=?2 AND at<?3 "
               "ORDER BY at DESC, rowid DESC LIMIT 1)")
#: the same per token (``releasedBy`` limits count only the tokens they name)
_LAST_SCOPED = ("SELECT cum_token FROM spends WHERE family=? AND asset=? AND token=? "
                "ORDER BY at DESC, rowid DESC LIMIT 1")
_WINDOW_SCOPED = ("SELECT (SELECT cum_token FROM spends WHERE family=?1 AND asset=?2 "
                  "AND token=?3 ORDER BY at DESC, rowid DESC LIMIT 1), "
                  "(SELECT cum_token FROM spends WHERE family=?1 AND asset=?2 AND token=?3 "
                  "AND at<?4 ORDER BY at DESC, rowid DESC LIMIT 1)")


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
            if tokens is None:
                stored = self._window(_WINDOW_ALL, (family, asset), since)
            else:
                stored = sum(self._window(_WINDOW_SCOPED, (family, asset, t), since)
                             for t in sorted(tokens))
            pending = self._pending or ()
            return stored + sum(
                int(p[2]) for p in pending if p[0] == family and p[1] == asset and
                p[3] >= since and (tokens is None or p[4] in tokens))
        return spent

    def _window(self, sql: str, group: tuple[str, ...], since: float) -> int:
        """The stored rows of ``group`` at or after ``since``: newest total minus the
        total before the window."""
        last, before = self._store.execute(sql, (*group, since))[0]
        return 0 if last is None else int(last) - (0 if before is None else int(before))

    def _tail(self, family: str, asset: str, token: str) -> tuple[float, int, int]:
        """The newest row's time and both running totals for a new row of this group,
        from the batch's rows if it has one, else from the table."""
        at, cum_all, cum_token = float("-inf"), 0, 0
        seen_all = seen_token = False
        for p in reversed(self._pending or ()):
            if p[0] == family and p[1] == asset:
                if not seen_all:
                    at, cum_all, seen_all = p[3], int(p[5]), True
                if p[4] == token:
                    cum_token, seen_token = int(p[6]), True
                    break
        if not seen_all:
            row = self._store.execute(_LAST_ALL, (family, asset))
            if row:
                cum_all, at = int(row[0][0]), float(row[0][1])
        if not seen_token:
            row = self._store.execute(_LAST_SCOPED, (family, asset, token))
            cum_token = int(row[0][0]) if row else 0
        return at, cum_all, cum_token

    def record(self, family: str, intent: Intent | None, token: str) -> None:
        """Ledger rows of what ``token`` released: the intent's outflow per asset."""
        if intent is None:
            return
        now = self._clock.now()
        rows: list[_Row] = []
        for asset, total in intent.outflow().items():
            last_at, cum_all, cum_token = self._tail(family, asset, token)
            rows.append((family, asset, str(total), max(now, last_at), token,
                         str(cum_all + total), str(cum_token + total)))
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
