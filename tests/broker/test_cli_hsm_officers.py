"""`custody hsm ...`: the officers' ceremony from the command line - initialise an HSM with
officer keys made by `custody approver init`, back it up (begin, each officer signs,
execute: the share files written once), and restore it into a new HSM with 2 of 3
shares and that HSM's officers' quorum."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from custody.cli import app
from hsm_emulator import Hsm, Passphrase

HSM_PASSPHRASE = "officer cli hsm passphrase"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CUSTODY_HSM_PASSPHRASE", HSM_PASSPHRASE)
    monkeypatch.setenv("CUSTODY_APPROVER_PASSPHRASE", "officer key passphrase")
    monkeypatch.delenv("CUSTODY_HSM_URL", raising=False)
    monkeypatch.delenv("CUSTODY_HSM_SO_PASSPHRASE", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args: str, store: str = "a.sqlite") -> str:
    result = CliRunner().invoke(app, list(args), env={"CUSTODY_HSM_STORE": store})
    assert result.exit_code == 0, result.output
    return result.output


def officer_keys(tmp: Path) -> list[Path]:
    files, creds = [], []
    for i in (1, 2, 3):
        key = tmp / f"officer-{i}.pem"
        spki = run("approver", "init", "--type", "ed25519", "--key-file", str(key)).strip()
        files.append(key)
        creds.append({"type": "public_key", "value": spki.splitlines()[-1],
                      "name": f"officer-{i}"})
    (tmp / "officers.json").write_text(json.dumps(creds))
    return files


def signed(tmp: Path, store: str, action: str, args: dict[str, object],
           signers: list[Path]) -> tuple[str, list[str]]:
    """Begin an officer request and have ``signers`` sign it: its id and signature files."""
    name = f"{store}-{action}"
    run("hsm", "officer", "begin", action, "--args", json.dumps(args), "--out",
        f"{name}.json", store=store)
    doc = json.loads((tmp / f"{name}.json").read_text())
    out = []
    for i, key in enumerate(signers):
        run("hsm", "officer", "sign", f"{name}.json", "--key-file", str(key), "--hsm-key",
            doc["hsmIdentityPublicKey"], "--out", f"{name}-{i}.sig", store=store)
        out.append(f"{name}-{i}.sig")
    return doc["requestId"], out


def test_backup_and_restore_ceremony_from_the_command_line(env: Path) -> None:
    keys = officer_keys(env)
    assert "officers 2 of 3" in run("hsm", "init", "--officers", "officers.json",
                                    "--threshold", "2")
    assert "2 of 3" in run("hsm", "officers")
    hsm = Hsm.open(env / "a.sqlite", Passphrase(HSM_PASSPHRASE))
    hsm.create_key("kept", "SECP256K1", policy={"openActions": ["use"]})
    identity = hsm.identity_public_key()
    hsm.close()

    rid, sigs = signed(env, "a.sqlite", "backup", {"shares": 3, "threshold": 2}, keys[:2])
    printed = run("hsm", "officer", "execute", rid, *sigs, "--backup-out", "backup.bin",
                  "--shares-dir", "shares")
    assert "backup done" in printed and "3 shares" in printed
    shares = sorted((env / "shares").iterdir())
    assert len(shares) == 3 and all(p.stat().st_mode & 0o077 == 0 for p in shares)

    run("hsm", "init", "--officers", "officers.json", "--threshold", "2", store="b.sqlite")
    digest = hashlib.sha256((env / "backup.bin").read_bytes()).hexdigest()
    rid, sigs = signed(env, "b.sqlite", "restore", {"backupDigest": digest}, keys[1:])
    one_share = CliRunner().invoke(app, ["hsm", "restore", rid, *sigs, "--backup",
                                         "backup.bin", "--share", str(shares[0])],
                                   env={"CUSTODY_HSM_STORE": "b.sqlite"})
    assert one_share.exit_code == 1 and "hsm.backup_invalid" in one_share.output
    assert "restore done" in run("hsm", "restore", rid, *sigs, "--backup", "backup.bin",
                                 "--share", str(shares[0]), "--share", str(shares[2]),
                                 store="b.sqlite")
    restored = Hsm.open(env / "b.sqlite", Passphrase(HSM_PASSPHRASE))
    assert restored.list_keys() == ["kept"] and restored.identity_public_key() == identity
    restored.close()


def test_a_challenge_from_another_hsm_is_not_signed(env: Path) -> None:
    keys = officer_keys(env)
    run("hsm", "init", "--officers", "officers.json", "--threshold", "2")
    run("hsm", "officer", "begin", "lift_freeze", "--out", "ch.json")
    stranger = Hsm.open(env / "c.sqlite", Passphrase(HSM_PASSPHRASE), so_passphrase="x" * 12)
    other = base64.b64encode(stranger.identity_public_key()).decode()
    stranger.close()
    result = CliRunner().invoke(app, ["hsm", "officer", "sign", "ch.json", "--key-file",
                                      str(keys[0]), "--hsm-key", other, "--out", "s.sig"],
                                env={"CUSTODY_HSM_STORE": "a.sqlite"})
    assert result.exit_code == 1 and "not a challenge of this HSM" in result.output
    assert not (env / "s.sig").exists()
