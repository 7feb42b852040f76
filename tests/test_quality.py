"""Lint and strict typing are part of the test command, so they cannot drift."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, check=False, timeout=600)


def test_ruff_is_clean() -> None:
    result = _run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    result = _run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_importing_the_chains_keeps_the_recursion_limit() -> None:
    """A raised limit lets deeply nested hostile JSON overflow the C stack (a crash)
    instead of raising RecursionError, which every parser here turns into a 4xx."""
    code = ("import sys; before = sys.getrecursionlimit(); import chains.registry, "
            "approvals_app.main, hsm_emulator.remote; print(before, sys.getrecursionlimit())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=120).stdout.split()
    assert out[0] == out[1]


PACKAGES = ("hsm_emulator", "chains", "custody", "approvals_app")
MAX_MODULE_LINES = 700
MAX_CLASS_METHODS = 30


def _shipped() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_modules_and_classes_stay_small() -> None:
    """Issue 13's limits, held: a module over 700 lines or a class over 30 methods is a
    sign of several concepts in one place (the redesign split four such)."""
    import ast

    too_long = [f"{p.relative_to(ROOT)}: {n} lines" for p in _shipped()
                if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    too_wide = []
    for p in _shipped():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ClassDef):
                methods = [f for f in node.body
                           if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)]
                if len(methods) > MAX_CLASS_METHODS:
                    too_wide.append(f"{p.relative_to(ROOT)}:{node.name}: {len(methods)}")
    assert _shipped(), "no shipped modules found"
    assert not too_long and not too_wide, too_long + too_wide
