"""The treasury desk's API: wallets, deposit addresses, balances, transfers, webhooks.

Higher level than ``/v1/sign``: a desk names a wallet, an asset, a destination and an
amount in the asset's units; the broker builds the chain transaction, raises the sign
request under the wallet's tiered policy, and follows it to a confirmed transaction.
Creating calls take an ``Idempotency-Key``; a retry returns the first result.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import Field

from approvals_app.auth import Role
from approvals_app.deps import Business, IdempotencyKey, KeyAdmin, RequireRole, TreasuryDep
from approvals_app.responses import (
    AddressPublic,
    Balances,
    DeliveryPublic,
    TransferPublic,
    WalletPublic,
    WebhookCreated,
    WebhookPublic,
)
from approvals_app.schemas import Strict
from custody.broker import Principal
from custody.idempotency import run_once
from custody.treasury import holdings, wallets, webhooks
from custody.treasury.models import DepositAddress, Wallet
from custody.treasury.transfers import transfer_json

router = APIRouter(prefix="/v1", tags=["treasury"])
Reader = Annotated[Principal, RequireRole(Role.BUSINESS, Role.KEY_ADMIN, Role.AUDITOR)]
Holder = Annotated[Principal, RequireRole(Role.BUSINESS, Role.KEY_ADMIN)]
Watcher = Annotated[Principal, RequireRole(Role.BUSINESS, Role.AUDITOR)]

class WalletCreate(Strict):
    name: str = Field(min_length=1, max_length=64)
    chain: str = Field(max_length=16)
    network: str = Field(max_length=32)
    tokens: list[dict[str, Any]] | None = Field(default=None, max_length=20)
    policy: dict[str, Any]


class AddressCreate(Strict):
    label: str = Field(default="", max_length=128)


class TransferCreate(Strict):
    wallet: str = Field(min_length=1, max_length=64)
    asset: str = Field(min_length=1, max_length=16)
    destination: str = Field(min_length=1, max_length=128)
    amount: str = Field(min_length=1, max_length=82, pattern=r"^[0-9]+(\.[0-9]+)?$")
    memo: str = Field(default="", max_length=256)
    #: send to a burn address (the Ethereum zero address) on purpose; refused otherwise
    allowZeroAddress: bool = False


class WebhookCreate(Strict):
    url: str = Field(min_length=8, max_length=2048)


def wallet_json(w: Wallet) -> dict[str, Any]:
    return {"id": w.id, "name": w.name, "chain": w.chain, "network": w.network,
            "keyLabel": w.key_label, "address": w.address, "assets": w.assets,
            "policy": w.policy_config, "createdAt": w.created_at.isoformat()}


def address_json(a: DepositAddress) -> dict[str, Any]:
    return {"index": a.idx, "path": a.path, "address": a.address, "label": a.label,
            "createdAt": a.created_at.isoformat() if a.created_at else None}


@router.post("/wallets", status_code=201, response_model=WalletPublic)
def create_wallet(body: WalletCreate, t: TreasuryDep, who: KeyAdmin,
                  idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """A wallet: a new HSM key with the treasury tier policy built from ``policy``."""

    def work(ticket: str | None) -> tuple[int, dict[str, Any]]:
        w = wallets.create_wallet(t.sessions, t.networks, who, body.name, body.chain,
                                  body.network, body.tokens, body.policy, wallet_id=ticket)
        return 201, wallet_json(w)

    status, response = run_once(t.sessions, f"{who.tenant}/{who.subject}", idempotency_key,
                                {"op": "wallet", **body.model_dump()}, work)
    return JSONResponse(response, status_code=status)


@router.get("/wallets", response_model=list[WalletPublic])
def list_wallets(t: TreasuryDep, who: Reader) -> list[dict[str, Any]]:
    return [wallet_json(w) for w in wallets.list_wallets(t.sessions, who)]


@router.get("/wallets/{wallet_id}", response_model=WalletPublic)
def get_wallet(wallet_id: str, t: TreasuryDep, who: Reader) -> dict[str, Any]:
    return wallet_json(wallets.get_wallet(t.sessions, who, wallet_id))


@router.get("/wallets/{wallet_id}/balances", response_model_exclude_unset=True)
def balances(wallet_id: str, t: TreasuryDep, who: Reader) -> Balances:
    """Per asset: total, locked by pending transfers (listed), and available."""
    w = wallets.get_wallet(t.sessions, who, wallet_id)
    return Balances.model_validate(
        {"wallet": w.id, "balances": holdings.balances(t.sessions, t.networks, w)})


@router.get("/wallets/{wallet_id}/addresses", response_model=list[AddressPublic])
def list_addresses(wallet_id: str, t: TreasuryDep, who: Reader) -> list[dict[str, Any]]:
    w = wallets.get_wallet(t.sessions, who, wallet_id)
    return [address_json(a) for a in wallets.addresses(t.sessions, w)]


@router.post("/wallets/{wallet_id}/addresses", status_code=201, response_model=AddressPublic)
def new_address(wallet_id: str, body: AddressCreate, t: TreasuryDep,
                who: Holder) -> JSONResponse:
    """A fresh deposit address (Bitcoin), derived inside the HSM, gap-limit aware."""
    w = wallets.get_wallet(t.sessions, who, wallet_id)
    return JSONResponse(address_json(wallets.new_address(t.sessions, t.networks, w,
                                                         body.label)), status_code=201)


@router.post("/transfers", status_code=201, response_model=TransferPublic)
def create_transfer(body: TransferCreate, t: TreasuryDep, who: Business,
                    idempotency_key: IdempotencyKey = None) -> JSONResponse:

    def work(ticket: str | None) -> tuple[int, dict[str, Any]]:
        record = t.create(who, body.wallet, body.asset, body.destination, body.amount,
                          body.memo, transfer_id=ticket,
                          allow_zero_address=body.allowZeroAddress)
        return 201, transfer_json(record)

    status, response = run_once(t.sessions, f"{who.tenant}/{who.subject}", idempotency_key,
                                {"op": "transfer", **body.model_dump()}, work)
    return JSONResponse(response, status_code=status)


@router.get("/transfers/{transfer_id}", response_model=TransferPublic)
def get_transfer(transfer_id: str, t: TreasuryDep, who: Watcher) -> dict[str, Any]:
    return transfer_json(t.get(who, transfer_id))


@router.get("/transfers", response_model=list[TransferPublic])
def list_transfers(t: TreasuryDep, who: Watcher,
                   state: Annotated[str | None, Query(max_length=24)] = None,
                   wallet: Annotated[str | None, Query(max_length=64)] = None,
                   limit: Annotated[int, Query(ge=1, le=500)] = 50,
                   offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
                   ) -> list[dict[str, Any]]:
    return [transfer_json(r) for r in t.list(
        who, state=state, wallet=wallet, limit=limit, offset=offset)]


@router.delete("/transfers/{transfer_id}", response_model=TransferPublic)
def cancel_transfer(transfer_id: str, t: TreasuryDep, who: Business) -> dict[str, Any]:
    """Cancel a transfer the HSM has not signed (and its sign request): 409 once signed
    or ended, 404 for another tenant's."""
    return transfer_json(t.cancel(who, transfer_id))


