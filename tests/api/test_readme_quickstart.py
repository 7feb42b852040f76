"""The README's service quickstart, run as written: its marked shell blocks, in order, in a
fresh directory with a fresh home (no ``~/.custody``), so the README cannot drift.

A block after ``<!-- quickstart: background -->`` is what the README runs in a terminal
of its own (the nodes, the server): here it runs in the background of the same shell. A
block after ``<!-- quickstart: run -->`` runs in the foreground. ``.venv/bin/custody`` is
this interpreter's ``custody``; the ports are swapped for free ones (nothing else is
changed). Needs the local nodes (anvil), ``curl`` and ``jq``, as CI has.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.node

ROOT = Path(__file__).resolve().parents[2]
MARKED = re.compile(r"<!-- quickstart: (run|background) -->\n```sh\n(.*?)```", re.S)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def quickstart_blocks() -> list[tuple[str, str]]:
    return [(m[1], m[2]) for m in MARKED.finditer((ROOT / "README.md").read_text())]


def script(blocks: list[tuple[str, str]], ports: dict[str, str]) -> str:
    parts = ["set -euo pipefail"]
    for kind, written in blocks:
        text = written
        for port_written, port in ports.items():
            text = text.replace(port_written, port)
        parts.append(f"( {text} ) &" if kind == "background" else text)
    return "\n".join(parts) + "\n"


def fresh_venv(work: Path) -> None:
    """``.venv/bin/custody`` and ``.venv/bin/python`` of the interpreter running the tests."""
    bin_dir = work / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name, command in (("custody", f'"{sys.executable}" -m custody.cli "$@"'),
                          ("python", f'"{sys.executable}" "$@"')):
        (bin_dir / name).write_text(f"#!/bin/sh\nexec {command}\n")
        (bin_dir / name).chmod(0o755)


def test_blocks_are_marked() -> None:
    kinds = [kind for kind, _ in quickstart_blocks()]
    assert kinds == ["background", "run", "background", "run"]


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("jq")), reason="curl and jq")
def test_readme_quickstart_runs_as_written(tmp_path: Path) -> None:
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    fresh_venv(work)
    ports = {"8000": str(free_port()), "9000": str(free_port())}
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTODY_")}
    env |= {"HOME": str(home), "PYTHONPATH": str(ROOT)}
    log = tmp_path / "quickstart.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["bash", "-c", script(quickstart_blocks(), ports)], cwd=work,
                                env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=240)
        except subprocess.TimeoutExpired:
            code = -1
        finally:
            stop_group(proc.pid)
    text = log.read_text()
    assert code == 0, text[-6000:]
    assert '"state":"confirmed"' in text, text[-4000:]
    assert "initialised a NEW HSM at hsm.sqlite, identity " in text
    assert (home / ".custody" / "trader-1.pem").is_file()
    events = (work / "webhooks.log").read_text()
    transfer = re.search(r'"id":"([0-9a-f]+)","state":"pending_approval"', text)
    assert transfer is not None, text[-4000:]
    assert f"transfer.state transfer {transfer[1]} confirmed" in events, events
    assert "refused" not in events
    assert "Traceback" not in text


def stop_group(pid: int) -> None:
    """SIGTERM to everything the script started (nodes, server, receiver), then SIGKILL."""
    for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
