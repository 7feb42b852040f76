"""`custody serve` starts a real server process that answers and shuts down cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
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
    assert result.returncode == 2 and "at least 32" in " ".join(result.stderr.split())


def test_audit_verify_against_a_live_server(tmp_path: Path) -> None:
    """The auditor's path: fetch over HTTP, verify offline with the pinned HSM key."""
    port = free_port()
    env = os.environ | {"CUSTODY_HSM_PASSPHRASE": "serve test passphrase",
                        "CUSTODY_HSM_SO_PASSPHRASE": "serve test officer",
                        "CUSTODY_JWT_SECRET": SECRET,
                        "CUSTODY_DATABASE_URL": f"sqlite:///{tmp_path / 'broker.sqlite'}",
                        "CUSTODY_HSM_STORE": str(tmp_path / "hsm.sqlite")}
    proc = subprocess.Popen([sys.executable, "-m", "custody.cli", "serve", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{base}/readyz", timeout=2).close()
                break
            except OSError:
                time.sleep(0.2)
        import json

        with urllib.request.urlopen(f"{base}/v1/hsm", timeout=5) as r:
            key = json.loads(r.read())["identityPublicKey"]
        token = subprocess.run([sys.executable, "-m", "custody.cli", "token", "auditor-1",
                                "--role", "auditor"], env=env, capture_output=True, text=True,
                               check=True).stdout.strip()
        ok = subprocess.run([sys.executable, "-m", "custody.cli", "audit-verify", "--url", base,
                             "--hsm-key", key], env=env | {"CUSTODY_TOKEN": token},
                            capture_output=True, text=True, timeout=60, check=False)
        assert ok.returncode == 0 and "audit log verified" in ok.stdout, ok.stdout + ok.stderr
        import base64

        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        other = base64.b64encode(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
        bad = subprocess.run([sys.executable, "-m", "custody.cli", "audit-verify", "--url", base,
                              "--hsm-key", other], env=env | {"CUSTODY_TOKEN": token},
                             capture_output=True, text=True, timeout=60, check=False)
        assert bad.returncode == 1 and "NOT verified" in bad.stdout
        denied = subprocess.run([sys.executable, "-m", "custody.cli", "audit-verify", "--url",
                                 base, "--hsm-key", key], env=env | {"CUSTODY_TOKEN": "x"},
                                capture_output=True, text=True, timeout=60, check=False)
        assert denied.returncode == 2
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)


def test_logs_are_json_lines_with_request_ids(tmp_path: Path) -> None:
    """Structured logs carry the request id, and never a token or a passphrase."""
    port = free_port()
    passphrase = "serve test passphrase"
    env = os.environ | {"CUSTODY_HSM_PASSPHRASE": passphrase,
                        "CUSTODY_HSM_SO_PASSPHRASE": "serve test officer",
                        "CUSTODY_JWT_SECRET": SECRET,
                        "CUSTODY_DATABASE_URL": f"sqlite:///{tmp_path / 'broker.sqlite'}",
                        "CUSTODY_HSM_STORE": str(tmp_path / "hsm.sqlite")}
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "custody.cli", "serve", "--port",
                                 str(port)], env=env, stdout=out, stderr=out)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{base}/readyz", timeout=2).close()
                break
            except OSError:
                time.sleep(0.2)
        req = urllib.request.Request(f"{base}/v1/request/nope",
                                     headers={"X-Request-ID": "trace-42",
                                              "Authorization": "Bearer not-a-real-token"})
        try:
            urllib.request.urlopen(req, timeout=5)
        except urllib.error.HTTPError as err:
            assert err.code == 401 and err.headers["X-Request-ID"] == "trace-42"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)
    import json

    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    mine = [x for x in lines if x.get("request_id") == "trace-42"]
    assert mine and mine[0]["status"] == 401 and mine[0]["path"] == "/v1/request/{request_id}"
    text = log.read_text()
    assert "not-a-real-token" not in text and passphrase not in text and SECRET not in text
