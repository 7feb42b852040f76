"""The soak's allocation tracer names the line whose memory grows, and stays out of the
way when it is not asked for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from . import memtrace

ROOT = Path(__file__).resolve().parents[2]

GROWING = '''
import time
kept = []
deadline = time.time() + 2.5
while time.time() < deadline:
    kept.append(bytes(1000))  # the growing site
    time.sleep(0.001)
'''


def _run(tmp_path: Path, traced: bool) -> Path:
    (tmp_path / "grower.py").write_text(GROWING)
    out = tmp_path / "trace"
    env = {k: v for k, v in os.environ.items() if not k.startswith(memtrace.ENV)}
    env["PYTHONPATH"] = os.pathsep.join((str(tmp_path), str(ROOT)))
    if traced:
        env |= {memtrace.ENV: str(out), f"{memtrace.ENV}_EVERY": "0.3"}
    subprocess.run([sys.executable, "-m", "tests.reliability.memtrace", "grow", "grower"],
                   env=env, cwd=tmp_path, check=True, timeout=60)
    return out


def test_names_the_growing_line(tmp_path: Path) -> None:
    out = _run(tmp_path, traced=True)
    lines = [json.loads(x) for x in (out / "grow.jsonl").read_text().splitlines()]
    assert len(lines) >= 2  # a baseline, then growth
    top = lines[-1]["sites"][0]
    assert top["site"].endswith("grower.py:6")
    assert top["kib_diff"] > 100 and top["count_diff"] > 100
    assert sorted(out.glob("grow-*.snap"))  # kept for a look by traceback


def test_off_without_the_variable(tmp_path: Path) -> None:
    out = _run(tmp_path, traced=False)
    assert not out.exists()
