"""``custody hsm ...``: the security officers' ceremony at the HSM.

An officer action is three steps, each its own command so that they can happen on
different machines: ``officer begin`` asks the HSM for the request's challenge (written
to a file), each officer runs ``officer sign`` on it with their own key file (checking
the HSM's signature with the pinned HSM key, showing what they sign), and ``officer
execute`` hands the collected signatures to the HSM. A backup's share mnemonics are
written once, one file per officer, and never again; ``restore`` takes a backup, its
shares and this HSM's officers' signatures over a ``restore`` request. ``init``
initialises a new in-process HSM store with its first officers.

The HSM is the configured one (``CUSTODY_HSM_URL`` for the HSM process, else the store
at ``CUSTODY_HSM_STORE``, which a running ``custody serve`` holds locked).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any, NoReturn

import typer

from hsm_emulator.challenge import Challenge, open_challenge
from hsm_emulator.client import HsmClient
from hsm_emulator.errors import HsmError
from hsm_emulator.flow import Approval
from hsm_emulator.officers import OfficerOutcome

from ..approver_keys import ApproverError, hsm_fingerprint, load_key, load_pin, parse_hsm_key
from ..console import LOCAL, REFUSED, fail
from ..settings import ClientSettings, Settings

hsm_app = typer.Typer(help="The HSM's security officers: ceremonies, backup, restore.",
                      no_args_is_help=True)
officer_app = typer.Typer(help="Officer requests: begin, sign, execute.", no_args_is_help=True)
hsm_app.add_typer(officer_app, name="officer")


def _hsm() -> HsmClient:
    from .service_hsm import open_service_hsm

    return open_service_hsm(Settings())


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        fail(f"cannot read {path}: {exc}")


def _write_private(path: Path, text: str) -> None:
    """A new file readable by its owner only; never over an existing one."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        fail(f"cannot create {path}: {exc.strerror}")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _refused(exc: HsmError) -> NoReturn:
    fail(f"the HSM refused: [{exc.code}] {exc.reason}", REFUSED)


@hsm_app.command("init")
def init(officers: Path = typer.Option(..., help="JSON list of the first officers' "
                                       "credentials ({type, value, name})."),
         threshold: int = typer.Option(..., help="How many officers must sign (M of N)."),
         ) -> None:
    """Initialise a new in-process HSM store (CUSTODY_HSM_STORE) with its first officers."""
    from hsm_emulator import Hsm, Passphrase

    settings = Settings()
    if settings.hsm_store.exists():
        fail(f"{settings.hsm_store} exists: an HSM is initialised once")
    if len(settings.hsm_passphrase) < 8:
        fail("set CUSTODY_HSM_PASSPHRASE (at least 8 characters): it unlocks the store")
    try:
        hsm = Hsm.open(settings.hsm_store, Passphrase(settings.hsm_passphrase),
                       officers=_read_json(officers), officer_threshold=threshold,
                       nvram=settings.hsm_nvram or None)
    except HsmError as exc:
        fail(f"cannot initialise the HSM: {exc.reason}", LOCAL)
    typer.echo(f"initialised a NEW HSM at {settings.hsm_store}, identity "
              f"{hsm_fingerprint(hsm.identity_public_key())}, officers {threshold} of "
              f"{len(hsm.officer_set().officers)}")
    hsm.close()


@hsm_app.command("officers")
def show_officers() -> None:
    """The registered officers and their threshold."""
    hsm = _hsm()
    try:
        officer_set = hsm.officer_set()
    except HsmError as exc:
        _refused(exc)
    mode = " (single-officer demo mode)" if officer_set.demo else ""
    typer.echo(f"{officer_set.threshold} of {len(officer_set.officers)}{mode}")
    for o in officer_set.officers:
        der = base64.b64decode(o["value"])
        typer.echo(f"  {o.get('name', '')}  {o['type']}  {hsm_fingerprint(der)[:16]}")
    hsm.close()


@officer_app.command("begin")
def begin(action: str, arguments: str = typer.Option("{}", "--args", help="The action's "
                                                     "arguments as a JSON object."),
          output: Path = typer.Option(..., "--out", help="Where to write the challenge.")
          ) -> None:
    """Ask the HSM for an officer request's challenge; write it for the officers."""
    try:
        args = json.loads(arguments)
    except ValueError as exc:
        fail(f"--args is not JSON: {exc}")
    hsm = _hsm()
    try:
        challenge = hsm.officer_begin(action, args)
    except HsmError as exc:
        _refused(exc)
    doc = {**challenge.to_json(),
           "hsmIdentityPublicKey": base64.b64encode(hsm.identity_public_key()).decode()}
    hsm.close()
    _write_private(output, json.dumps(doc, indent=2) + "\n")
    typer.echo(f"officer request {challenge.request_id}: {action} {json.dumps(args)}; "
              f"challenge written to {output}")


