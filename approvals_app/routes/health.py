"""Liveness and readiness: ready only when the database and the HSM answer.

Chain nodes are not checked, on purpose: a node serves one chain's transfers, which wait
for it (the calls that need it answer 503 ``chain.node_unavailable``), while approvals,
sign requests and the other chains go on. Every replica shares the node, so marking them
unready for it would take the whole service down with one chain.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from approvals_app.deps import BrokerDep, HsmDep, MetricsDep
from approvals_app.responses import Health
from hsm_emulator.errors import HsmError

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {
    "description": "The database or the HSM does not answer",
    "content": {"application/json": {"schema": {"type": "object", "properties": {
        "status": {"const": "unavailable"},
        "problems": {"type": "array", "items": {"type": "string"}}}}}}}})
def readyz(broker: BrokerDep, hsm: HsmDep) -> JSONResponse:
    problems = []
    try:
        with broker.sessions() as s:
            s.execute(text("SELECT 1"))
    except Exception as exc:  # any database failure means not ready
        problems.append(f"database: {type(exc).__name__}")
    try:
        hsm.identity_public_key()
    except (HsmError, OSError) as exc:
        problems.append(f"hsm: {type(exc).__name__}")
    if problems:
        return JSONResponse({"status": "unavailable", "problems": problems}, status_code=503,
                            headers={"Retry-After": "5"})
    return JSONResponse({"status": "ready"})


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(registry: MetricsDep) -> Response:
    """Prometheus text exposition."""
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)
