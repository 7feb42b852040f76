"""The HSM ``serve`` and ``worker`` open, with what an operator must be told about it.

Opening the in-process store is where a first start and a mistyped passphrase part
ways: a store with no partition is initialised, which needs the security officer's
passphrase, and the log says loudly that a NEW HSM (a new identity key, which approvers
have never pinned) now exists at that path - a wrong ``CUSTODY_HSM_STORE`` would
otherwise pass unnoticed. Operator mistakes end the command with one line (``fail``).
"""

from __future__ import annotations

import logging

from approvals_app.main import open_hsm
from hsm_emulator.client import HsmClient
from hsm_emulator.errors import HsmError, InvalidInput, StoreLocked

from ..approver_keys import hsm_fingerprint
from ..console import LOCAL, UNREACHABLE, fail
from ..settings import Settings

log = logging.getLogger("custody.serve")


def open_service_hsm(settings: Settings) -> HsmClient:
    """The configured HSM, its state logged; exits with one line on an operator error."""
    if settings.hsm_url:
        try:
            client = open_hsm(settings)
        except OSError as exc:
            fail(f"cannot use the HSM at CUSTODY_HSM_URL={settings.hsm_url}: {exc}",
                 UNREACHABLE)
        log.info("using the HSM process at %s, identity %s", settings.hsm_url,
                 hsm_fingerprint(client.identity_public_key()))
        return client
    existing = _open(settings.model_copy(update={"hsm_so_passphrase": ""}), new=False)
    if existing is not None:
        log.info("opened the HSM at %s, identity %s", settings.hsm_store,
                 hsm_fingerprint(existing.identity_public_key()))
        return existing
    if len(settings.hsm_so_passphrase) < 8:
        fail(f"{settings.hsm_store} holds no HSM yet: set CUSTODY_HSM_SO_PASSPHRASE (the "
             "security officer's, at least 8 characters) to initialise one")
    created = _open(settings, new=True)
    assert created is not None
    log.warning("initialised a NEW HSM at %s, identity %s", settings.hsm_store,
                hsm_fingerprint(created.identity_public_key()))
    return created


def _open(settings: Settings, *, new: bool) -> HsmClient | None:
    """The opened store; None if it holds no HSM yet (only asked without an SO passphrase,
    the one refusal ``Hsm.open`` gives then)."""
    try:
        return open_hsm(settings)
    except StoreLocked as exc:
        fail(f"cannot unlock the HSM store {settings.hsm_store} with "
             f"CUSTODY_HSM_PASSPHRASE: {exc.reason}")
    except InvalidInput as exc:
        if not new:
            return None
        fail(f"cannot initialise the HSM at {settings.hsm_store}: {exc.reason}", LOCAL)
    except HsmError as exc:
        fail(f"cannot open the HSM store {settings.hsm_store}: {exc.reason}", LOCAL)
    except OSError as exc:
        fail(f"cannot open the HSM store {settings.hsm_store}: {exc}", LOCAL)
