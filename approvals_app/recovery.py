"""The recovery sweep: re-examine every open request now and then.

A process killed between recording a request's last approval and releasing it leaves
a request that nothing wakes until its token times out (an hour, or days): the client
saw no answer, and a retried approval is refused as "already answered". The release
worker therefore looks at every open request every ``CUSTODY_SWEEP_SECONDS`` (default
30, :attr:`custody.settings.Settings.sweep_seconds`);
:meth:`custody.broker.Broker.advance` is idempotent and first-writer-wins, so a sweep
racing a replica releases nothing twice. Found by the kill loop
(tests/reliability/killloop.py).
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from custody.broker import Broker
from custody.db import SignRequest, Status
from custody.errors import CustodyError
from hsm_emulator.errors import HsmError

log = logging.getLogger("custody.recovery")


def sweep(broker: Broker) -> int:
    """Advance every open request once; returns how many were looked at."""
    with broker.sessions() as s:
        ids = list(s.scalars(select(SignRequest.id).where(
            SignRequest.status.in_([Status.PENDING, Status.APPROVED]))))
    for request_id in ids:
        try:
            broker.advance(request_id)
        except (CustodyError, HsmError) as exc:  # an outage: the next sweep retries
            log.warning("sweep: %s: %s", request_id, exc)
    return len(ids)


def run_sweeper(broker: Broker, stop: threading.Event, every: float) -> None:
    while not stop.wait(every):
        try:
            sweep(broker)
        except (SQLAlchemyError, HsmError, OSError) as exc:
            log.warning("sweep: %s", exc)
