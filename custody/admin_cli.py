"""``custody key|request|policy ...``: administration through the API (or offline).

Calls go to the server at ``--url`` with the bearer token in ``CUSTODY_TOKEN``; errors
come back as the server's problem details and end the command with status 1 (one line;
2 for a missing token or file, 3 for a server that does not answer).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from hsm_emulator.errors import HsmError

from .console import REFUSED, UNREACHABLE, fail
from .explain import explain
from .settings import ClientSettings

key_app = typer.Typer(help="Keys in the HSM, through the API.", no_args_is_help=True)
request_app = typer.Typer(help="Sign requests: status and cancel.", no_args_is_help=True)
policy_app = typer.Typer(help="SKA policies, offline.", no_args_is_help=True)
URL = typer.Option("http://127.0.0.1:8000", envvar="CUSTODY_URL", help="The API server.")


def _call(method: str, url: str, path: str, body: Any = None) -> Any:
    """The server's answer; a missing token (2), an unreachable server (3) and a refusal
    (1) each end the command with one line."""
    token = ClientSettings().token
    if not token:
        fail("CUSTODY_TOKEN is not set: the bearer token for the API")
    try:
        r = httpx.request(method, url + path, json=body,
                          headers={"Authorization": f"Bearer {token}"}, timeout=60)
    except httpx.HTTPError as exc:
        fail(f"cannot reach {url}: {exc}", UNREACHABLE)
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        fail(f"{r.status_code}: {detail}", REFUSED)
    return r.json()


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        fail(f"cannot read {path}: {exc}")


@key_app.command("create")
def key_create(label: str, algorithm: str = typer.Option("SECP256K1"),
               policy: Path = typer.Option(None, help="JSON file: the policy object "
                                           "(required: a key without one can never act)."),
               url: str = URL) -> None:
    """Create a key with its policy (role key_admin)."""
    if policy is None:
        Console(stderr=True).print("[red]--policy is required: a key without a policy can "
                                   "never sign, be blocked or be changed[/]")
        raise typer.Exit(2)
    body: dict[str, Any] = {"label": label, "algorithm": algorithm, "policy": _load(policy)}
    info = _call("POST", url, "/v1/key", body)
    Console().print(f"created [cyan]{info['label']}[/] policy {info['policyDigest'][:16]}")


@key_app.command("show")
def key_show(label: str, url: str = URL) -> None:
    """Public key, attributes, status and policy of a key."""
    info = _call("GET", url, f"/v1/key/{label}")
    table = Table(title=f"key {label}", show_header=False)
    for field in ("algorithm", "publicKey", "policyDigest", "keyStatus", "attributes"):
        table.add_row(field, json.dumps(info.get(field)))
    Console().print(table)
    for line in explain({k: v for k, v in info["policy"].items() if k != "keyStatus"}):
        Console().print(line)


@request_app.command("show")
def request_show(request_id: str, url: str = URL) -> None:
    """Status, approvals and result of a request."""
    info = _call("GET", url, f"/v1/request/{request_id}")
    table = Table(title=f"request {request_id}", show_header=False)
    for field in ("status", "keyLabel", "action", "executionTime", "error"):
        table.add_row(field, str(info.get(field)))
    table.add_row("approved by", str(len(info["approvedBy"])))
    table.add_row("waiting for", str(len(info["notYetApprovedBy"])))
    table.add_row("rejected by", str(len(info["rejectedBy"])))
    Console().print(table)


@request_app.command("cancel")
def request_cancel(request_id: str, url: str = URL) -> None:
    """Cancel an open request (it can never be executed afterwards)."""
    info = _call("DELETE", url, f"/v1/request/{request_id}")
    Console().print(f"request {request_id}: {info['status']}")


@policy_app.command("explain")
def policy_explain(policy: Path) -> None:
    """Say in plain words what a policy file requires (parsed by the HSM's parser).

    The file is either an SKA policy (seed 003's shape) or a treasury wallet's tier
    configuration (``chain``, ``traders``, ``compliance``, ``tiers``, optional
    ``network``, ``tokens``, ``maxFee``, ``hold``, timeouts - the body of ``POST
    /v1/wallets``' ``policy`` plus ``chain``, ``network`` and ``tokens``), which is first
    turned into the SKA policy the wallet's key would get."""
    from .errors import CustodyError
    from .treasury.policy import treasury_policy
    from .treasury.wallets import NATIVE, token_assets

    document = _load(policy)
    decimals: dict[str, int] = {}
    try:
        if isinstance(document, dict) and "tiers" in document:
            chain = document.get("chain")
            if chain not in NATIVE:
                raise CustodyError(f"a tier configuration names its chain: {sorted(NATIVE)}")
            assets = [NATIVE[chain], *token_assets(chain, document.get("tokens"))]
            decimals = {a.asset: a.decimals for a in assets}
            network = document.get("network")
            document = treasury_policy(
                {k: v for k, v in document.items() if k not in ("chain", "network", "tokens")},
                assets, network=f"{chain}:{network}" if isinstance(network, str) else None)
        lines = explain(document, decimals)
    except HsmError as exc:
        Console(stderr=True).print(f"[red]invalid policy: {exc.reason}[/]")
        raise typer.Exit(1) from None
    except CustodyError as exc:
        Console(stderr=True).print(f"[red]invalid tier configuration: {exc.reason}[/]")
        raise typer.Exit(1) from None
    for line in lines:
        Console().print(line, highlight=False)
