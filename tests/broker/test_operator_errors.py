"""An operator's mistake ends a command with one line on stderr and an exit status, never
a traceback; ``serve`` says whether it opened an HSM or initialised a NEW one."""

from __future__ import annotations

import base64
import hashlib
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from custody.cli import app
from custody.cli.service_hsm import open_service_hsm
from custody.settings import Settings

SECRET = "s" * 40


@pytest.fixture(autouse=True)
def keep_logging() -> Iterator[None]:
    """``serve`` configures the root logger (JSON lines): undone for the tests after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def run(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, args, env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        result.exception
    return result.exit_code, result.stderr


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    assert "Traceback" not in text
    return lines[0]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"CUSTODY_HSM_STORE": str(tmp_path / "hsm.sqlite"),
            "CUSTODY_DATABASE_URL": f"sqlite:///{tmp_path / 'b.sqlite'}",
            "CUSTODY_HSM_PASSPHRASE": "", "CUSTODY_HSM_SO_PASSPHRASE": "",
            "CUSTODY_JWT_SECRET": SECRET, "CUSTODY_HSM_URL": "", **extra}


@pytest.mark.parametrize(("extra", "says"), [
    ({}, "CUSTODY_HSM_PASSPHRASE is not set"),
    ({"CUSTODY_HSM_PASSPHRASE": "p" * 12, "CUSTODY_JWT_SECRET": ""},
     "CUSTODY_JWT_SECRET is not set"),
    ({"CUSTODY_HSM_PASSPHRASE": "p" * 12, "CUSTODY_JWT_SECRET": "short"},
     "CUSTODY_JWT_SECRET is too short: 5 characters, at least 32"),
    ({"CUSTODY_HSM_PASSPHRASE": "p" * 12}, "set CUSTODY_HSM_SO_PASSPHRASE"),
])
def test_serve_names_what_is_missing(tmp_path: Path, extra: dict[str, str], says: str) -> None:
    code, err = run(["serve", "--port", str(closed_port())], serve_env(tmp_path, **extra))
    assert code == 2 and says in one_line(err)


def test_serve_wrong_passphrase_is_one_line(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(hsm_store=tmp_path / "hsm.sqlite", hsm_passphrase="right passphrase",
                        hsm_so_passphrase="officer passphrase")
    with caplog.at_level(logging.INFO, "custody.serve"):
        open_service_hsm(settings).close()
        assert f"initialised a NEW HSM at {tmp_path / 'hsm.sqlite'}, identity " in caplog.text
        caplog.clear()
        open_service_hsm(settings).close()  # no SO passphrase needed for an existing one
        assert "opened the HSM at" in caplog.text and "NEW" not in caplog.text
    code, err = run(["serve", "--port", str(closed_port())],
                    serve_env(tmp_path, CUSTODY_HSM_PASSPHRASE="wrong passphrase"))
    assert code == 2 and "cannot unlock the HSM store" in one_line(err)


def test_new_hsm_names_its_fingerprint(tmp_path: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(hsm_store=tmp_path / "h.sqlite", hsm_passphrase="right passphrase",
                        hsm_so_passphrase="officer passphrase")
    with caplog.at_level(logging.INFO, "custody.serve"):
        hsm = open_service_hsm(settings)
    fingerprint = hashlib.sha256(hsm.identity_public_key()).hexdigest()
    hsm.close()
    assert [r.levelname for r in caplog.records if "NEW" in r.getMessage()] == ["WARNING"]
    assert fingerprint in caplog.text


def test_audit_verify_errors(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    key = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE" + "A" * 88
    code, err = run(["audit-verify", "--url", url, "--hsm-key", key], {"CUSTODY_TOKEN": ""})
    assert code == 2 and "CUSTODY_TOKEN is not set" in one_line(err)
    code, err = run(["audit-verify", "--url", url, "--hsm-key", "not-a-key"],
                    {"CUSTODY_TOKEN": "t"})
    assert code == 2 and "--hsm-key is not a base64 public key" in one_line(err)
    good = base64.b64encode(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    code, err = run(["audit-verify", "--url", url, "--hsm-key", good], {"CUSTODY_TOKEN": "t"})
    assert code == 3 and f"cannot reach {url}" in one_line(err)


def test_admin_commands_tell_token_from_server(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    code, err = run(["request", "show", "abc", "--url", url], {"CUSTODY_TOKEN": ""})
    assert code == 2 and "CUSTODY_TOKEN is not set" in one_line(err)
    code, err = run(["request", "show", "abc", "--url", url], {"CUSTODY_TOKEN": "t"})
    assert code == 3 and f"cannot reach {url}" in one_line(err)


def test_token_names_the_variable() -> None:
    code, err = run(["token", "desk"], {"CUSTODY_JWT_SECRET": ""})
    assert code == 2 and "CUSTODY_JWT_SECRET is not set" in one_line(err)
    code, err = run(["token", "desk"], {"CUSTODY_JWT_SECRET": "x" * 10})
    assert code == 2 and "too short: 10 characters" in one_line(err)


def test_approver_init_on_a_fresh_home(tmp_path: Path) -> None:
    """The README's `approver init --key-file ~/.custody/trader-1.pem` on a new machine."""
    key_file = tmp_path / "home" / ".custody" / "trader-1.pem"
    result = CliRunner().invoke(app, ["approver", "init", "--type", "p256", "--key-file",
                                      str(key_file)],
                                env={"CUSTODY_APPROVER_PASSPHRASE": "a fresh passphrase"})
    assert result.exit_code == 0, result.output
    assert key_file.is_file() and (key_file.parent.stat().st_mode & 0o777) == 0o700
    assert (key_file.stat().st_mode & 0o777) == 0o600
    assert len(result.stdout.strip().splitlines()) == 1  # the SPKI alone, for $(...)


