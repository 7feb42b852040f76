"""The treasury desk's API: wallets, deposit addresses, balances, transfers, webhooks.

Higher level than ``/v1/sign``: a desk names a wallet, an asset, a destination and an
amount in the asset's units; the broker builds the chain transaction, raises the sign
request under the wallet's tiered policy, and follows it to a confirmed transaction.
Creating calls take an ``Idempotency-Key``; a retry returns the first result.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from approvals_app.auth import CurrentPrincipal, require
from custody.idempotency import run_once
from custody.treasury import wallets, webhooks
from custody.treasury.models import DepositAddress, Wallet
from custody.treasury.transfers import Treasury, transfer_json

router = APIRouter(prefix="/v1", tags=["treasury"])
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class WebhookCreate(Strict):
    url: str = Field(min_length=8, max_length=2048)


def _treasury(request: Request) -> Treasury:
    treasury: Treasury = request.app.state.treasury
    return treasury


def wallet_json(w: Wallet) -> dict[str, Any]:
    return {"id": w.id, "name": w.name, "chain": w.chain, "network": w.network,
            "keyLabel": w.key_label, "address": w.address, "assets": w.assets,
            "policy": w.policy_config, "createdAt": w.created_at.isoformat()}


def address_json(a: DepositAddress) -> dict[str, Any]:
    return {"index": a.idx, "path": a.path, "address": a.address, "label": a.label,
            "createdAt": a.created_at.isoformat() if a.created_at else None}


@router.post("/wallets", status_code=201)
def create_wallet(body: WalletCreate, request: Request, who: CurrentPrincipal,
                  idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """A wallet: a new HSM key with the treasury tier policy built from ``policy``."""
    require(who, "key_admin")
    t = _treasury(request)

    def work(ticket: str | None) -> tuple[int, dict[str, Any]]:
        w = wallets.create_wallet(t.sessions, t.networks, who, body.name, body.chain,
                                  body.network, body.tokens, body.policy, wallet_id=ticket)
        return 201, wallet_json(w)

    status, response = run_once(t.sessions, f"{who.tenant}/{who.subject}", idempotency_key,
                                {"op": "wallet", **body.model_dump()}, work)
    return JSONResponse(response, status_code=status)


@router.get("/wallets")
def list_wallets(request: Request, who: CurrentPrincipal) -> list[dict[str, Any]]:
    require(who, "business", "key_admin", "auditor")
    return [wallet_json(w) for w in wallets.list_wallets(_treasury(request).sessions, who)]


@router.get("/wallets/{wallet_id}")
def get_wallet(wallet_id: str, request: Request, who: CurrentPrincipal) -> dict[str, Any]:
    require(who, "business", "key_admin", "auditor")
    return wallet_json(wallets.get_wallet(_treasury(request).sessions, who, wallet_id))


@router.get("/wallets/{wallet_id}/balances")
def balances(wallet_id: str, request: Request, who: CurrentPrincipal) -> dict[str, Any]:
    require(who, "business", "key_admin", "auditor")
    t = _treasury(request)
    w = wallets.get_wallet(t.sessions, who, wallet_id)
    return {"wallet": w.id, "balances": wallets.balances(t.networks, w)}


@router.get("/wallets/{wallet_id}/addresses")
def list_addresses(wallet_id: str, request: Request,
                   who: CurrentPrincipal) -> list[dict[str, Any]]:
    require(who, "business", "key_admin", "auditor")
    t = _treasury(request)
    w = wallets.get_wallet(t.sessions, who, wallet_id)
    return [address_json(a) for a in wallets.addresses(t.sessions, w)]


@router.post("/wallets/{wallet_id}/addresses", status_code=201)
def new_address(wallet_id: str, body: AddressCreate, request: Request,
                who: CurrentPrincipal) -> JSONResponse:
    """A fresh deposit address (Bitcoin), derived inside the HSM, gap-limit aware."""
    require(who, "business", "key_admin")
    t = _treasury(request)
    w = wallets.get_wallet(t.sessions, who, wallet_id)
    return JSONResponse(address_json(wallets.new_address(t.sessions, t.networks, w,
                                                         body.label)), status_code=201)


@router.post("/transfers", status_code=201)
def create_transfer(body: TransferCreate, request: Request, who: CurrentPrincipal,
                    idempotency_key: IdempotencyKey = None) -> JSONResponse:
    require(who, "business")
    t = _treasury(request)

    def work(ticket: str | None) -> tuple[int, dict[str, Any]]:
        record = t.create(who, body.wallet, body.asset, body.destination, body.amount,
                          body.memo, transfer_id=ticket)
        return 201, transfer_json(record)

    status, response = run_once(t.sessions, f"{who.tenant}/{who.subject}", idempotency_key,
                                {"op": "transfer", **body.model_dump()}, work)
    return JSONResponse(response, status_code=status)


@router.get("/transfers/{transfer_id}")
def get_transfer(transfer_id: str, request: Request, who: CurrentPrincipal) -> dict[str, Any]:
    require(who, "business", "auditor")
    return transfer_json(_treasury(request).get(who, transfer_id))


@router.get("/transfers")
def list_transfers(request: Request, who: CurrentPrincipal,
                   state: Annotated[str | None, Query(max_length=24)] = None,
                   wallet: Annotated[str | None, Query(max_length=64)] = None,
                   limit: Annotated[int, Query(ge=1, le=500)] = 50,
                   offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
                   ) -> list[dict[str, Any]]:
    require(who, "business", "auditor")
    return [transfer_json(r) for r in _treasury(request).list(
        who, state=state, wallet=wallet, limit=limit, offset=offset)]


def _state_of(body: dict[str, Any]) -> Any:
    transfer = body.get("transfer")
    return transfer.get("state") if isinstance(transfer, dict) else None


@router.post("/webhooks", status_code=201)
def create_webhook(body: WebhookCreate, request: Request, who: CurrentPrincipal) -> JSONResponse:
    """Register an endpoint for transfer events; the HMAC secret is shown only here."""
    require(who, "business")
    endpoint, secret = webhooks.register(_treasury(request).sessions, who.tenant, body.url)
    return JSONResponse({"id": endpoint.id, "url": endpoint.url, "secret": secret},
                        status_code=201)


@router.get("/webhooks/{endpoint_id}/deliveries")
def webhook_deliveries(endpoint_id: str, request: Request, who: CurrentPrincipal,
                       limit: Annotated[int, Query(ge=1, le=500)] = 100,
                       ) -> list[dict[str, Any]]:
    require(who, "business", "auditor")
    rows = webhooks.deliveries(_treasury(request).sessions, who.tenant, endpoint_id, limit)
    return [{"id": d.id, "eventId": d.event_id, "transfer": d.transfer_id,
             "state": _state_of(d.body),
             "status": d.status, "attempts": d.attempts, "lastStatusCode": d.last_status_code,
             "lastError": d.last_error,
             "deliveredAt": d.delivered_at.isoformat() if d.delivered_at else None}
            for d in rows]



