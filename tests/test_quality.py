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
