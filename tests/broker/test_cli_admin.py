"""The admin CLI: policy explain offline, and key / request commands against a live server."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from custody.explain import amount, explain
from hsm_emulator.display import format_period
from tests.api.test_serve import SECRET, free_port
from tests.helpers import Approver, tiered_policy

BTC = 100_000_000


def test_explain_says_what_the_tiers_need(people: dict[str, Approver]) -> None:
    doc = tiered_policy([people["t1"], people["t2"]], [people["c1"]], asset="BTC",
                        small=BTC, medium=50 * BTC)
    text = "\n".join(explain(doc))
    assert ("'small' when BTC amount is at most 1 BTC and fee plus rent is at most "
            "0.00001 BTC; signed at once, no approvals.") in text
    assert "Networks: none named - it signs no chain transaction." in text
    assert "2 of 2 from 'traders' (trader-1, trader-2)" in text
    assert "1 of 1 from 'compliance' (compliance-1); then a hold of 1 d; all within 3 d" in text
    assert "Changing this policy: any one of these 1 way(s)" in text


def test_explain_units_and_unruled_actions() -> None:
    assert amount("ETH", 1500000000000000000) == "1.5 ETH"
    assert amount("XYZ", 12345) == "12,345 base units of XYZ"
    assert format_period(90) == "90 s" and format_period(7200) == "2 h"
    lines = explain({"openActions": ["use"]})
    assert "Signing (use): allowed without approvals (no rule)." in lines
    assert "Blocking the key: never allowed (no rule)." in lines


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "custody.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("admin")
    port = free_port()
    env = os.environ | {"CUSTODY_HSM_PASSPHRASE": "admin test passphrase",
                        "CUSTODY_HSM_SO_PASSPHRASE": "admin test officer",
                        "CUSTODY_JWT_SECRET": SECRET,
                        "CUSTODY_DATABASE_URL": f"sqlite:///{tmp / 'broker.sqlite'}",
                        "CUSTODY_HSM_STORE": str(tmp / "hsm.sqlite"),
                        "CUSTODY_URL": f"http://127.0.0.1:{port}", "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "custody.cli", "serve", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{env['CUSTODY_URL']}/readyz", timeout=2).close()
            break
        except OSError:
            time.sleep(0.2)
    token = run("token", "admin", "--tenant", "t", "--role", "key_admin", "--role", "business",
                env=env).stdout.strip()
    yield env | {"CUSTODY_TOKEN": token}
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=15)


def test_key_and_request_commands(server: dict[str, str], tmp_path: Path,
                                  people: dict[str, Approver]) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(tiered_policy([people["t1"], people["t2"]], [people["c1"]])))
    created = run("key", "create", "desk-wallet", "--policy", str(policy), env=server)
    assert created.returncode == 0 and "created desk-wallet" in created.stdout, created.stderr
    shown = run("key", "show", "desk-wallet", env=server)
    assert shown.returncode == 0 and "'medium' when TST amount is at most 5,000" in shown.stdout
    again = run("key", "create", "desk-wallet", "--policy", str(policy), env=server)
    assert again.returncode == 1 and "409" in again.stderr
    bare = run("key", "create", "no-policy", env=server)  # a key that could never act
    assert bare.returncode == 2 and "--policy is required" in bare.stderr, bare.stderr
    assert len(bare.stderr.strip().splitlines()) == 1 and "Traceback" not in bare.stderr
    assert run("key", "show", "no-policy", env=server).returncode == 1  # nothing was made

    body = json.dumps({"signRequest": {"payload": base64.b64encode(json.dumps(
        {"asset": "TST", "amount": "1000", "destination": "bob"}).encode()).decode(),
        "payloadType": "TEST_TRANSFER", "signKeyName": "desk-wallet"}}).encode()
    req = urllib.request.Request(f"{server['CUSTODY_URL']}/v1/sign", data=body, headers={
        "Authorization": f"Bearer {server['CUSTODY_TOKEN']}",
        "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        request_id = json.loads(r.read())["signRequestId"]
    status = run("request", "show", request_id, env=server)
    assert status.returncode == 0 and "PENDING" in status.stdout
    cancelled = run("request", "cancel", request_id, env=server)
    assert cancelled.returncode == 0 and "CANCELLED" in cancelled.stdout
    assert run("request", "cancel", request_id, env=server).returncode == 1  # not twice
    denied = run("key", "show", "desk-wallet", env=server | {"CUSTODY_TOKEN": "x"})
    assert denied.returncode == 1 and "401" in denied.stderr
