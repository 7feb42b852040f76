"""The layering, as import contracts (``[tool.importlinter]`` in ``pyproject.toml``).

The HSM is the trust boundary: it imports no chain, broker, API, web or database code,
but for its process entry point, which wires the chains' decoders. Pure chain code
(building, decoding, sighash) imports no node client or network library. The broker
reaches the web app only through its command line. A broken contract fails here with
its name; the second test shows one failing, on a copy of the tree with a violation
planted.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("hsm_emulator", "chains", "custody", "approvals_app")
LINT = str(Path(sys.executable).with_name("lint-imports"))


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LINT, "--config", str(cwd / "pyproject.toml")], cwd=cwd,
                          env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=300, check=False)


def test_the_import_contracts_are_kept() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " broken" in result.stdout and "0 broken" in result.stdout


def test_a_violation_fails_naming_its_contract(tmp_path: Path) -> None:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    model = tmp_path / "hsm_emulator" / "model.py"  # the HSM reaching for a node client
    model.write_text(model.read_text() + "\nimport chains.bitcoin.rpc  # planted\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "hsm-is-the-trust-boundary" in result.stdout and "BROKEN" in result.stdout
    assert "hsm_emulator.model -> chains.bitcoin.rpc" in result.stdout
