"""``/docs`` and ``/redoc`` from files the service ships, and the bearer scheme in the spec.

Custody sites are often air-gapped: FastAPI's own pages load Swagger UI and ReDoc from a
CDN (and ReDoc its fonts from Google), so they show nothing there. The assets come from
the ``fastapi-offline`` wheel (Swagger UI and ReDoc bundles) and are served under
``/docs-assets``; the pages are FastAPI's, pointed at them.

The spec declares the JWT bearer scheme and marks each operation that authenticates a
caller (any route depending on :func:`approvals_app.deps.principal_from` or a
``RequireRole`` check) with it, so a
client generator or the Swagger UI "Authorize" button knows which calls need a token;
approvers authenticate by signatures and the health routes not at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles

from .deps import RequireRole, principal_from

ASSETS = Path(fastapi_offline.__file__).parent / "static"
PREFIX = "/docs-assets"
SCHEME = "bearerAuth"


def install(app: FastAPI, routers: Sequence[APIRouter]) -> None:
    """Call on an app made with ``docs_url=None, redoc_url=None``, with the routers it
    includes (read before inclusion: what an app keeps of an included router varies
    between FastAPI versions)."""
    app.mount(PREFIX, StaticFiles(directory=ASSETS), name="docs-assets")
    spec = app.openapi_url or "/openapi.json"
    oauth2_redirect = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        # validatorUrl null: Swagger UI would otherwise fetch a badge from the internet
        return get_swagger_ui_html(
            openapi_url=spec, title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{PREFIX}/swagger-ui-bundle.js",
            swagger_css_url=f"{PREFIX}/swagger-ui.css",
            swagger_favicon_url=f"{PREFIX}/favicon.png", oauth2_redirect_url=oauth2_redirect,
            swagger_ui_parameters={"validatorUrl": None})

    @app.get(oauth2_redirect, include_in_schema=False)
    async def swagger_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=spec, title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{PREFIX}/redoc.standalone.js",
                              redoc_favicon_url=f"{PREFIX}/favicon.png",
                              with_google_fonts=False)

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = with_bearer(routers, generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _authenticates(dependant: Dependant) -> bool:
    """``principal_from`` itself, or a ``RequireRole(...)`` check (which calls it)."""
    call = dependant.call
    return (call is principal_from
            or getattr(call, "__qualname__", "").startswith(RequireRole.__qualname__ + ".")
            or any(_authenticates(d) for d in dependant.dependencies))


def with_bearer(routers: Sequence[APIRouter], spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with the bearer scheme, required by the operations that authenticate."""
    spec.setdefault("components", {}).setdefault("securitySchemes", {})[SCHEME] = {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
        "description": "A JWT (HS256) with sub, tenant, roles, aud, iss and exp."}
    for route in (r for router in routers for r in router.routes):
        if not isinstance(route, APIRoute) or not _authenticates(route.dependant):
            continue
        for method in route.methods or ():
            operation = spec.get("paths", {}).get(route.path_format, {}).get(method.lower())
            if operation is not None:
                operation["security"] = [{SCHEME: []}]
    return spec
