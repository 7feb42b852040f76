"""Footguns of the HTTP surface: ``/docs`` and ``/redoc`` work without the internet, the
spec declares the bearer scheme, and an oversized body is refused with 413 before it is
parsed or its caller authenticated (declared by Content-Length or streamed in chunks)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from approvals_app.main import create_app
from approvals_app.settings import Settings
from hsm_emulator import Hsm
from tests.api.test_api_tutorial import SECRET, bearer
from tests.conftest import SO, TEST_PASSPHRASE

LIMIT = 4096


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    hsm = Hsm.open(tmp_path / "hsm.sqlite", TEST_PASSPHRASE, so_passphrase=SO)
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'b.sqlite'}", jwt_secret=SECRET,
                        max_body_bytes=LIMIT)
    with TestClient(create_app(settings, hsm, scheduler=False)) as client:
        yield client
    hsm.close()


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_local_assets(api: TestClient, page: str) -> None:
    r = api.get(page)
    assert r.status_code == 200
    urls = re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", r.text)
    assert urls, r.text
    assert not [u for u in urls if "//" in u], r.text  # no http(s):// nor //host
    for url in urls:
        asset = api.get(url)
        assert asset.status_code == 200 and len(asset.content) > 1000, url


def test_spec_declares_the_bearer_scheme(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    scheme = spec["components"]["securitySchemes"]["bearerAuth"]
    assert scheme == {**scheme, "type": "http", "scheme": "bearer"}
    paths = spec["paths"]
    assert paths["/v1/sign"]["post"]["security"] == [{"bearerAuth": []}]
    assert paths["/v1/transfers"]["post"]["security"] == [{"bearerAuth": []}]
    assert "security" not in paths["/healthz"]["get"]


def test_declared_oversized_body_is_refused_before_authentication(api: TestClient) -> None:
    r = api.post("/v1/sign", content=b"{" + b" " * (LIMIT * 4) + b"}",
                 headers={"Content-Type": "application/json"})
    assert r.status_code == 413  # not 401: nobody authenticated, nothing parsed
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "custody.body_too_large"


def test_chunked_oversized_body_is_refused(api: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(16):
            yield b" " * 1024

    token = bearer("desk", "business")
    r = api.post("/v1/sign", content=chunks(), headers={**token,
                                                        "Content-Type": "application/json"})
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert r.status_code == 413
    assert r.json()["code"] == "custody.body_too_large"


def test_bodies_under_the_limit_pass(api: TestClient) -> None:
    r = api.post("/v1/sign", json={"signRequest": {}}, headers=bearer("desk", "business"))
    assert r.status_code not in (413, 500)
