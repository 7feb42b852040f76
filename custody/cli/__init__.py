"""The ``custody`` command line (typer)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from ..admin_cli import key_app, policy_app, request_app
from ..approver_cli import approver_app
from ..console import console, fail
from ..settings import MIN_SECRET, ClientSettings, Settings
from . import localnets_cmd, webhook_listen
from .hsm_cmd import hsm_app

app = typer.Typer(help="SKA custody wallet: HSM-enforced policies for treasury transfers.",
                  no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks: one JSON object per line, the last the headline.",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(key_app, name="key")
app.add_typer(request_app, name="request")
app.add_typer(policy_app, name="policy")
app.add_typer(approver_app, name="approver")
app.add_typer(hsm_app, name="hsm")

@app.command()
def demo(data_dir: Path = typer.Option(Path(".custody-demo"),
                                       help="Scratch directory: new, empty, or one an "
                                            "earlier demo made (wiped at start)."),
         hold: int = typer.Option(5, min=0, max=3600,
                                  help="The large tier's hold in seconds (24 h in production)."),
         ) -> None:
    """A treasury day end to end on local Bitcoin, Ethereum and Solana networks, through
    the API (in-process HSM, SQLite). Exits non-zero if any transfer did not confirm."""
    from .demo import DataDirRefused, run_demo

    try:  # plain lines and a 120-column table when stdout is not a terminal
        ok = run_demo(data_dir, console(), hold=hold)
    except DataDirRefused as exc:
        fail(str(exc))
    if not ok:
        raise typer.Exit(1)


@app.command()
def serve(host: str = typer.Option("127.0.0.1", help="Listen address."),
          port: int = typer.Option(8000, min=1, max=65535),
          database_url: str = typer.Option(None, envvar="CUSTODY_DATABASE_URL",
                                           help="SQLAlchemy URL (default: SQLite file)."),
          hsm_store: Path = typer.Option(None, envvar="CUSTODY_HSM_STORE",
                                         help="The in-process HSM's store file."),
          ) -> None:
    """Run the API server. Secrets come from the environment only:
    CUSTODY_HSM_PASSPHRASE, CUSTODY_HSM_SO_PASSPHRASE (first start), CUSTODY_JWT_SECRET
    (every variable: custody/settings.py)."""
    import uvicorn

    from approvals_app.main import create_app

    overrides = {"database_url": database_url, "hsm_store": hsm_store}
    settings = Settings().model_copy(update={k: v for k, v in overrides.items() if v})
    refusal = settings.serve_refusal()
    if refusal:
        fail(refusal)
    from approvals_app import logs

    from .service_hsm import open_service_hsm

    logs.configure()
    hsm = open_service_hsm(settings)  # says whether it is a NEW HSM; one line if not opened
    uvicorn.run(create_app(settings, hsm), host=host, port=port, log_config=None)


app.command()(localnets_cmd.localnets)
app.command()(localnets_cmd.faucet)
app.command("webhook-listen")(webhook_listen.webhook_listen)


@app.command()
def worker() -> None:
    """Run the workers without HTTP: the release scheduler (held requests released when
    their hold ends) and the transfer worker (broadcast, confirmations, webhooks). Any
    number of workers and API replicas may share one database and one HSM."""
    import signal
    import threading

    from approvals_app.main import start_workers

    from ..broker import Broker
    from ..db import make_engine, make_sessions
    from ..treasury.networks import ChainEndpoints, Networks
    from ..treasury.transfers import Treasury
    from .service_hsm import open_service_hsm

    settings = Settings()
    if not settings.hsm_passphrase and not settings.hsm_url:  # it verifies no tokens
        fail("CUSTODY_HSM_PASSPHRASE is not set (or set CUSTODY_HSM_URL)")
    hsm = open_service_hsm(settings)
    broker = Broker(hsm, make_sessions(make_engine(settings.database_url)),
                    max_skew=settings.max_skew_seconds)
    # transfers too: broadcast, confirmations, webhooks (chains from CUSTODY_*_RPC)
    treasury = Treasury(broker, Networks(ChainEndpoints.from_settings(settings), hsm))
    stop = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        stop.set()
        broker.stop_scheduler()
        treasury.nudge()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    Console().print("release and transfer worker running")
    threads = start_workers(broker, treasury, stop)
    from approvals_app.recovery import run_sweeper  # crash leftovers

    threads.append(threading.Thread(target=run_sweeper,
                                    args=(broker, stop, settings.sweep_seconds),
                                    name="recovery-sweep", daemon=True))
    threads[-1].start()
    while not stop.wait(1.0):
        pass
    for thread in threads:
        thread.join(timeout=5)
    broker.close()


@app.command("db-upgrade")
def db_upgrade(database_url: str = typer.Option(..., envvar="CUSTODY_DATABASE_URL")) -> None:
    """Apply the broker's database migrations (also done at server start)."""
    from ..db import make_engine, upgrade

    engine = make_engine(database_url)
    upgrade(engine)
    engine.dispose()
    Console().print("[green]database schema is up to date[/]")


