"""``custody approver ...``: approve or reject sign requests from the command line.

Commands (stable; scripts and the browser approver's tests call them)::

    custody approver init --type rsa|p256|secp256k1|ed25519 --key-file KEY
                          [--csr CSR.pem --subject "CN=trader-1,O=Desk"]
    custody approver show-key [--plain]          # SPKI base64 = policy approvals[].value
    custody approver pin-hsm [--hsm-key B64 | --expect-fingerprint HEX] [--force]
    custody approver tasks [--json]               # open tasks, decoded, verified
    custody approver show REF
    custody approver approve REF [--yes]
    custody approver reject REF [--yes]

``REF`` is the short reference ``tasks`` prints (the request id's first 8 characters),
any longer unambiguous prefix, or the whole id. Amounts are shown in the units the HSM
signed into the challenge (the key policy's ``assets``), base units with the asset id
where it names none. ``approve`` and ``reject`` then print what each tier still needs,
per group, and whether a hold follows (the broker's word).

Options shared by the commands, each also from the environment: ``--key-file``
(CUSTODY_APPROVER_KEY), ``--server`` (CUSTODY_APPROVER_SERVER, http:// or https://),
``--ca-file`` (CUSTODY_APPROVER_CA_FILE, a private CA for TLS). The key's passphrase
comes from ``--passphrase-file``, else CUSTODY_APPROVER_PASSPHRASE, else a hidden prompt;
it is never a command-line value.

``pin-hsm`` records the HSM identity key in ``KEY.hsm-pin.json``. Every challenge is
then checked against that pinned key before anything is shown or signed: what you see
is what the HSM issued, whatever the server says. Every listing also carries the HSM's
signed audit head: the commands remember the highest epoch and head seen per HSM
(``CUSTODY_WITNESS_FILE``, default ``~/.custody/witness.json``; :mod:`custody.witness`)
and refuse a head that goes back - a rewound HSM - and a challenge from before a
restore, before anything is shown or signed. Exit status: 0 done, 1 refused or not
verified, 2 local problem (key file, passphrase, arguments), 3 server unreachable / TLS.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from hsm_emulator.challenge import challenge_epoch

from . import approver_keys as keys
from .approver_client import ApproverClient
from .approver_keys import ApproverError, ApproverKey, KeyType
from .approver_verify import VerifiedTask, verify_task
from .settings import ClientSettings
from .witness import WitnessRefused
from .witness_file import WitnessFileError, observe

approver_app = typer.Typer(help="Approve or reject sign requests with your approval key.",
                           no_args_is_help=True)

KEY_FILE = typer.Option(..., "--key-file", envvar="CUSTODY_APPROVER_KEY",
                        help="The encrypted approval key (PKCS#8 PEM).")
SERVER = typer.Option("http://127.0.0.1:8000", "--server", envvar="CUSTODY_APPROVER_SERVER",
                      help="The API server, http:// or https://.")
CA_FILE = typer.Option(None, "--ca-file", envvar="CUSTODY_APPROVER_CA_FILE",
                       help="PEM CA bundle for a server with a private CA.")
PASS_FILE = typer.Option(None, "--passphrase-file",
                         help="File whose first line is the key's passphrase "
                              "(else CUSTODY_APPROVER_PASSPHRASE, else a prompt).")
YES = typer.Option(False, "--yes", help="Do not ask for confirmation.")

out = Console()
err = Console(stderr=True)


@contextmanager
def _refusals() -> Iterator[None]:
    """Every ApproverError ends the command with its message and exit code."""
    try:
        yield
    except ApproverError as exc:
        err.print(Text("error: ", style="bold red") + _safe(exc.reason))
        raise typer.Exit(exc.exit_code) from None


def _safe(value: Any) -> Text:
    """Untrusted text as literal rich Text: no markup, control characters escaped (a
    destination must not rewrite the terminal)."""
    s = str(value)
    return Text("".join(c if c.isprintable() else repr(c)[1:-1] for c in s))


def _passphrase(passphrase_file: Path | None, confirm: bool = False) -> str:
    if passphrase_file is not None:
        try:
            lines = passphrase_file.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ApproverError(f"cannot read passphrase file {passphrase_file}: {exc}", 2) \
                from None
        if not lines or not lines[0]:
            raise ApproverError(f"passphrase file {passphrase_file} is empty", 2)
        return lines[0]
    from_env = ClientSettings().approver_passphrase
    if from_env:
        return from_env
    value: str = typer.prompt("Approval key passphrase", hide_input=True,
                              confirmation_prompt=confirm)
    return value


def _key(key_file: Path, passphrase_file: Path | None) -> ApproverKey:
    return keys.load_key(key_file, _passphrase(passphrase_file))


def _pinned(key_file: Path) -> bytes:
    der = keys.load_pin(key_file)
    if der is None:
        raise ApproverError(f"no HSM key pinned for {key_file}; run `custody approver "
                            "pin-hsm` first (and compare its fingerprint out of band)", 2)
    return der


def _witness(client: ApproverClient, pin: bytes, tasks: list[VerifiedTask]) -> dict[str, str]:
    """Check the audit heads the server sent with the listing, and the tasks' epochs,
    against this user's witness: a head that goes back ends the command (nothing is
    shown or signed); a challenge from before a restore is refused on its own. Returns
    the refused tasks (request id -> why); says so when the HSM was restored."""
    epochs = {t.request_id: challenge_epoch(t.body) for t in tasks}
    try:
        seen = observe(ClientSettings().witness_file, pin, client.heads, epochs)
    except WitnessRefused as exc:
        raise ApproverError(f"refused: {exc.reason}") from None
    except WitnessFileError as exc:
        raise ApproverError(exc.reason, 2) from None
    for note in seen.notes:
        err.print(Text("note: ", style="bold yellow") + _safe(note))
    return seen.refused


def _witnessed(client: ApproverClient, pin: bytes, task: VerifiedTask) -> VerifiedTask:
    """One task, verified and witnessed, or :class:`ApproverError`."""
    refused = _witness(client, pin, [task])
    if task.request_id in refused:
        raise ApproverError(refused[task.request_id])
    return task


def _confirm(question: str) -> bool:
    return bool(typer.confirm(question, default=False))


def _age(body: dict[str, Any]) -> str:
    try:
        seconds = max(0, int(time.time() - float(body["hsmTime"])))
    except (KeyError, TypeError, ValueError):
        return "?"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 \
        else f"{seconds // 60}m{seconds % 60:02d}s"


def progress_lines(tiers: Any) -> list[str]:
    """What each tier that can still release the request needs, from the server's answer
    (the broker's word: the HSM decides at release)."""
    if not isinstance(tiers, list) or not tiers:
        return []
    out = ["still needed (as the server reports it):"]
    for t in tiers:
        if not isinstance(t, dict):
            continue
        groups = [g for g in t.get("groups") or [] if isinstance(g, dict)]
        needs = ", ".join(f"{g.get('missing')} more from {g.get('name')} "
                          f"(quorum {g.get('quorum')})" for g in groups if g.get("missing"))
        hold, left = t.get("hold") or 0, t.get("holdRemaining") or 0
        if not needs and left:
            out.append(f"  tier {t.get('name')}: approvals complete; on hold, "
                       f"{_duration(left)} left")
            continue
        then = f"; then a hold of {_duration(hold)}" if hold else "; no hold follows"
        out.append(f"  tier {t.get('name')}: {needs or 'no more approvals'}{then}")
    return out


def _duration(seconds: Any) -> str:
    try:
        s = int(seconds)
    except (TypeError, ValueError):
        return str(seconds)
    return f"{s // 3600} h {s % 3600 // 60} min" if s >= 3600 else (
        f"{s // 60} min {s % 60} s" if s >= 60 else f"{s} s")


def _show(task: VerifiedTask) -> None:
    table = Table(title=f"request {task.request_id}, ref {task.ref} (verified HSM challenge)",
                  show_header=False)
    for name, value in task.intent_lines():
        table.add_row(name, _safe(value))
    table.add_row("age", _age(task.body))
    out.print(table)
    for line in signed_again_lines(task.earlier):
        out.print(_safe(line))


def signed_again_lines(earlier: tuple[dict[str, str], ...]) -> list[str]:
    """A transfer signed again, as the server reports it: which earlier transactions
    expired without landing - else the approver sees the same transfer twice."""
    if not earlier:
        return []
    n = len(earlier)
    return [f"signed again (as the server reports it): attempt {n + 1}; the earlier "
            f"transaction{'s' if n > 1 else ''} expired without landing, so nothing moved "
            f"by {'them' if n > 1 else 'it'}:"] + [
        f"  {a['txid']} ({a['reason']})" for a in earlier]


@approver_app.command("init")
def init(kind: KeyType = typer.Option(..., "--type", help="Key type."),
         key_file: Path = KEY_FILE, passphrase_file: Path = PASS_FILE,
         csr: Path = typer.Option(None, "--csr", help="Also write a CSR (PEM) here."),
         subject: str = typer.Option(None, "--subject",
                                     help="CSR subject, RFC 4514: 'CN=trader-1,O=Desk'."),
         ) -> None:
    """Create an approval key, encrypted with a passphrase; print its public key."""
    with _refusals():
        if csr is not None and not subject:
            raise ApproverError("--csr needs --subject", 2)
        if key_file.exists():
            raise ApproverError(f"{key_file} exists; refusing to overwrite an approval key", 2)
        passphrase = _passphrase(passphrase_file, confirm=True)
        keys.check_passphrase(passphrase)
        key = ApproverKey(keys.generate(kind))
        request = key.csr_pem(subject) if csr is not None else None  # checked before saving
        keys.save_key(key_file, key, passphrase)
        if csr is not None and request is not None:
            try:
                csr.write_bytes(request)
            except OSError as exc:
                raise ApproverError(f"the key was saved to {key_file}, but the CSR cannot "
                                    f"be written to {csr}: {exc.strerror}", 2) from None
            err.print(f"certificate signing request written to {csr}")
        err.print(f"{key.kind} approval key written to {key_file} (encrypted); "
                  "its public key for policies (SPKI, base64):")
        print(key.spki_b64)


@approver_app.command("show-key")
def show_key(key_file: Path = KEY_FILE, passphrase_file: Path = PASS_FILE,
             plain: bool = typer.Option(False, "--plain", help="Print only the SPKI base64."),
             ) -> None:
    """The public key (what goes in a policy), its type and fingerprint; the pinned HSM."""
    with _refusals():
        key = _key(key_file, passphrase_file)
        if plain:
            print(key.spki_b64)
            return
        pin = keys.load_pin(key_file)
        table = Table(title=f"approval key {key_file}", show_header=False)
        table.add_row("type", key.kind)
        table.add_row("public key (SPKI)", key.spki_b64)
        table.add_row("fingerprint (sha256)", key.fingerprint)
        table.add_row("pinned HSM", keys.hsm_fingerprint(pin) if pin else "none")
        out.print(table)


@approver_app.command("pin-hsm")
def pin_hsm(key_file: Path = KEY_FILE, server: str = SERVER, ca_file: Path = CA_FILE,
            hsm_key: str = typer.Option(None, "--hsm-key",
                                        help="The HSM identity key (base64 SPKI) obtained out "
                                             "of band; else fetched from the server."),
            expect: str = typer.Option(None, "--expect-fingerprint",
                                       help="Refuse unless the key has this sha256 (hex)."),
            force: bool = typer.Option(False, "--force", help="Replace a different pin."),
            ) -> None:
    """Trust one HSM identity key for this approval key: challenges are checked with it."""
    with _refusals():
        if hsm_key is None:
            with ApproverClient(server, ca_file) as client:
                hsm_key = client.hsm_identity()
            source = server
        else:
            source = "out of band"
        der = keys.parse_hsm_key(hsm_key)
        fingerprint = keys.hsm_fingerprint(der)
        if expect is not None and expect.strip().lower() != fingerprint:
            raise ApproverError(f"the HSM key's fingerprint is {fingerprint}, not the "
                                "expected one; nothing pinned")
        old = keys.load_pin(key_file)
        if old is not None and old != der and not force:
            raise ApproverError(f"a different HSM key ({keys.hsm_fingerprint(old)}) is "
                                "pinned; refusing to replace it without --force")
        path = keys.save_pin(key_file, der, source)
        out.print(f"pinned HSM identity key {fingerprint} in {path}")
        if expect is None:
            out.print("compare this fingerprint with your security officer's copy")


@approver_app.command("tasks")
def tasks(key_file: Path = KEY_FILE, server: str = SERVER, ca_file: Path = CA_FILE,
          passphrase_file: Path = PASS_FILE,
          as_json: bool = typer.Option(False, "--json",
                                       help="One JSON document: verified tasks and refusals."),
          ) -> None:
    """Your open tasks, each verified against the pinned HSM key."""
    with _refusals():
        pin = _pinned(key_file)
        key = _key(key_file, passphrase_file)
        with ApproverClient(server, ca_file) as client:
            found = client.all_tasks(key)
        verified: list[VerifiedTask] = []
        refused = []
        for raw in found:
            try:
                verified.append(verify_task(raw, pin))
            except ApproverError as exc:
                refused.append(exc.reason)
        void = _witness(client, pin, verified)
        refused += [void[t.request_id] for t in verified if t.request_id in void]
        verified = [t for t in verified if t.request_id not in void]
        if as_json:
            print(json.dumps({"tasks": [task_summary(t) for t in verified],
                              "notVerified": refused}, indent=2))
        else:
            _task_table(verified)
            for reason in refused:
                err.print(Text("NOT VERIFIED: ", style="bold red") + _safe(reason))
        if refused:
            raise typer.Exit(1)


def _task_table(verified: list[VerifiedTask]) -> None:
    """One line per task, the reference first and never cut: it is what people copy."""
    table = Table(title=f"{len(verified)} open task(s); `approve REF` / `show REF`")
    table.add_column("ref", no_wrap=True, min_width=8)
    for col in ("key", "action", "amount", "destination", "fee (most)", "age"):
        table.add_column(col, overflow="fold")
    for task in verified:
        s = task_summary(task)
        action = f"{s['action']} (signed again)" if task.earlier else s["action"]
        table.add_row(s["ref"], _safe(s["keyLabel"]), _safe(action), _safe(s["amount"]),
                      _safe(s["destination"]), _safe(s["fee"]), _age(task.body))
    out.print(table)


def task_summary(task: VerifiedTask) -> dict[str, Any]:
    """A task's headline, from the HSM-signed challenge only: what ``tasks`` lists."""
    b = task.body
    raw = b.get("intent")
    intent: dict[str, Any] = raw if isinstance(raw, dict) else {}
    legs = intent.get("transfers") or []
    amount = " + ".join(task.amount(t.get("asset"), t.get("amount")) for t in legs)
    fee_asset = intent.get("feeAsset")
    return {
        "ref": task.ref, "id": task.request_id, "keyLabel": b.get("keyLabel"),
        "action": b.get("action"), "amount": amount or "-",
        "destination": ", ".join(str(t.get("destination")) for t in legs) or "-",
        "fee": task.amount(fee_asset, intent["fee"]) if "fee" in intent else "-",
        "feeCap": None if b.get("feeCap") is None else task.amount(fee_asset, b["feeCap"]),
        "hsmTimestamp": b.get("hsmTimestamp"), "intent": intent or None,
        "units": b.get("units"),
        "challengeVersion": 3 if "epoch" in b else 2 if "units" in b else 1,
        "epoch": challenge_epoch(b),
        "earlierAttempts": list(task.earlier),  # the server's word, not the HSM's
    }


@approver_app.command("show")
def show(ref: str, key_file: Path = KEY_FILE, server: str = SERVER,
         ca_file: Path = CA_FILE, passphrase_file: Path = PASS_FILE) -> None:
    """One task's decoded intent, from its verified HSM challenge."""
    with _refusals():
        pin = _pinned(key_file)
        key = _key(key_file, passphrase_file)
        with ApproverClient(server, ca_file) as client:
            _show(_witnessed(client, pin, verify_task(client.find_task(key, ref), pin)))


def _answer(ref: str, key_file: Path, server: str, ca_file: Path | None,
            passphrase_file: Path | None, yes: bool, reject: bool) -> None:
    verb = "reject" if reject else "approve"
    done = "rejected" if reject else "approved"
    with _refusals():
        pin = _pinned(key_file)
        key = _key(key_file, passphrase_file)
        with ApproverClient(server, ca_file) as client:
            task = _witnessed(client, pin, verify_task(client.find_task(key, ref), pin))
            _show(task)
            if not yes and not _confirm(f"{verb.capitalize()} request {task.request_id}?"):
                err.print(f"not {done}; nothing was sent")
                raise typer.Exit(1)
            result = client.answer(key, task, reject=reject)
        out.print(Text(f"{done} {task.request_id}: request is now ")
                  + _safe(result.get("status")))
        for line in progress_lines(result.get("tiers")):
            out.print(_safe(line))


@approver_app.command("approve")
def approve(ref: str, key_file: Path = KEY_FILE, server: str = SERVER,
            ca_file: Path = CA_FILE, passphrase_file: Path = PASS_FILE,
            yes: bool = YES) -> None:
    """Verify the challenge, show the intent, confirm, sign and submit the approval."""
    _answer(ref, key_file, server, ca_file, passphrase_file, yes, reject=False)


@approver_app.command("reject")
def reject(ref: str, key_file: Path = KEY_FILE, server: str = SERVER,
           ca_file: Path = CA_FILE, passphrase_file: Path = PASS_FILE,
           yes: bool = YES) -> None:
    """Like approve, but sign a refusal (``ska-reject-v1:`` + the challenge)."""
    _answer(ref, key_file, server, ca_file, passphrase_file, yes, reject=True)
