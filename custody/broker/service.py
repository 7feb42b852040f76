"""The broker as one object: its parts wired together, and the few entry points most
callers use (submit, read, advance, cancel, the scheduler) kept here as one-line
delegations. Approver sessions, key tenancy and rule views are reached through their
parts: ``broker.approvers``, ``broker.intake``, ``broker.rules``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import sessionmaker

from hsm_emulator.client import HsmClient
from hsm_emulator.flow import Approval
from hsm_emulator.model import Action

from ..db import ApprovalRecord, SignRequest
from .approvers import ApproverSessions
from .intake import Intake
from .model import Principal
from .release import Release
from .rules import Rules
from .scheduler import Scheduler
from .store import RequestStore


class Broker:
    def __init__(self, hsm: HsmClient, sessions: sessionmaker,  # type: ignore[type-arg]
                 *, clock: Callable[[], float] = time.time, max_skew: float = 300.0,
                 on_change: Callable[[SignRequest], None] | None = None,
                 finalize: Callable[[SignRequest], bytes | None] | None = None) -> None:
        self.hsm = hsm
        self.sessions = sessions
        #: request rows and approvals; ``store.on_change`` hears of every change
        self.store = RequestStore(sessions, clock, on_change)
        self.rules = Rules(hsm)
        #: the state machine; ``release.finalize`` may rebuild a payload before signing
        self.release = Release(hsm, self.store, self.rules, threading.Condition(), finalize)
        self.intake = Intake(hsm, self.store, self.release)
        self.approvers = ApproverSessions(hsm, self.store, self.rules, self.release,
                                          max_skew=max_skew)
        self.scheduler = Scheduler(self.store, self.release)

    def close(self) -> None:
        """Release the database connections."""
        bind = self.sessions.kw.get("bind")
        if bind is not None:
            bind.dispose()

    def submit(self, principal: Principal, label: str, action: Action, payload: bytes,
               payload_type: str, algorithm: str | None, meta: dict[str, Any] | None,
               new_policy: dict[str, Any] | None = None, *, fee_cap: int | None = None,
               auto: bool = True, request_id: str | None = None,
               initiation: Approval | None = None, released: bool = False) -> SignRequest:
        """:meth:`Intake.submit`."""
        return self.intake.submit(principal, label, action, payload, payload_type, algorithm,
                                  meta, new_policy, fee_cap=fee_cap, auto=auto,
                                  request_id=request_id, initiation=initiation,
                                  released=released)

    def get(self, request_id: str, tenant: str | None = None) -> SignRequest:
        return self.store.get(request_id, tenant)

    def approvals(self, request_id: str) -> list[ApprovalRecord]:
        return self.store.approvals(request_id)

    def advance(self, request_id: str) -> SignRequest:
        """:meth:`Release.advance`: as far as approvals and the clock allow. Idempotent."""
        return self.release.advance(request_id)

    def cancel(self, principal: Principal, request_id: str) -> SignRequest:
        return self.release.cancel(principal, request_id)

    def tick(self) -> int:
        """:meth:`Scheduler.tick`: advance every due request."""
        return self.scheduler.tick()

    def run_scheduler(self, stop: threading.Event, max_sleep: float = 5.0) -> None:
        self.scheduler.run(stop, max_sleep)

    def stop_scheduler(self) -> None:
        self.scheduler.stop()
