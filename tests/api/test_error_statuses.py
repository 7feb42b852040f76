"""Every error code a package can raise has a deliberate HTTP status.

``approvals_app.problems.STATUS`` maps codes to statuses and falls back to 500 (502 for
a chain) for a code it does not know. A new ``HsmError`` subclass added without an entry
would silently answer "internal error" to a caller who sent bad input, or tell a client
to give up on an outage it should retry. This walks every subclass of each package's error
root (importing every module first, so a subclass defined anywhere is seen) and requires
an entry for each concrete code, and that the handler really answers with it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from types import ModuleType

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import chains
import custody
import hsm_emulator
from approvals_app.problems import STATUS, install
from chains.errors import ChainError
from custody.errors import CustodyError
from hsm_emulator.errors import HsmError

#: The roots themselves are abstract: nothing raises them bare.
ROOT_CODES = {HsmError.code, CustodyError.code, ChainError.code}


def _import_all(package: ModuleType) -> None:
    path, prefix = package.__path__, package.__name__ + "."
    for info in pkgutil.walk_packages(path, prefix):
        if info.name.endswith("__main__") or ".migrations" in info.name:
            continue  # entry points run on import; alembic's env needs alembic's context
        importlib.import_module(info.name)


def _subclasses(root: type[Exception]) -> Iterator[type[Exception]]:
    for sub in root.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _codes() -> dict[str, type[Exception]]:
    for package in (hsm_emulator, chains, custody):
        _import_all(package)
    found: dict[str, type[Exception]] = {}
    for root in (HsmError, CustodyError, ChainError):
        for cls in _subclasses(root):
            code = getattr(cls, "code", None)
            if isinstance(code, str) and code not in ROOT_CODES:
                found.setdefault(code, cls)
    return found


CODES = _codes()


def test_the_walk_finds_the_known_codes() -> None:
    """The walk itself works: it sees codes from all three packages."""
    assert {"hsm.policy_not_met", "hsm.store_rolled_back", "custody.conflict",
            "chain.node_unavailable"} <= set(CODES)


@pytest.mark.parametrize("code", sorted(CODES))
def test_every_code_has_a_status(code: str) -> None:
    assert code in STATUS, (
        f"{CODES[code].__module__}.{CODES[code].__name__} raises {code!r}, which "
        "approvals_app/problems.py STATUS does not map: give it a deliberate status")
    assert 400 <= STATUS[code] <= 599


@pytest.mark.parametrize("code", sorted(CODES))
def test_the_handler_answers_with_that_status(code: str) -> None:
    cls = CODES[code]
    app = FastAPI()
    install(app)

    @app.get("/boom")
    def boom() -> None:
        # built without its own __init__ (whose arguments differ per class), with the
        # attributes the handler reads
        exc = cls.__new__(cls)
        Exception.__init__(exc, "refused for the test")
        for name, value in (("reason", "refused for the test"), ("field", "x"),
                            ("missing", ())):
            setattr(exc, name, value)
        raise exc

    got = TestClient(app).get("/boom")
    assert got.status_code == STATUS[code]
    assert got.json()["code"] == code
    assert got.headers["content-type"].startswith("application/problem+json")
