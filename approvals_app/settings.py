"""Service settings, from the environment (``CUSTODY_*``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///custody.sqlite"
    hsm_store: Path = Path("hsm.sqlite")
    hsm_passphrase: str = field(default="", repr=False)
    hsm_so_passphrase: str = field(default="", repr=False)
    jwt_secret: str = field(default="", repr=False)  #: HS256 key shared with the token issuer
    jwt_audience: str = "ska-custody"
    jwt_issuer: str = "ska-custody"
    max_skew_seconds: float = 300.0
    #: The HSM as its own process (``unix:/path`` or ``tcp:127.0.0.1:port``); empty:
    #: in-process. Several API replicas need this: one HSM store has one owner.
    hsm_url: str = ""
    hsm_secret_file: str = ""
    #: WebAuthn relying party of the approver page (a host name; never an IP address)
    #: and the page origins a passkey may be used from.
    webauthn_rp_id: str = "localhost"
    webauthn_origins: tuple[str, ...] = ("http://localhost:8000",)

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            database_url=env.get("CUSTODY_DATABASE_URL", cls.database_url),
            hsm_store=Path(env.get("CUSTODY_HSM_STORE", str(cls.hsm_store))),
            hsm_passphrase=env.get("CUSTODY_HSM_PASSPHRASE", ""),
            hsm_so_passphrase=env.get("CUSTODY_HSM_SO_PASSPHRASE", ""),
            jwt_secret=env.get("CUSTODY_JWT_SECRET", ""),
            jwt_audience=env.get("CUSTODY_JWT_AUDIENCE", cls.jwt_audience),
            jwt_issuer=env.get("CUSTODY_JWT_ISSUER", cls.jwt_issuer),
            hsm_url=env.get("CUSTODY_HSM_URL", ""),
            hsm_secret_file=env.get("CUSTODY_HSM_SECRET_FILE", ""),
            webauthn_rp_id=env.get("CUSTODY_WEBAUTHN_RP_ID", cls.webauthn_rp_id),
            webauthn_origins=tuple(env.get("CUSTODY_WEBAUTHN_ORIGINS", ",".join(
                cls.webauthn_origins)).split(",")),
        )
