"""The HSM process's time, as the test holds it: real time plus an offset the test moves.

The HSM runs with ``--clock-file`` (a TEST ONLY option, :class:`hsm_emulator.remote.
__main__.FileClock`) and reads the file on every use. A thread here rewrites it with
``time.time() + offset`` every few milliseconds, so holds and timeouts run at the wall
clock's pace (the broker's own clock) until :meth:`HsmTime.advance` lets a whole hold pass
at once - a 24 h hold ends in a moment, as ``tests/remote_kit.py``'s TimeControl does for
a single test, without freezing the HSM's time for the traffic around it.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

#: How often the file is rewritten: the HSM's time lags the wall clock by at most this.
TICK_SECONDS = 0.02


class HsmTime:
    """Start with :meth:`start` before the HSM process starts; stop with :meth:`stop`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="hsm-time", daemon=True)

    def now(self) -> float:
        with self._lock:
            return time.time() + self.offset

    def start(self) -> HsmTime:
        self._write()
        self._thread.start()
        return self

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass for the HSM at once (and only for it)."""
        with self._lock:
            self.offset += seconds
        self._write()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            self._write()

    def _write(self) -> None:
        with self._lock:  # one writer at a time: advance() and the ticker share the file
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(repr(time.time() + self.offset), encoding="ascii")
            os.replace(tmp, self.path)  # atomic: the HSM never reads half a number
