"""The service: ``create_app`` wires settings, the HSM client, the broker and routes.

The HSM is reached only through an ``HsmClient``: in-process by default, or a
:class:`hsm_emulator.remote.RemoteHsmClient` handed in. A scheduler thread wakes for
the earliest hold end so held requests are released as soon as they may be.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio.to_thread
from fastapi import FastAPI

from chains.registry import registry
from custody.autosign import AutoSigner
from custody.broker import Broker
from custody.db import SignRequest, Status, make_engine, make_sessions
from custody.treasury import webhooks
from custody.treasury.networks import ChainEndpoints, Networks
from custody.treasury.transfers import Treasury
from hsm_emulator import Hsm, Passphrase
from hsm_emulator.client import HsmClient, local_client
from hsm_emulator.remote import RemoteHsmClient, read_secret_file

from . import api_docs, body_limit, problems
from .auth import FailureLimiter, VerifiedTokens
from .events import EventHub
from .metrics import Metrics
from .observe import Observe
from .routes import (
    address_lists,
    approvals,
    approver_page,
    audit,
    enrolment,
    events,
    health,
    keys,
    requests,
    sign,
)
from .routes import treasury as treasury_routes
from .settings import Settings

log = logging.getLogger("custody.api")


def open_hsm(settings: Settings) -> HsmClient:
    """The HSM as its own process if ``hsm_url`` is set, else in-process (the default)."""
    if settings.hsm_url:
        return RemoteHsmClient(settings.hsm_url,
                               read_secret_file(Path(settings.hsm_secret_file)))
    return local_client(Hsm.open(settings.hsm_store, Passphrase(settings.hsm_passphrase),
                                 so_passphrase=settings.hsm_so_passphrase or None,
                                 decoders=registry(), nvram=settings.hsm_nvram or None))


def start_workers(broker: Broker, treasury: Treasury,
                  stop: threading.Event) -> list[threading.Thread]:
    """The release scheduler (holds) and the treasury worker (broadcast, confirmations,
    webhooks), as daemon threads of this process; ``custody worker`` runs the same."""
    threads = [
        threading.Thread(target=broker.run_scheduler, args=(stop,), name="release-scheduler",
                         daemon=True),
        threading.Thread(target=treasury.run, args=(stop, webhooks.Dispatcher(broker.sessions)),
                         name="treasury-worker", daemon=True)]
    for thread in threads:
        thread.start()
    return threads


def create_app(settings: Settings, hsm: HsmClient | None = None, *,
               broker: Broker | None = None, scheduler: bool = True,
               chains: ChainEndpoints | None = None) -> FastAPI:
    client = hsm if hsm is not None else open_hsm(settings)
    hub, metrics = EventHub(), Metrics()

    def on_change(row: SignRequest) -> None:
        hub.publish({"id": row.id, "status": row.status, "keyLabel": row.key_label,
                     "action": row.action})
        metrics.requests.labels(row.status).inc()
        if row.status == Status.EXECUTED and row.execution_time is not None:
            metrics.release.observe(max(0.0, row.execution_time.timestamp() - row.hsm_time))

    if broker is None:
        broker = Broker(client, make_sessions(make_engine(settings.database_url)),
                        max_skew=settings.max_skew_seconds, on_change=on_change)
    autosigner = AutoSigner(broker, on_batch=metrics.batch.observe)
    treasury = Treasury(broker, Networks(chains or ChainEndpoints.from_settings(settings),
                                         client))
    stop = threading.Event()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Handlers are CPU-bound Python (the GIL serialises them): a few threads keep the
        # cores busy; dozens only add switching and lock hand-offs (measured: bench api).
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.handler_threads
        threads = start_workers(broker, treasury, stop) if scheduler else []
        yield
        stop.set()
        autosigner.close()
        broker.stop_scheduler()
        treasury.nudge()
        for thread in threads:
            thread.join(timeout=5)
        broker.close()

    app = FastAPI(title="SKA custody", version="0.1.0", lifespan=lifespan,
                  docs_url=None, redoc_url=None,  # api_docs: served offline
                  description="TSB-compatible API in front of an HSM that enforces "
                              "Smart Key Attributes.")
    # read through the typed dependencies of approvals_app.deps, never by routes
    app.state.settings = settings
    app.state.hsm = client
    app.state.broker = broker
    app.state.autosigner = autosigner
    app.state.treasury = treasury
    app.state.limiter = FailureLimiter()
    app.state.tokens = VerifiedTokens()
    app.state.events = hub
    app.state.metrics = metrics
    problems.install(app)
    modules = (keys, sign, approvals, requests, events, audit, health, treasury_routes,
               enrolment, approver_page, address_lists)
    for module in modules:
        # every refusal is problem+json (problems.install): the spec says so, per route
        app.include_router(module.router, responses=None if module is health
                           else problems.REFUSALS)

    api_docs.install(app, [module.router for module in modules])
    body_limit.install(app, settings.max_body_bytes)  # before parsing and authentication
    app.add_middleware(Observe, metrics=metrics)
    return app
