"""The notebooks in ``notebooks/`` are executed, so they can not rot.

Each one runs top to bottom with nbclient in a scratch working directory; any cell that
raises fails the test. The kernel is this interpreter (the venv's), whatever kernelspecs
happen to be installed for the user or the system: the test writes its own ``python3``
kernelspec with ``sys.executable`` and gives nbclient a kernel manager that looks only
there. The notebooks are stored without outputs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from custody.localnets import find_anvil

pytestmark = [pytest.mark.slow, pytest.mark.node]
NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
#: Printed by a cell the test appends: proves which interpreter ran the notebook.
PROBE = "import sys; print('kernel-python:', sys.executable)"


def kernel_manager(spec_root: Path) -> KernelManager:
    """A kernel manager whose only ``python3`` kernel is ``sys.executable -m ipykernel``."""
    spec = spec_root / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (this venv)", "language": "python"}))
    specs = KernelSpecManager(kernel_dirs=[str(spec_root)], ensure_native_kernel=False)
    return KernelManager(kernel_name="python3", kernel_spec_manager=specs)


def execute(nb: nbformat.NotebookNode, work: Path, spec_root: Path) -> None:
    """Run every cell in ``work``; raises ``CellExecutionError`` if one raises."""
    km = kernel_manager(spec_root)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", km=km,
                            resources={"metadata": {"path": str(work)}})
    try:
        client.execute()
    finally:  # a kernel manager we own is ours to stop; nbclient leaves it running
        if client.kc is not None:
            client.kc.stop_channels()
        if km.has_kernel:
            # graceful: the kernel terminates its children (anvil) and runs its atexit hooks
            km.shutdown_kernel()


@pytest.mark.parametrize("name", ["treasury_day", "audit_offline"])
def test_notebook_runs(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if find_anvil() is None and not os.environ.get("CI"):
        pytest.skip("anvil not installed (npm install --prefix .ci/npm "
                    "@foundry-rs/anvil-linux-amd64)")
    path = NOTEBOOKS / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]
    assert all(not c.get("outputs") and not c.get("execution_count")
               for c in nb.cells if c.cell_type == "code"), f"{path.name}: clear its outputs"
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))  # type: ignore[no-untyped-call]
    work = tmp_path / "work"
    work.mkdir()
    artifacts = tmp_path / "artifacts"
    monkeypatch.setenv("NOTEBOOK_ARTIFACTS", str(artifacts))  # the kernel inherits it
    started = time.monotonic()
    execute(nb, work, tmp_path / "kernels")
    elapsed = time.monotonic() - started
    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    assert printed.strip() == f"kernel-python: {sys.executable}"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
    if name == "treasury_day":
        png = artifacts / "treasury_day_time.png"
        assert png.read_bytes().startswith(b"\x89PNG")
    assert elapsed < 120, f"{name} took {elapsed:.0f} s"