@app.command("audit-verify")
def audit_verify(url: str = typer.Option("http://127.0.0.1:8000", help="The API server."),
                 hsm_key: str = typer.Option(..., help="The HSM identity public key "
                                             "(base64 SPKI), obtained out of band."),
                 ) -> None:
    """Fetch the audit log and verify its hash chain and signed heads offline.

    Set CUSTODY_TOKEN to an auditor's bearer token."""
    from .audit_fetch import fetch_and_verify

    token = ClientSettings().token
    if not token:
        fail("CUSTODY_TOKEN is not set: an auditor's bearer token (`custody token ... "
             "--role auditor` in development)")
    fetch_and_verify(url, token, hsm_key)


list_app = typer.Typer(help="Address lists: allowlists too large for a policy document.",
                       no_args_is_help=True)
app.add_typer(list_app, name="list")


@list_app.command("upload")
def upload_address_list(file: Path = typer.Argument(..., help="One address per line."),
                url: str = typer.Option("http://127.0.0.1:8000", envvar="CUSTODY_URL",
                                        help="The API server."),
                chunk: int = typer.Option(5000, min=1, max=5000,
                                          help="Addresses per request.")) -> None:
    """Upload an address list to the HSM in chunks and print its digest (what a policy's
    destinations {"list": ...} or a tier configuration's "allowlist" names).

    Set CUSTODY_TOKEN to a key_admin's bearer token."""
    from .list_upload import upload_file

    token = ClientSettings().token
    if not token:
        fail("CUSTODY_TOKEN is not set: a key_admin's bearer token (`custody token ... "
             "--role key_admin` in development)")
    typer.echo(upload_file(url, token, file, chunk))


@app.command()
def token(subject: str, tenant: str = typer.Option("default"),
          role: list[str] = typer.Option(["business"], help="Repeat for several roles."),
          lifetime: int = typer.Option(3600, min=60, max=86400)) -> None:
    """Mint a development JWT signed with CUSTODY_JWT_SECRET (production has an issuer)."""
    from approvals_app.auth import ROLES, issue_token

    secret = ClientSettings().jwt_secret
    unknown = set(role) - ROLES
    if not secret:
        fail(f"CUSTODY_JWT_SECRET is not set (at least {MIN_SECRET} characters)")
    if len(secret) < MIN_SECRET:
        fail(f"CUSTODY_JWT_SECRET is too short: {len(secret)} characters, at least {MIN_SECRET}")
    if unknown:
        fail(f"unknown role {sorted(unknown)}: roles are {sorted(ROLES)}")
    print(issue_token(secret, subject, tenant, role, lifetime=lifetime))


@bench_app.command("hsm")
def bench_hsm(iterations: int = typer.Option(2000, min=10, help="Signatures per round."),
              rounds: int = typer.Option(3, min=1, help="Rounds; the best of each is kept."),
              batch: int = typer.Option(100, min=1, max=1000, help="Payloads per sign_batch."),
              remote: bool = typer.Option(False, "--remote",
                                          help="Also the HSM as its own process over its "
                                               "socket (headline: remote/in-process ratio)."),
              clients: int = typer.Option(2, min=1, max=16,
                                          help="With --remote: callers signing at once, "
                                               "in process and over the socket."),
              ) -> None:
    """Raw coincurve signs/s vs. the HSM's policy-checked auto tier (headline: ratio)."""
    from ..bench import bench_hsm as run
    from ..bench import print_lines

    if remote:
        from ..bench_remote import bench_hsm_remote

        print_lines(bench_hsm_remote(iterations, rounds, batch, clients))
        return
    print_lines(run(iterations, rounds, batch))


