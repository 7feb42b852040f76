"""``python -m chains.bitcoin.node --datadir D --rpcport P --rpcuser U --rpcpassword W``.

Prints one JSON line ``{"rpcport": P, "datadir": D}`` on stdout once it is serving,
then runs until the ``stop`` RPC, SIGTERM or SIGINT, and shuts down cleanly so the
kernel flushes its chainstate to the datadir.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from decimal import Decimal
from pathlib import Path

from chains.bitcoin.node.node import RegtestNode
from chains.bitcoin.node.server import RpcServer, write_cookie


def _btc_per_kvb(text: str) -> int:
    """A fee rate given in BTC/kvB, as bitcoind's options take it, to sat/kvB."""
    return int(Decimal(text) * 100_000_000)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m chains.bitcoin.node", description=__doc__)
    parser.add_argument("--datadir", required=True, type=Path)
    parser.add_argument("--rpcport", type=int, default=18443, help="0 picks a free port")
    parser.add_argument("--rpcuser", default=None)
    parser.add_argument("--rpcpassword", default=None, help="without it a .cookie file is written")
    parser.add_argument("--minrelaytxfee", type=_btc_per_kvb, default=_btc_per_kvb("0.000001"))
    parser.add_argument(
        "--estimatefeerate",
        type=_btc_per_kvb,
        default=_btc_per_kvb("0.00001"),
        help="the fixed rate estimatesmartfee answers (BTC/kvB)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    args.datadir.mkdir(parents=True, exist_ok=True)
    if args.rpcpassword is None:
        user, password = write_cookie(args.datadir)
    else:
        user, password = args.rpcuser or "", args.rpcpassword
    node = RegtestNode(
        args.datadir, min_relay_feerate=args.minrelaytxfee, estimate_feerate=args.estimatefeerate
    )
    server = RpcServer(node, args.rpcport, user, password)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: node.stop_requested.set())
    server.start()
    print(json.dumps({"rpcport": server.port, "datadir": str(args.datadir)}), flush=True)
    try:
        while not node.stop_requested.wait(0.2):
            pass
    finally:
        server.shutdown()
        server.server_close()
        node.close()
        (args.datadir / ".cookie").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
