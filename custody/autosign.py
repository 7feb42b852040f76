"""Auto-tier sign requests coalesced: one HSM batch and one broker commit for many.

Requests for a key whose policy signs at once arrive from many HTTP handlers at the
same moment. Taking them one by one costs, per request, an HSM round (lock, decode,
evaluate, sign, audit, commit), a broker commit and two thread hand-offs. Here they
queue for one worker thread, which takes whatever has queued while it worked - a
natural batch, no waiting for one to fill - and per key hands them to the HSM's
:meth:`~hsm_emulator.client.HsmClient.sign_batch` (every payload decoded, evaluated,
signed and audited on its own; one commit), then records them here in one commit.

Nothing is decided here. ``sign_batch`` is all or nothing: if the HSM refuses any
payload - this one needs approvals, that one crossed a velocity limit, the key was
blocked - nothing was signed, and each request of the batch takes the ordinary path
(:meth:`Broker.submit`) on its own, so each gets the answer it would have had alone.
If the HSM cannot be reached the outcome is unknown, so no request is tried again:
each fails as ``submit`` would (503), and the HSM's audit log tells what happened.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from hsm_emulator.errors import HsmError, TransportError
from hsm_emulator.model import Action

from .broker import Broker, Call

log = logging.getLogger("custody.autosign")
#: Most requests one HSM batch takes (the HSM allows 1,000).
MAX_BATCH = 256


@dataclass
class _Job:
    call: Call
    done: Future[str] = field(default_factory=Future)


class AutoSigner:
    """Queue auto-tier requests; a worker signs and records them in batches."""

    def __init__(self, broker: Broker, max_batch: int = MAX_BATCH,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.broker = broker
        self.max_batch = max_batch
        self.on_batch = on_batch or (lambda _size: None)
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()

    def accepts(self, label: str) -> bool:
        """Whether ``label``'s requests are worth batching (its last one signed at once)."""
        return self.broker.intake.signs_at_once(label)

    def submit(self, call: Call) -> Future[str]:
        """Queue a USE request; the future gives its request id (EXECUTED) or the error
        :meth:`Broker.submit` would have raised."""
        if call.action is not Action.USE:
            raise ValueError("only USE requests are signed at once")
        job = _Job(call)
        self._ensure_started()
        self._queue.put(job)
        return job.done

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    def _ensure_started(self) -> None:
        if self._thread is None:
            with self._start:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="auto-signer",
                                                    daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = [first]
            while len(jobs) < self.max_batch:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                jobs.append(job)
            try:
                self._sign(jobs)
            except Exception as exc:  # the worker must outlive anything, and no caller hang
                log.exception("auto-signer batch failed")
                _fail_all([j for j in jobs if not j.done.done()], exc)

    def sign_together(self, calls: list[Call]) -> list[Future[str]]:
        """Sign ``calls`` as one batch, here and now (what the worker does with each
        batch it takes); the futures are done when this returns."""
        jobs = [_Job(c) for c in calls]
        self._sign(jobs)
        return [j.done for j in jobs]

    def _sign(self, jobs: list[_Job]) -> None:
        # a caller that gave up (its future cancelled) is not signed for; the others'
        # futures can no longer be cancelled, so each gets its answer
        jobs = [j for j in jobs if j.done.set_running_or_notify_cancel()]
        if not jobs:
            return
        self.on_batch(len(jobs))
        groups: dict[tuple[str, str, str | None], list[_Job]] = defaultdict(list)
        for job in jobs:
            c = job.call
            if not _failed(job, self.broker.intake.check_key, c.label, c.principal.tenant):
                groups[(c.label, c.payload_type, c.algorithm)].append(job)
        for (label, payload_type, algorithm), group in groups.items():
            self._sign_group(label, payload_type, algorithm, group)

    def _sign_group(self, label: str, payload_type: str, algorithm: str | None,
                    group: list[_Job]) -> None:
        try:
            results = self.broker.hsm.sign_batch(label, [j.call.payload for j in group],
                                                 payload_type, algorithm)
        except TransportError as exc:  # signed or not, unknown: never sign twice
            _fail_all(group, exc)
            return
        except HsmError as exc:  # refused, so nothing was signed: each on its own
            log.debug("batch for %s refused (%s); one by one", label, exc.code)
            self.broker.intake.not_at_once(label)
            for job in group:
                _failed(job, self._alone, job)
            return
        except Exception as exc:  # every caller must hear of it
            _fail_all(group, exc)
            return
        try:
            rows = self.broker.intake.record_signed([j.call for j in group], results)
        except Exception as exc:  # signed, not recorded: as submit would
            log.error("recording %d signed requests failed: %s", len(group), exc)
            _fail_all(group, exc)
            return
        for job, row in zip(group, rows, strict=True):
            job.done.set_result(row.id)

    def _alone(self, job: _Job) -> None:
        """The ordinary path for one request (approval flow if it needs one)."""
        c = job.call
        job.done.set_result(self.broker.submit(c.principal, c.label, Action.USE, c.payload,
                                               c.payload_type, c.algorithm, c.meta).id)


def _failed(job: _Job, work: Callable[..., object], *args: Any) -> bool:
    """Run ``work(*args)`` for ``job``; if it raises, the job ends with that error."""
    try:
        work(*args)
    except Exception as exc:  # the caller gets it, as from submit
        job.done.set_exception(exc)
        return True
    return False


def _fail_all(group: list[_Job], exc: Exception) -> None:
    for job in group:
        job.done.set_exception(exc)