@bench_app.command("growth")
def bench_growth(
        size: list[int] = typer.Option([1000, 10_000, 100_000, 1_000_000], min=1,
                                       help="Repeat: state sizes (ledger, audit, allowlist)."),
        iterations: int = typer.Option(2000, min=10, help="Signatures per measurement."),
        batch: int = typer.Option(100, min=1, max=1000, help="Payloads per sign_batch."),
        rounds: int = typer.Option(2, min=1, help="Rounds; the best is kept."),
        approvers: int = typer.Option(100, min=1, max=1024,
                                      help="Approvers in the groups of the held token."),
        kind: list[str] = typer.Option(["velocity", "allowlist", "address_list", "approvers",
                                        "audit"],
                                       help="Repeat: velocity, allowlist, address_list, "
                                       "approvers, audit."),
) -> None:
    """Signing rate as the HSM's state grows, against empty state (headline: worst_ratio)."""
    from ..bench import print_lines
    from ..bench_growth import KINDS
    from ..bench_growth import bench_growth as run

    unknown = sorted(set(kind) - set(KINDS))
    if unknown:
        fail(f"--kind: unknown {', '.join(unknown)} (one of {', '.join(KINDS)})")
    print_lines(run(size, iterations, batch, rounds, approvers, kind))


@bench_app.command("eth-sign")
def bench_eth(iterations: int = typer.Option(2000, min=10, help="Transactions per round."),
              rounds: int = typer.Option(3, min=1)) -> None:
    """eth_account.sign_transaction vs the project's path, byte-identical (headline: speedup)."""
    from ..bench import print_lines
    from ..bench_eth import bench_eth_sign

    print_lines(bench_eth_sign(iterations, rounds))


@bench_app.command("api")
def bench_api(requests: int = typer.Option(2000, min=10, help="Auto-signed requests."),
              approved: int = typer.Option(200, min=2, help="2-of-3 approved requests."),
              concurrency: int = typer.Option(8, min=1, max=64, help="Client threads."),
              database: list[str] = typer.Option(["sqlite", "postgresql"],
                                                 help="Repeat: sqlite, postgresql."),
              ) -> None:
    """Sign requests end to end through HTTP per database (headline: auto_rps, ...)."""
    from ..bench import print_lines
    from .bench_api import bench_api as run

    print_lines(run(requests, approved, concurrency, tuple(database)))


@bench_app.command("transfers")
def bench_transfers(chain: str = typer.Option("all", help="eth, sol, btc or all."),
                    count: int = typer.Option(200, min=1, help="Transfers per chain (and as "
                                              "many pre-signed transactions for the node)."),
                    db: str = typer.Option("sqlite", help="sqlite or postgres."),
                    concurrency: int = typer.Option(8, min=1, max=64, help="Client threads."),
                    ) -> None:
    """Auto-tier transfers from POST /v1/transfers to broadcast and confirmed, against the
    node's own ingest rate (headline: ratio per chain). Exits 1 if any transfer did not
    land on its node."""
    from ..bench import print_lines
    from ..console import LOCAL
    from ..errors import CustodyError
    from .bench_transfers import bench_transfers as run

    chains = {"eth": ("ethereum",), "sol": ("solana",), "btc": ("bitcoin",),
              "all": ("ethereum", "solana", "bitcoin")}
    if chain not in chains:
        fail(f"--chain {chain!r}: one of {', '.join(chains)}")
    if db not in ("sqlite", "postgres"):
        fail(f"--db {db!r}: sqlite or postgres")
    last: dict[str, object] = {}

    def kept(records: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for record in records:
            last.clear()
            last.update(record)
            yield record

    try:
        print_lines(kept(run(chains[chain], count, db, concurrency)))
    except CustodyError as exc:  # a node that cannot start (anvil not installed)
        fail(exc.reason, LOCAL)
    if not last.get("all_landed"):  # as the demo: a transfer that did not land fails
        raise typer.Exit(1)
