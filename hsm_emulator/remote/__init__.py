"""The HSM as a separate process, behind the same :class:`~hsm_emulator.client.HsmClient`.

Run the server with::

    SKA_HSM_PASSPHRASE=... [SKA_HSM_SO_PASSPHRASE=...] \\
        python -m hsm_emulator.remote --store hsm.sqlite --listen unix:/run/ska/hsm.sock \\
        --secret-file client.secret

and reach it with ``RemoteHsmClient("unix:/run/ska/hsm.sock", secret)``.

The package, by concept:

- :mod:`.wire` - addresses, frames and their limits, errors as JSON; the wire protocol
  (``ska-hsm-v1``) is described there.
- :mod:`.calls` - the call table: every call's arguments and result, written once.
- :mod:`.server` - :func:`serve`: accepting, handshakes, sessions, rate limiting, dispatch.
- :mod:`.client` - :class:`RemoteHsmClient`.
- :mod:`.__main__` - the process entry point (:func:`main`), loaded on first use here so
  that ``python -m hsm_emulator.remote`` runs it only once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .calls import TABLE
from .client import RemoteHsmClient
from .server import HANDLERS, serve
from .wire import (
    AUDIT_MAX,
    AUDIT_PAGE,
    AUTH_FAILURE_DELAY,
    AUTH_FAILURES,
    AUTH_WINDOW,
    HANDSHAKE_TIMEOUT,
    MAX_AUTH_FRAME,
    MAX_CONNECTIONS,
    MAX_FRAME,
    MAX_PENDING,
    MIN_SECRET,
    NONCE_BYTES,
    PROTOCOL,
    parse_address,
    read_secret_file,
)

if TYPE_CHECKING:
    from .__main__ import FileClock, main

__all__ = [
    "AUDIT_MAX", "AUDIT_PAGE", "AUTH_FAILURES", "AUTH_FAILURE_DELAY", "AUTH_WINDOW",
    "HANDLERS", "HANDSHAKE_TIMEOUT", "MAX_AUTH_FRAME", "MAX_CONNECTIONS", "MAX_FRAME",
    "MAX_PENDING", "MIN_SECRET", "NONCE_BYTES", "PROTOCOL", "TABLE", "FileClock",
    "RemoteHsmClient", "main", "parse_address", "read_secret_file", "serve",
]


def __getattr__(name: str) -> Any:
    """``main`` and ``FileClock`` live in the entry point, imported when first asked for."""
    if name in ("main", "FileClock"):
        from . import __main__ as entry

        return getattr(entry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
