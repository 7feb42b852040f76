"""Every ``CUSTODY_*`` variable the broker, its workers and the API read, in one place.

:class:`Settings` is the server side (``custody serve``, ``custody worker``, the API);
:class:`ClientSettings` the command-line clients' secrets (``custody audit-verify``,
``custody key ...``, ``custody approver ...``). Each field reads ``CUSTODY_<FIELD>``
(pydantic-settings); its comment is the variable's documentation (the README points
here). Command-line options with an environment fallback (``--database-url``,
``--url``, ``--key-file``, ``--server``, ``--ca-file``) are typer's and say so in
``--help``. The HSM process's own variables (``hsm_emulator.remote``) are not here: the
HSM imports nothing from the broker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: HS256 keys shorter than the hash are weak (RFC 7518 section 3.2).
MIN_SECRET = 32


def _comma_list(value: Any) -> Any:
    """``a,b`` in the environment; a tuple or list when constructed in code."""
    return tuple(value.split(",")) if isinstance(value, str) else value


class Settings(BaseSettings):
    """The service's configuration: the environment, or keyword arguments (tests, the
    demo), which win over it. Frozen: one configuration per process."""

    model_config = SettingsConfigDict(env_prefix="CUSTODY_", frozen=True)

    #: ``CUSTODY_DATABASE_URL``: the broker's SQLAlchemy URL (SQLite or PostgreSQL).
    database_url: str = "sqlite:///custody.sqlite"
    #: ``CUSTODY_HSM_STORE``: the in-process HSM's store file.
    hsm_store: Path = Path("hsm.sqlite")
    #: ``CUSTODY_HSM_NVRAM``: the in-process HSM's monotonic counter file, standing for its
    #: tamper-resistant memory (anti-rollback); empty: ``<hsm_store>.nvram``.
    hsm_nvram: str = ""
    #: ``CUSTODY_HSM_PASSPHRASE``: unlocks the in-process HSM's store.
    hsm_passphrase: str = Field(default="", repr=False)
    #: ``CUSTODY_HSM_SO_PASSPHRASE``: the security officer's, at the store's first start.
    hsm_so_passphrase: str = Field(default="", repr=False)
    #: ``CUSTODY_JWT_SECRET``: HS256 key shared with the token issuer (32+ characters).
    jwt_secret: str = Field(default="", repr=False)
    #: ``CUSTODY_JWT_AUDIENCE`` / ``CUSTODY_JWT_ISSUER``: required token claims.
    jwt_audience: str = "ska-custody"
    jwt_issuer: str = "ska-custody"
    #: ``CUSTODY_MAX_SKEW_SECONDS``: how far an approver's signed timestamp may stray.
    max_skew_seconds: float = 300.0
    #: ``CUSTODY_HSM_URL``: the HSM as its own process (``unix:/path`` or
    #: ``tcp:127.0.0.1:port``); empty: in-process. Several API replicas need this: one
    #: HSM store has one owner.
    hsm_url: str = ""
    #: ``CUSTODY_HSM_SECRET_FILE``: the HSM socket's shared secret, for ``hsm_url``.
    hsm_secret_file: str = ""
    #: ``CUSTODY_WEBAUTHN_RP_ID``: WebAuthn relying party of the approver page (a host
    #: name; never an IP address).
    webauthn_rp_id: str = "localhost"
    #: ``CUSTODY_WEBAUTHN_ORIGINS``: the page origins a passkey may be used from (comma
    #: separated).
    webauthn_origins: Annotated[tuple[str, ...], NoDecode] = ("http://localhost:8000",)
    #: ``CUSTODY_HANDLER_THREADS``: threads for the API's handlers (CPU-bound Python: a
    #: few keep the cores busy; dozens only add switching, measured by ``bench api``).
    handler_threads: int = 8
    #: ``CUSTODY_MAX_BODY_BYTES``: the largest request body the API reads; a larger one is
    #: answered 413 before it is parsed or its caller authenticated (default 1 MiB).
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    #: ``CUSTODY_SWEEP_SECONDS``: how often the worker re-examines every open request.
    sweep_seconds: float = 30.0
    #: ``CUSTODY_BITCOIN_RPC`` (``http://user:password@host:port``) and
    #: ``CUSTODY_BITCOIN_NETWORK``; a chain without an endpoint has no wallets.
    bitcoin_rpc: str = Field(default="", repr=False)
    bitcoin_network: str = "regtest"
    #: ``CUSTODY_ETHEREUM_RPC`` and ``CUSTODY_ETHEREUM_CHAIN_ID``.
    ethereum_rpc: str = Field(default="", repr=False)
    ethereum_chain_id: int = 31337
    #: ``CUSTODY_SOLANA_RPC`` and ``CUSTODY_SOLANA_NETWORK``.
    solana_rpc: str = Field(default="", repr=False)
    solana_network: str = "localnet"
    #: ``CUSTODY_CONFIRMATIONS``: ``bitcoin=1,ethereum=1,solana=1``, the depth at which a
    #: transfer counts as confirmed (malformed parts are ignored; at least 1).
    confirmations: Annotated[dict[str, int], NoDecode] = Field(default_factory=dict)

    _origins = field_validator("webauthn_origins", mode="before")(_comma_list)

    @field_validator("confirmations", mode="before")
    @classmethod
    def _depths(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        depth: dict[str, int] = {}
        for part in value.split(","):
            chain, _, n = part.partition("=")
            if chain.strip() and n.strip().isdigit():
                depth[chain.strip()] = max(1, int(n))
        return depth

    def chain_value(self, variable: str) -> str | int:
        """The value of a chain spec's variable (``CUSTODY_<CHAIN>_RPC``, its network).

        Every chain's variables are fields here (a test holds the specs to it), so a new
        chain adds its two fields beside the others and nothing reads the environment
        directly.
        """
        name = variable.removeprefix(self.model_config.get("env_prefix", "")).lower()
        if name not in type(self).model_fields:
            raise KeyError(f"{variable} is not a setting: add it to custody.settings.Settings")
        value: str | int = getattr(self, name)
        return value

    def serve_refusal(self) -> str | None:
        """Why ``custody serve`` refuses to start with these settings, if it does: the
        first variable that is missing or too short, by name (one line)."""
        if not self.hsm_passphrase and not self.hsm_url:
            return ("CUSTODY_HSM_PASSPHRASE is not set (it unlocks the HSM store; or set "
                    "CUSTODY_HSM_URL for an HSM process)")
        if not self.jwt_secret:
            return f"CUSTODY_JWT_SECRET is not set (at least {MIN_SECRET} characters)"
        if len(self.jwt_secret) < MIN_SECRET:
            return (f"CUSTODY_JWT_SECRET is too short: {len(self.jwt_secret)} characters, "
                    f"at least {MIN_SECRET}")
        return None


class ClientSettings(BaseSettings):
    """The command-line clients' secrets, read when a command needs them."""

    model_config = SettingsConfigDict(env_prefix="CUSTODY_", frozen=True, extra="ignore")

    #: ``CUSTODY_TOKEN``: the bearer token of ``custody audit-verify`` and the admin
    #: commands (``custody key|request|policy ...``).
    token: str = Field(default="", repr=False)
    #: ``CUSTODY_JWT_SECRET``: for ``custody token`` (development tokens).
    jwt_secret: str = Field(default="", repr=False)
    #: ``CUSTODY_APPROVER_PASSPHRASE``: the approver key file's passphrase, when no
    #: ``--passphrase-file`` is given (else a hidden prompt).
    approver_passphrase: str = Field(default="", repr=False)
    #: ``CUSTODY_WITNESS_FILE``: where the command-line approver and ``custody
    #: audit-verify`` remember the highest epoch and signed audit head seen per HSM
    #: (:mod:`custody.witness_file`); default ``~/.custody/witness.json``.
    witness_file: Path = Field(default_factory=lambda: Path.home() / ".custody" /
                               "witness.json")