def test_localnets_and_faucet_errors_are_one_line() -> None:
    code, err = run(["localnets", "--chain", "dogecoin"], {})
    assert code == 2 and "unknown chain ['dogecoin']" in one_line(err)
    code, err = run(["faucet", "bitcoin", "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"],
                    {"CUSTODY_BITCOIN_RPC": ""})
    assert code == 2 and "CUSTODY_BITCOIN_RPC is not set" in one_line(err)
    code, err = run(["faucet", "ethereum", "0x00", "--amount", "1"],
                    {"CUSTODY_ETHEREUM_RPC": f"http://127.0.0.1:{closed_port()}"})
    assert code == 3 and "cannot reach the ethereum node" in one_line(err)


def test_a_rolled_back_store_is_one_line(tmp_path: Path) -> None:
    """An older copy of the store put back (issue 15): ``serve`` refuses it in one line,
    naming why; the counter is where ``CUSTODY_HSM_NVRAM`` says."""
    store, nvram = tmp_path / "hsm.sqlite", tmp_path / "elsewhere" / "counter"
    nvram.parent.mkdir()
    settings = Settings(hsm_store=store, hsm_passphrase="right passphrase",
                        hsm_so_passphrase="officer passphrase", hsm_nvram=str(nvram))
    open_service_hsm(settings).close()
    old = store.read_bytes()
    hsm = open_service_hsm(settings)
    hsm.create_key("k", "ED25519")
    hsm.close()
    assert nvram.exists() and not Path(f"{store}.nvram").exists()
    store.write_bytes(old)
    code, err = run(["serve", "--port", str(closed_port())],
                    serve_env(tmp_path, CUSTODY_HSM_PASSPHRASE="right passphrase",
                              CUSTODY_HSM_NVRAM=str(nvram)))
    line = one_line(err)
    assert code == 2 and "cannot open the HSM store" in line, line
    assert "older copy of the store" in line, line