def _state_of(body: dict[str, Any]) -> Any:
    transfer = body.get("transfer")
    return transfer.get("state") if isinstance(transfer, dict) else None


@router.post("/webhooks", status_code=201)
def create_webhook(body: WebhookCreate, t: TreasuryDep, who: Business) -> WebhookCreated:
    """Register an endpoint for transfer events; the HMAC secret is shown only here."""
    endpoint, secret = webhooks.register(t.sessions, who.tenant, body.url)
    return WebhookCreated(id=endpoint.id, url=endpoint.url, secret=secret)


@router.get("/webhooks")
def list_webhooks(t: TreasuryDep, who: Watcher) -> list[WebhookPublic]:
    """The tenant's endpoints (without their secrets)."""
    return [WebhookPublic(id=e.id, url=e.url, active=e.active,
                          createdAt=e.created_at.isoformat() if e.created_at else None)
            for e in webhooks.endpoints(t.sessions, who.tenant)]


@router.get("/webhooks/{endpoint_id}/deliveries")
def webhook_deliveries(endpoint_id: str, t: TreasuryDep, who: Watcher,
                       limit: Annotated[int, Query(ge=1, le=500)] = 100,
                       ) -> list[DeliveryPublic]:
    rows = webhooks.deliveries(t.sessions, who.tenant, endpoint_id, limit)
    return [DeliveryPublic(
        id=d.id, eventId=d.event_id, transfer=d.transfer_id, state=_state_of(d.body),
        status=d.status, attempts=d.attempts, lastStatusCode=d.last_status_code,
        lastError=d.last_error,
        deliveredAt=d.delivered_at.isoformat() if d.delivered_at else None) for d in rows]
