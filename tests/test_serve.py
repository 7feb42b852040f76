"""`custody serve` starts a real server process that answers and shuts down cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

SECRET = "serve-test-secret-0123456789abcdef-0123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_answers_ready(tmp_path: Path) -> None:
    port = free_port()
    env = os.environ | {"CUSTODY_HSM_PASSPHRASE": "serve test passphrase",
                        "CUSTODY_HSM_SO_PASSPHRASE": "serve test officer",
                        "CUSTODY_JWT_SECRET": SECRET,
                        "CUSTODY_DATABASE_URL": f"sqlite:///{tmp_path / 'broker.sqlite'}",
                        "CUSTODY_HSM_STORE": str(tmp_path / "hsm.sqlite")}
    proc = subprocess.Popen([sys.executable, "-m", "custody.cli", "serve", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline, body = time.time() + 30, b""
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    body = r.read()
                    break
            except OSError:
                time.sleep(0.2)
        assert b'"ready"' in body
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)


def test_serve_refuses_weak_secret(tmp_path: Path) -> None:
    env = os.environ | {"CUSTODY_HSM_PASSPHRASE": "p" * 12, "CUSTODY_JWT_SECRET": "short"}
    result = subprocess.run([sys.executable, "-m", "custody.cli", "serve"], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and "at least 32" in result.stderr
