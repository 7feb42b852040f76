"""``custody.settings``: every ``CUSTODY_*`` variable read in one place, as it was read
before it moved there (names, defaults, comma lists, the confirmation depths), and the
secrets kept out of ``repr``."""

from __future__ import annotations

from pathlib import Path

import pytest

from custody.settings import ClientSettings, Settings
from custody.treasury.networks import ChainEndpoints, default_depths


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("CUSTODY_"):
            monkeypatch.delenv(name)


def test_defaults_without_environment() -> None:
    s = Settings()
    assert (s.database_url, s.hsm_store, s.jwt_audience, s.jwt_issuer) == (
        "sqlite:///custody.sqlite", Path("hsm.sqlite"), "ska-custody", "ska-custody")
    assert (s.hsm_url, s.hsm_passphrase, s.jwt_secret, s.webauthn_rp_id) == ("", "", "", "localhost")
    assert s.webauthn_origins == ("http://localhost:8000",)
    assert (s.handler_threads, s.sweep_seconds, s.max_skew_seconds) == (8, 30.0, 300.0)
    endpoints = ChainEndpoints.from_settings(s)
    assert endpoints.configured() == []
    assert [endpoints.network_of(c) for c in ("bitcoin", "ethereum", "solana")] == [
        "regtest", "31337", "localnet"]
    assert endpoints.confirmations == default_depths()


def test_each_variable_by_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"CUSTODY_DATABASE_URL": "postgresql+psycopg://db/x", "CUSTODY_HSM_STORE": "/s/h.db",
           "CUSTODY_HSM_PASSPHRASE": "hsm pass", "CUSTODY_HSM_SO_PASSPHRASE": "so pass",
           "CUSTODY_JWT_SECRET": "j" * 40, "CUSTODY_JWT_AUDIENCE": "aud",
           "CUSTODY_JWT_ISSUER": "iss", "CUSTODY_HSM_URL": "unix:/run/hsm.sock",
           "CUSTODY_HSM_SECRET_FILE": "/s/secret", "CUSTODY_WEBAUTHN_RP_ID": "custody.example",
           "CUSTODY_WEBAUTHN_ORIGINS": "https://a.example,https://b.example",
           "CUSTODY_HANDLER_THREADS": "3", "CUSTODY_SWEEP_SECONDS": "2.5",
           "CUSTODY_BITCOIN_RPC": "http://u:p@127.0.0.1:18443", "CUSTODY_BITCOIN_NETWORK": "signet",
           "CUSTODY_ETHEREUM_RPC": "http://127.0.0.1:8545", "CUSTODY_ETHEREUM_CHAIN_ID": "5",
           "CUSTODY_SOLANA_RPC": "http://127.0.0.1:8899", "CUSTODY_SOLANA_NETWORK": "devnet",
           "CUSTODY_CONFIRMATIONS": "bitcoin=6, ethereum = 12,solana=x,dogecoin=3,bitcoin"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = Settings()
    assert (s.database_url, s.hsm_store, s.hsm_passphrase, s.hsm_so_passphrase) == (
        "postgresql+psycopg://db/x", Path("/s/h.db"), "hsm pass", "so pass")
    assert (s.jwt_secret, s.jwt_audience, s.jwt_issuer) == ("j" * 40, "aud", "iss")
    assert (s.hsm_url, s.hsm_secret_file, s.webauthn_rp_id) == (
        "unix:/run/hsm.sock", "/s/secret", "custody.example")
    assert s.webauthn_origins == ("https://a.example", "https://b.example")
    assert (s.handler_threads, s.sweep_seconds) == (3, 2.5)
    chains = ChainEndpoints.from_settings(s)
    assert chains == ChainEndpoints(
        {"bitcoin": "http://u:p@127.0.0.1:18443", "ethereum": "http://127.0.0.1:8545",
         "solana": "http://127.0.0.1:8899"},
        {"bitcoin": "signet", "ethereum": "5", "solana": "devnet"},
        {**default_depths(), "bitcoin": 6, "ethereum": 12})
    # keyword arguments (tests, the demo) win over the environment
    assert Settings(database_url="sqlite:///k.sqlite").database_url == "sqlite:///k.sqlite"


def test_secrets_stay_out_of_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTODY_BITCOIN_RPC", "http://user:rpc-password@host:1")
    monkeypatch.setenv("CUSTODY_TOKEN", "bearer-token-value")
    s = Settings(hsm_passphrase="hsm-pass-value", hsm_so_passphrase="so-pass-value",
                 jwt_secret="jwt-secret-value")
    text = repr(s) + str(s) + repr(ClientSettings())
    for secret in ("hsm-pass-value", "so-pass-value", "jwt-secret-value", "rpc-password",
                   "bearer-token-value"):
        assert secret not in text


def test_serve_refusal_names_the_variable() -> None:
    weak = Settings(hsm_passphrase="p" * 12, jwt_secret="short")
    assert weak.serve_refusal() == ("CUSTODY_JWT_SECRET is too short: 5 characters, "
                                    "at least 32")
    assert Settings(hsm_passphrase="p" * 12).serve_refusal() == (
        "CUSTODY_JWT_SECRET is not set (at least 32 characters)")
    assert (Settings(jwt_secret="s" * 32).serve_refusal() or "").startswith(
        "CUSTODY_HSM_PASSPHRASE is not set")
    assert Settings(hsm_url="unix:/x", jwt_secret="s" * 32).serve_refusal() is None
    assert Settings(jwt_secret="s" * 32).serve_refusal() is not None


def test_client_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ClientSettings() == ClientSettings(token="", jwt_secret="", approver_passphrase="")
    monkeypatch.setenv("CUSTODY_TOKEN", "t")
    monkeypatch.setenv("CUSTODY_APPROVER_PASSPHRASE", "pp")
    s = ClientSettings()
    assert (s.token, s.approver_passphrase) == ("t", "pp")
