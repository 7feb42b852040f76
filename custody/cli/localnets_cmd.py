"""``custody localnets`` and ``custody faucet``: the demo's local nodes for ``custody serve``.

``localnets`` starts what :class:`custody.localnets.LocalNets` starts for the demo (a
Bitcoin regtest node on Core's consensus code, anvil, a Solana dev node), prints the
``CUSTODY_*`` variables that point ``serve`` at them (and writes them to ``--env-file``
for ``. ./file``), mines a Bitcoin block every ``--mine-every`` seconds so transfers
confirm, and runs until Ctrl-C. ``faucet`` funds an address on those nodes through the
same variables. Development only: the nodes' data is a scratch directory.
"""

from __future__ import annotations

import shlex
import shutil
import signal
import tempfile
import threading
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import typer

from chains.base import Chain
from chains.errors import ChainError, NodeUnavailable
from chains.specs import SPECS

from ..console import LOCAL, UNREACHABLE, console, fail
from ..errors import CustodyError
from ..settings import Settings

if TYPE_CHECKING:
    from ..localnets import LocalNets

CHAINS = [c.value for c in Chain]


def node_env(nets: LocalNets, depth: int) -> dict[str, str]:
    """The ``CUSTODY_*`` variables that point ``serve`` at the chains that run."""
    endpoints = nets.endpoints()
    env = {}
    for chain, spec in SPECS.items():
        if endpoints.rpc.get(chain):
            env[spec.rpc_variable] = endpoints.rpc[chain]
            env[spec.network_variable] = str(endpoints.networks[chain])
    env["CUSTODY_CONFIRMATIONS"] = ",".join(
        f"{c}={depth}" for c in SPECS if endpoints.rpc.get(c))
    return env


def export_lines(nets: LocalNets, depth: int) -> list[str]:
    """``export NAME=value`` per variable, shell-quoted, for the chains that run."""
    return [f"export {name}={shlex.quote(value)}" for name, value in node_env(nets, depth).items()]


def _write_atomically(path: Path, text: str) -> None:
    """Whole or absent: a script waiting for the file never reads half of it."""
    part = path.with_name(path.name + ".part")
    part.write_text(text)
    part.replace(path)


def localnets(env_file: Path | None = typer.Option(
                  None, "--env-file", help="Also write the export lines here (removed at exit)."),
              chain: list[str] = typer.Option(CHAINS, help="Repeat for several: "
                                              + ", ".join(CHAINS) + "."),
              mine_every: float = typer.Option(1.0, min=0.1, help="Seconds between Bitcoin "
                                               "blocks."),
              confirmations: int = typer.Option(1, min=1, help="The depth the exported "
                                                "CUSTODY_CONFIRMATIONS asks for."),
              ) -> None:
    """Start local Bitcoin (regtest), Ethereum (anvil) and Solana nodes for `custody serve`;
    print the CUSTODY_* variables to export; run until Ctrl-C."""
    unknown = sorted(set(chain) - set(CHAINS))
    if unknown:
        fail(f"unknown chain {unknown}: chains are {CHAINS}")
    from ..localnets import LocalNets

    work = Path(tempfile.mkdtemp(prefix="custody-localnets-"))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    out = console()
    try:
        with LocalNets(work, chains=tuple(Chain(c) for c in chain)) as nets:
            lines = export_lines(nets, confirmations)
            print("\n".join(lines), flush=True)
            if env_file is not None:
                _write_atomically(env_file, "\n".join(lines) + "\n")
            out.print(f"local nodes running ({', '.join(chain)}); Ctrl-C stops them",
                      highlight=False)
            while not stop.wait(mine_every):
                if nets.btc_rpc is not None:
                    nets.mine(1)
    except CustodyError as exc:
        fail(exc.reason, LOCAL)
    finally:
        if env_file is not None:
            env_file.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    out.print("local nodes stopped", highlight=False)


def faucet(chain: str = typer.Argument(..., help="bitcoin, ethereum or solana."),
           address: str = typer.Argument(..., help="Where the coins go."),
           amount: str = typer.Option("1", help="ETH or SOL; Bitcoin mines one block "
                                      "reward (50 BTC) whatever this says."),
           ) -> None:
    """Fund an address on the nodes of `custody localnets` (reads the CUSTODY_* node
    variables it printed)."""
    settings = Settings()
    try:
        value = Decimal(amount)
    except InvalidOperation:
        fail(f"--amount {amount!r} is not a decimal number")
    if chain not in CHAINS:
        fail(f"unknown chain {chain!r}: chains are {CHAINS}")
    url = str(settings.chain_value(SPECS[Chain(chain)].rpc_variable))
    if not url:
        fail(f"{SPECS[Chain(chain)].rpc_variable} is not set: export the variables "
             "`custody localnets` printed")
    try:
        _fund(Chain(chain), url, address, value)
    except (NodeUnavailable, OSError, httpx.HTTPError) as exc:
        fail(f"cannot reach the {chain} node: {exc}", UNREACHABLE)
    except CustodyError as exc:
        fail(exc.reason, LOCAL)
    except (ChainError, ValueError) as exc:
        fail(f"cannot fund {address} on {chain}: {exc}", LOCAL)
    console().print(f"funded {address} on {chain}", highlight=False)


def _fund(chain: Chain, url: str, address: str, amount: Decimal) -> None:
    from urllib.parse import urlsplit

    from chains.bitcoin.rpc import BitcoinRpc
    from chains.ethereum.client import EthClient

    from ..localnets import BURN, ETH_CHAIN_ID, LocalNets

    if chain is Chain.BITCOIN:
        parts = urlsplit(url)
        rpc = BitcoinRpc(f"{parts.scheme}://{parts.hostname}:{parts.port}",
                         parts.username or "", parts.password or "", timeout=60)
        rpc.generatetoaddress(1, address)
        rpc.generatetoaddress(100, BURN)  # coinbase maturity
        return
    if chain is Chain.ETHEREUM:  # from anvil's funded development account
        eth = EthClient(url, expected_chain_id=ETH_CHAIN_ID)
        LocalNets(Path("."), chains=(), eth=eth).fund_ether(address, int(amount * 10**18))
        return
    r = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "requestAirdrop",
                              "params": [address, int(amount * 10**9)]}, timeout=30)
    if "error" in r.json():
        raise CustodyError(f"airdrop refused: {r.json()['error'].get('message')}")
