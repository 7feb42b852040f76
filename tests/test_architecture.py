"""The layering, as import contracts (``[tool.importlinter]`` in ``pyproject.toml``).

The HSM is the trust boundary: it imports no chain, broker, API, web or database code,
but for its process entry point, which wires the chains' decoders. Pure chain code
(building, decoding, sighash) imports no node client or network library. The broker
reaches the web app only through its command line. Chains see of the HSM only its
decoder interface, :mod:`hsm_emulator.decoding`. A broken contract fails here with its
name; the other tests show two failing, on a copy of the tree with a violation planted.
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


def _copy(tmp_path: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _plant(tree: Path, module: str, line: str) -> None:
    path = tree / module
    path.write_text(path.read_text() + f"\n{line}  # planted\n")


def test_a_violation_fails_naming_its_contract(tmp_path: Path) -> None:
    tree = _copy(tmp_path)
    _plant(tree, "hsm_emulator/model.py", "import chains.bitcoin.rpc")  # the HSM, a node client
    result = _lint(tree)
    assert result.returncode != 0
    assert "hsm-is-the-trust-boundary" in result.stdout and "BROKEN" in result.stdout
    assert "hsm_emulator.model -> chains.bitcoin.rpc" in result.stdout


def test_a_chain_reaching_past_the_decoder_interface_fails(tmp_path: Path) -> None:
    """A chain importing an HSM internal (here the broker-side builder reaching for the
    HSM's path parser, as it once did) breaks the decoder-interface contract, while the
    interface module itself stays allowed."""
    tree = _copy(tmp_path)
    _plant(tree, "chains/bitcoin/builder.py", "from hsm_emulator.derivation import parse_path")
    result = _lint(tree)
    assert result.returncode != 0
    assert "chains-see-only-the-decoder-interface" in result.stdout
    assert "chains.bitcoin.builder -> hsm_emulator.derivation" in result.stdout
    assert "chains.bitcoin.decoder -> hsm_emulator.decoding" not in result.stdout


def test_a_chain_spec_importing_its_planner_fails(tmp_path: Path) -> None:
    """The HSM's entry point reads the chain specs for their decoders, so a spec names
    its planner's module instead of importing it: an import would load node clients and
    SQL into the HSM."""
    tree = _copy(tmp_path)
    _plant(tree, "chains/solana/spec.py", "import chains.solana.planner")
    result = _lint(tree)
    assert result.returncode != 0
    assert "pure-chain-code" in result.stdout
    assert "chains.solana.spec -> chains.solana.planner" in result.stdout