@officer_app.command("sign")
def sign(challenge_file: Path,
         key_file: Path = typer.Option(..., "--key-file", help="The officer's key file "
                                       "(made by `custody approver init`)."),
         hsm_key: str = typer.Option(None, "--hsm-key", help="The HSM identity key (base64 "
                                     "SPKI); default: the key pinned for --key-file."),
         output: Path = typer.Option(..., "--out", help="Where to write the signature."),
         ) -> None:
    """Check the challenge is the HSM's, show it, sign it with an officer's key."""
    doc = _read_json(challenge_file)
    try:
        der = parse_hsm_key(hsm_key) if hsm_key else load_pin(key_file)
        if der is None:
            fail(f"no HSM key pinned for {key_file}: pass --hsm-key")
        challenge = Challenge.from_json(doc)
        body = open_challenge(challenge.envelope, der)
        passphrase = ClientSettings().approver_passphrase or typer.prompt(
            "Officer key passphrase", hide_input=True)
        key = load_key(key_file, passphrase)
    except ApproverError as exc:
        fail(exc.reason, exc.exit_code)
    except HsmError as exc:
        fail(f"not a challenge of this HSM: {exc.reason}", REFUSED)
    except (KeyError, TypeError, ValueError) as exc:
        fail(f"{challenge_file} is not a challenge file: {exc}")
    typer.echo(f"signing officer request {body['requestId']}: {body.get('officerAction')} "
              f"{json.dumps(body.get('arguments'))}, expires at {body.get('expiresAt')}")
    approval = Approval("public_key", key.spki_b64, key.sign(challenge.envelope))
    _write_private(output, json.dumps({"requestId": body["requestId"],
                                       **approval.to_json()}) + "\n")


def _approvals(request_id: str, files: list[Path]) -> list[Approval]:
    approvals = []
    for path in files:
        doc = _read_json(path)
        if not isinstance(doc, dict) or doc.get("requestId") != request_id:
            fail(f"{path} is not a signature for officer request {request_id}")
        approvals.append(Approval.from_json(doc))
    return approvals


@officer_app.command("execute")
def execute(request_id: str, signatures: list[Path],
            backup_out: Path = typer.Option(None, help="backup: where to write the file."),
            shares_dir: Path = typer.Option(None, help="backup: a directory for the share "
                                            "files, one per officer (written once)."),
            ) -> None:
    """Hand the officers' signatures to the HSM; it acts if they meet the quorum."""
    hsm = _hsm()
    try:
        outcome = hsm.officer_execute(request_id, _approvals(request_id, signatures))
    except HsmError as exc:
        _refused(exc)
    finally:
        hsm.close()
    _report(outcome, backup_out, shares_dir)


@hsm_app.command("restore")
def restore(request_id: str, signatures: list[Path],
            backup: Path = typer.Option(..., help="The backup file."),
            share: list[Path] = typer.Option(..., help="A share file (repeat: M of them)."),
            ) -> None:
    """Restore a backup into this empty HSM: M shares and this HSM's officers' quorum
    over a ``restore`` request naming the backup's SHA-256."""
    try:
        data = backup.read_bytes()
        mnemonics = [p.read_text().strip() for p in share]
    except OSError as exc:
        fail(f"cannot read: {exc}")
    hsm = _hsm()
    try:
        outcome = hsm.restore_backup(request_id, _approvals(request_id, signatures), data,
                                     mnemonics)
    except HsmError as exc:
        _refused(exc)
    finally:
        hsm.close()
    _report(outcome, None, None)


def _report(outcome: OfficerOutcome, backup_out: Path | None, shares_dir: Path | None) -> None:
    typer.echo(f"{outcome.action.value} done: {json.dumps(outcome.summary)}")
    if "mnemonics" in outcome.secret:
        if backup_out is None or shares_dir is None:
            fail("the backup was made but --backup-out and --shares-dir were not given: "
                 "its shares are lost; make another", REFUSED)
        backup_out.write_bytes(bytes.fromhex(outcome.secret["backup"]))
        shares_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for i, mnemonic in enumerate(outcome.secret["mnemonics"], 1):
            _write_private(shares_dir / f"share-{i}.txt", mnemonic + "\n")
        typer.echo(f"backup written to {backup_out}; {len(outcome.secret['mnemonics'])} "
                  f"shares in {shares_dir}: hand each to one officer, then delete it here")
    if "privateKey" in outcome.secret:
        typer.echo(f"UNSAFE private key: {outcome.secret['privateKey']}")
