"""The release worker: wakes for the earliest hold end or timeout and advances whatever
is due, so a request nobody touches still releases (or expires) on time."""

from __future__ import annotations

import threading

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from hsm_emulator.errors import HsmError

from ..db import FINAL, SignRequest
from ..errors import CustodyError
from .release import Release
from .store import RequestStore


class Scheduler:
    def __init__(self, store: RequestStore, release: Release) -> None:
        self.store = store
        self.release = release

    def due(self) -> list[str]:
        """Requests whose hold has ended (or that should be re-examined) by now."""
        with self.store.sessions() as s:
            return list(s.scalars(select(SignRequest.id).where(
                SignRequest.wake_at.is_not(None), SignRequest.wake_at <= self.store.clock(),
                SignRequest.status.not_in([st.value for st in FINAL]))))

    def next_wake(self) -> float | None:
        with self.store.sessions() as s:
            wake: float | None = s.scalar(select(SignRequest.wake_at).where(
                SignRequest.wake_at.is_not(None),
                SignRequest.status.not_in([st.value for st in FINAL])).order_by(
                    SignRequest.wake_at).limit(1))
            return wake

    def tick(self) -> int:
        """Advance every due request; returns how many were looked at."""
        ids = self.due()
        for request_id in ids:
            self.release.advance(request_id)
        return len(ids)

    def run(self, stop: threading.Event, max_sleep: float = 5.0) -> None:
        """Wake for the earliest hold end (or when told a new one exists), never poll
        blindly for long: a released hold is signed within milliseconds of its end."""
        while not stop.is_set():
            try:
                self.tick()
                wake = self.next_wake()
            except (CustodyError, HsmError, OSError, SQLAlchemyError):  # an outage: go on
                wake = None
            delay = (max_sleep if wake is None
                     else max(0.0, min(max_sleep, wake - self.store.clock())))
            with self.release.wake:
                self.release.wake.wait(timeout=delay)

    def stop(self) -> None:
        with self.release.wake:
            self.release.wake.notify_all()
