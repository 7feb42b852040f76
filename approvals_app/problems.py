"""Errors as RFC 9457 problem details, from one place, with stable codes.

Routes raise domain errors (``HsmError``, ``CustodyError``, ``ChainError``); this maps
them. Bad input is always a 4xx; a 5xx means the service itself (or a part it needs: the
database, the HSM, a chain node) is unwell.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from chains.errors import ChainError
from custody.errors import CustodyError
from hsm_emulator.errors import HsmError, PolicyInvalid, PolicyNotMet

STATUS = {
    "hsm.invalid_input": 400, "hsm.policy_invalid": 400, "hsm.credential_invalid": 400,
    "hsm.decode_error": 422, "hsm.key_not_found": 404, "hsm.request_not_found": 404,
    "hsm.key_exists": 409, "hsm.request_exists": 409, "hsm.request_closed": 409,
    "hsm.key_blocked": 409, "hsm.policy_not_met": 409, "hsm.intent_mismatch": 409,
    "hsm.network_not_allowed": 422, "hsm.key_invalidated": 410,
    "hsm.attribute_denied": 403, "hsm.approval_refused": 403,
    "hsm.authentication_failed": 401, "hsm.derivation_error": 400,
    "hsm.store_locked": 503, "hsm.transport_error": 503, "hsm.audit_failure": 503,
    "hsm.tamper_detected": 500, "hsm.store_rolled_back": 500, "hsm.counter_failure": 503,
    "hsm.request_expired": 409, "hsm.duplicate_approver": 403, "hsm.backup_invalid": 400,
    "hsm.restore_refused": 409,
    "custody.bad_request": 400, "custody.unauthorized": 401, "custody.forbidden": 403,
    "custody.not_found": 404, "custody.conflict": 409, "custody.rate_limited": 429,
    "custody.unavailable": 503,
    "chain.node_unavailable": 503, "chain.invalid_address": 400,
    "chain.insufficient_funds": 400, "chain.build_error": 400, "chain.decode_error": 422,
    "chain.broadcast_rejected": 409, "chain.broadcast_expired": 409, "chain.nonce_error": 409,
    "chain.rpc_error": 502,  # the node answered, with an error of its own
}
#: A chain error without its own status: the node answered, but not as it should.
CHAIN_DEFAULT = 502

PROBLEM_JSON = "application/problem+json"


class Problem(BaseModel):
    """The body of every refusal (RFC 9457), with ``field``, ``missing`` or ``errors``
    added where they help."""

    model_config = ConfigDict(extra="allow")
    type: str
    title: str
    status: int
    detail: str
    code: str


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI declarations of the problem+json refusals a route can give, so the spec
    says what the service really answers (and fuzzers can hold it to that)."""
    schema = Problem.model_json_schema()
    return {code: {"description": HTTPStatus(code).phrase,
                   "content": {PROBLEM_JSON: {"schema": schema}}} for code in codes}


#: What any API route may answer besides success: bad input, authentication and roles,
#: unknown ids, state conflicts, an invalidated key, a body over the size limit
#: (``body_limit``), the failure limiter, and an HSM that is locked or unreachable.
REFUSALS = responses(400, 401, 403, 404, 409, 410, 413, 422, 429, 503)


def problem(status: int, code: str, detail: str, headers: Mapping[str, str] | None = None,
            **extra: Any) -> JSONResponse:
    body = {"type": f"urn:ska-custody:problem:{code}", "title": code, "status": status,
            "detail": detail, "code": code, **extra}
    out = dict(headers or {})
    if status in (429, 503):
        out["Retry-After"] = "5"
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=out)


def _count(req: Request, code: str) -> None:
    metrics = getattr(req.app.state, "metrics", None)
    if metrics is not None:
        metrics.refusals.labels(code).inc()


#: Database errors that mean "the database is unavailable" (down, restarting, pool
#: exhausted, locked), not "this request is wrong": 503 with Retry-After, like the HSM's.
DB_OUTAGES = (OperationalError, InterfaceError, PoolTimeout)


def install(app: FastAPI) -> None:
    async def _database(req: Request, exc: Exception) -> JSONResponse:
        _count(req, "custody.database_unavailable")
        return problem(503, "custody.database_unavailable",
                       f"the database is unavailable ({type(exc).__name__}); retry shortly")

    for outage in DB_OUTAGES:
        app.add_exception_handler(outage, _database)

    @app.exception_handler(HsmError)
    async def _hsm(req: Request, exc: HsmError) -> JSONResponse:
        _count(req, exc.code)
        extra: dict[str, Any] = {}
        if isinstance(exc, PolicyInvalid):
            extra["field"] = exc.field
        if isinstance(exc, PolicyNotMet):
            extra["missing"] = list(exc.missing)
        return problem(STATUS.get(exc.code, 500), exc.code, exc.reason, **extra)

    @app.exception_handler(CustodyError)
    async def _custody(req: Request, exc: CustodyError) -> JSONResponse:
        _count(req, exc.code)
        return problem(STATUS.get(exc.code, 500), exc.code, exc.reason)

    @app.exception_handler(ChainError)
    async def _chain(req: Request, exc: ChainError) -> JSONResponse:
        """A node that does not answer is an outage (503, Retry-After), not a bug (500):
        the same call succeeds once the node is back."""
        _count(req, exc.code)
        return problem(STATUS.get(exc.code, CHAIN_DEFAULT), exc.code, exc.reason)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
                  for e in exc.errors()[:20]]
        return problem(422, "custody.invalid_body", "the request body is not valid",
                       errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(req: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # RFC 9110 15.5.6: say which methods are allowed
            headers["Allow"] = _allowed(req)
        return problem(exc.status_code, f"http.{exc.status_code}", str(exc.detail),
                       headers=headers)


def _allowed(req: Request) -> str:
    """Every method of every route on this path. Starlette's own ``Allow`` lists only the
    first route's, wrong for a path served by two (GET and DELETE /v1/request/{id}). As
    OpenAPI matches paths, a concrete one (``/v1/enrolment/passkey``) hides a template
    that would also match (``/v1/enrolment/{enrolment_id}``)."""
    path = req.scope.get("path", "")
    found: list[tuple[str, set[str]]] = []
    for route in iter_route_contexts(req.app.router.routes):
        regex = getattr(route, "path_regex", None)
        if route.methods and route.path and regex is not None and regex.match(path):
            found.append((route.path, route.methods))
    concrete = [m for p, m in found if "{" not in p]
    return ", ".join(sorted(set[str]().union(*(concrete or [m for _, m in found]))))
