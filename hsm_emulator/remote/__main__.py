"""The HSM process: ``python -m hsm_emulator.remote`` - its composition root.

Parses the flags, opens the store with the chains' decoders (:mod:`chains.registry`) and
the clock, and serves it (:func:`hsm_emulator.remote.server.serve`) until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from ..clock import Clock, SystemClock
from ..errors import HsmError, InvalidInput
from ..hsm import Hsm
from ..store import SCRYPT_N, Passphrase
from .server import serve
from .wire import parse_address, read_secret_file

log = logging.getLogger("hsm_emulator.remote")


# -- test clock -------------------------------------------------------------------------


class FileClock:
    """TEST ONLY: a clock read from a file of epoch seconds on every :meth:`now`, so a
    test process can move the time of an HSM running in another process."""

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._last: float | None = None
        self.now()

    def now(self) -> float:
        try:
            value = float(self._path.read_text(encoding="ascii").strip())
            if not math.isfinite(value):
                raise ValueError("not finite")
        except (OSError, ValueError, UnicodeDecodeError):
            if self._last is None:
                raise InvalidInput(f"clock file {self._path} holds no epoch seconds") from None
            return self._last  # caught mid-rewrite: the last time read stands
        self._last = value
        return value


# -- process entry ----------------------------------------------------------------------


def _power_of_two(text: str) -> int:
    n = int(text)
    if n < 2 or n & (n - 1):
        raise argparse.ArgumentTypeError("a power of two")
    return n


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hsm_emulator.remote",
        description="Run the emulated HSM as its own process, serving HsmClient calls. The "
                    "store passphrase comes from SKA_HSM_PASSPHRASE; the security officer "
                    "passphrase from SKA_HSM_SO_PASSPHRASE, needed only to initialise a new "
                    "store in single-officer demo mode (else --officers). Both are removed "
                    "from the environment once read.")
    p.add_argument("--store", required=True, type=Path, help="the HSM's SQLite store")
    p.add_argument("--listen", required=True, metavar="ADDRESS",
                   help="unix:/path/to/sock (created mode 0600) or tcp:127.0.0.1:PORT "
                        "(loopback hosts only)")
    p.add_argument("--secret-file", required=True, type=Path, metavar="FILE",
                   help="the clients' shared authentication secret (at least 16 bytes, "
                        "surrounding whitespace ignored; must not be group/other-readable)")
    p.add_argument("--nvram", type=Path, metavar="FILE",
                   default=os.environ.get("SKA_HSM_NVRAM") or None,
                   help="the HSM's monotonic counter file, standing for its tamper-resistant "
                        "memory: a store older than it is refused (default: STORE.nvram; "
                        "also SKA_HSM_NVRAM)")
    p.add_argument("--officers", type=Path, metavar="FILE",
                   help="when initialising a new store only: a JSON list of the first "
                        "security officers' credentials ({type, value, name}, as a "
                        "policy's approvals), with --officer-threshold; without it, "
                        "SKA_HSM_SO_PASSPHRASE initialises single-officer demo mode")
    p.add_argument("--officer-threshold", type=int, metavar="M",
                   help="how many of the --officers must sign an officer request")
    p.add_argument("--allow-export", action="store_true",
                   help="when initialising a new store only: allow exporting keys that are "
                        "marked exportable (needs the security officer)")
    test = p.add_argument_group("test-only options", "for automated tests; never with real keys")
    test.add_argument("--clock-file", type=Path, metavar="PATH",
                      help="TEST ONLY: read the HSM's time (float epoch seconds) from PATH on "
                           "every use instead of the system clock, so a test can advance it")
    test.add_argument("--scrypt-n", type=_power_of_two, default=SCRYPT_N, metavar="N",
                      help=f"TEST ONLY: scrypt cost for a new store's passphrase (default "
                           f"{SCRYPT_N}); a cheap value makes a stolen store easy to open")
    return p


def read_officers(path: Path) -> list[dict[str, str]]:
    """The officers file: a JSON list of credentials (checked by ``Hsm.open``)."""
    try:
        doc = json.loads(path.read_text())
    except ValueError as exc:
        raise InvalidInput(f"{path}: not JSON ({exc})") from None
    if not isinstance(doc, list):
        raise InvalidInput(f"{path}: a JSON list of officer credentials")
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    passphrase = os.environ.pop("SKA_HSM_PASSPHRASE", "")
    so_passphrase = os.environ.pop("SKA_HSM_SO_PASSPHRASE", "") or None
    if not passphrase:
        parser.error("set SKA_HSM_PASSPHRASE to the store passphrase")
    try:
        parse_address(args.listen)
        secret = read_secret_file(args.secret_file)
        clock: Clock = FileClock(args.clock_file) if args.clock_file else SystemClock()
        # The chains' pure decoders (networks from CUSTODY_NETWORKS): the HSM decodes
        # every payload it signs itself.
        from chains.registry import registry

        officers = None if args.officers is None else read_officers(args.officers)
        hsm = Hsm.open(args.store, Passphrase(passphrase, scrypt_n=args.scrypt_n),
                       so_passphrase=so_passphrase if officers is None else None,
                       officers=officers, officer_threshold=args.officer_threshold,
                       allow_export=args.allow_export,
                       clock=clock, decoders=registry(), nvram=args.nvram)
    except (HsmError, OSError) as exc:
        print(f"hsm-server: {exc}", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.INFO, format="hsm-server: %(levelname)s %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ready = threading.Event()

    def announce() -> None:
        if ready.wait():
            log.info("HSM %s listening on %s", hsm.hsm_id, args.listen)

    threading.Thread(target=announce, daemon=True).start()
    try:
        serve(hsm, args.listen, secret, ready=ready, stop=stop)
    except HsmError as exc:
        print(f"hsm-server: {exc}", file=sys.stderr)
        return 1
    finally:
        with hsm.locked():
            hsm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
