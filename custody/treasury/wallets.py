"""Wallets: an HSM key on one chain and network, its assets, its tiered policy, and its
deposit addresses.

What differs per chain is in its spec (:mod:`chains.specs`). Wallets of a chain with
fresh addresses (Bitcoin) derive a new receive address per request (``0/i`` below the
wallet's key, BIP44's last two levels) and honour a gap limit: at most ``GAP_LIMIT``
addresses in a row may be unused, the window the adapter scans for coins, so no deposit
is missed. Wallets of an account chain (Ethereum, Solana) are one account each (the key
itself): a deposit is attributed by its sender or memo, and a desk that wants segregated
balances opens another wallet.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from chains.spec import ChainSpec
from chains.specs import SPECS, spec_of
from custody import tenancy
from custody.broker import Principal
from custody.errors import BadRequest, Conflict, NotFound
from hsm_emulator.errors import HsmError, KeyExists
from hsm_emulator.policy import parse_policy

from .models import DepositAddress, Wallet
from .networks import Networks
from .policy import AssetInfo, treasury_policy

GAP_LIMIT = 20
#: Each chain's native asset, by chain name (from the chains' specs).
NATIVE = {chain.value: AssetInfo(spec.native.symbol, spec.native.asset, spec.native.decimals)
          for chain, spec in SPECS.items()}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SYMBOL = re.compile(r"^[A-Z][A-Z0-9]{1,11}$")


def assets_of(wallet: Wallet) -> list[AssetInfo]:
    return [AssetInfo(str(a["symbol"]), str(a["asset"]), int(a["decimals"]))  # type: ignore[call-overload]
            for a in wallet.assets]


def token_assets(chain: str, tokens: Any) -> list[AssetInfo]:
    if tokens is None:
        return []
    spec = spec_of(chain)
    if not isinstance(tokens, list) or len(tokens) > 20:
        raise BadRequest("tokens must be a list of at most 20 {symbol, asset, decimals}")
    out = []
    for i, t in enumerate(tokens):
        if not isinstance(t, dict) or set(t) != {"symbol", "asset", "decimals"}:
            raise BadRequest(f"tokens[{i}] needs exactly symbol, asset, decimals")
        symbol, asset, decimals = t["symbol"], t["asset"], t["decimals"]
        if not isinstance(symbol, str) or not _SYMBOL.match(symbol):
            raise BadRequest(f"tokens[{i}].symbol: 2-12 upper-case letters and digits")
        if isinstance(decimals, bool) or not isinstance(decimals, int) or not 0 <= decimals <= 36:
            raise BadRequest(f"tokens[{i}].decimals: a whole number 0-36")
        if spec.tokens is None:
            raise BadRequest(f"{spec.name} wallets hold {spec.native.symbol} only")
        if not spec.tokens.accepts(asset):
            raise BadRequest(f"tokens[{i}].asset: {spec.tokens.spelling}")
        out.append(AssetInfo(symbol, asset, decimals))
    return out


def create_wallet(sessions: sessionmaker[Session], networks: Networks,
                  who: Principal, name: str, chain: str, network: str, tokens: Any,
                  policy: Any, *, wallet_id: str | None = None) -> Wallet:
    """A wallet and its HSM key. ``wallet_id`` (an idempotency ticket): the id to give it;
    a retry under it finishes what an attempt that died began (its key, its row)."""
    if wallet_id is not None:
        with sessions() as s:
            if s.get(Wallet, wallet_id) is not None:
                return get_wallet(sessions, who, wallet_id)
    if not isinstance(name, str) or not _NAME.match(name):
        raise BadRequest("name: 1-64 letters, digits, '_', '.', '-'")
    networks.check(chain, network)
    assets = [NATIVE[chain], *token_assets(chain, tokens)]
    if len({a.symbol for a in assets}) != len(assets):
        raise BadRequest("asset symbols must be unique in a wallet")
    # refused here, before any key exists; the key signs for this network only
    ska = treasury_policy(policy, assets, network=f"{chain}:{network}")
    with sessions() as s:
        if s.scalar(select(Wallet.id).where(Wallet.tenant == who.tenant, Wallet.name == name)):
            raise Conflict(f"a wallet named {name!r} exists")
    wallet_id = wallet_id or uuid.uuid4().hex
    label = f"wallet-{wallet_id[:16]}"
    spec = spec_of(chain)
    algorithm = spec.key_algorithm.value
    try:  # the wallet's key is its tenant's alone
        tenancy.create_key(sessions, networks.hsm, who.tenant, label, algorithm, policy=ska)
    except KeyExists:
        if tenancy.owner_of(sessions, label) != who.tenant:
            raise BadRequest("the HSM refused the wallet key: its label is taken") from None
        # made under this ticket by an attempt that died: use it if it is what we asked for
        if networks.hsm.get_key(label).policy_digest != parse_policy(ska).digest:
            raise Conflict("this wallet's key exists with another policy") from None
    except HsmError as exc:
        raise BadRequest(f"the HSM refused the wallet key: {exc.reason}") from None
    path = spec.deposit_path(0)
    address = spec.address_of(networks.hsm, label, network, path)
    wallet = Wallet(id=wallet_id, tenant=who.tenant, name=name, chain=chain, network=network,
                    key_label=label, address=address, assets=[a.to_json() for a in assets],
                    policy_config=policy)
    try:
        with sessions.begin() as s:
            s.add(wallet)
            s.flush()
            s.add(DepositAddress(wallet_id=wallet_id, idx=0, path=path,
                                 address=address, label="primary"))
    except IntegrityError:
        raise Conflict(f"a wallet named {name!r} exists") from None
    return wallet


def get_wallet(sessions: sessionmaker[Session], who: Principal,
               wallet_id: str) -> Wallet:
    with sessions() as s:
        wallet = s.get(Wallet, wallet_id) if isinstance(wallet_id, str) else None
        if wallet is None or wallet.tenant != who.tenant:
            raise NotFound(f"no wallet {wallet_id!r}")
        return wallet


def list_wallets(sessions: sessionmaker[Session], who: Principal) -> list[Wallet]:
    with sessions() as s:
        return list(s.scalars(select(Wallet).where(Wallet.tenant == who.tenant).order_by(
            Wallet.created_at)))


def addresses(sessions: sessionmaker[Session], wallet: Wallet) -> list[DepositAddress]:
    with sessions() as s:
        return list(s.scalars(select(DepositAddress).where(
            DepositAddress.wallet_id == wallet.id).order_by(DepositAddress.idx)))


def new_address(sessions: sessionmaker[Session], networks: Networks,
                wallet: Wallet, label: str) -> DepositAddress:
    if not isinstance(label, str) or len(label) > 128 or not label.isprintable():
        raise BadRequest("label: at most 128 printable characters")
    spec = spec_of(wallet.chain)
    if not spec.fresh_addresses:
        raise BadRequest(f"a {wallet.chain} wallet is one account: its deposit address is "
                         f"{wallet.address}")
    known = addresses(sessions, wallet)
    used = _used(networks, spec, wallet, known)
    unused_tail = 0
    for a in reversed(known):
        if a.address in used:
            break
        unused_tail += 1
    if unused_tail >= GAP_LIMIT:
        raise Conflict(f"{GAP_LIMIT} addresses in a row are unused (the gap limit): reuse one "
                       "of them or wait for a deposit")
    for _ in range(3):
        with sessions() as s:
            index = (s.scalar(select(func.max(DepositAddress.idx)).where(
                DepositAddress.wallet_id == wallet.id)) or 0) + 1
        if index >= GAP_LIMIT * 50:
            raise Conflict("this wallet has no more receive addresses in its scan window")
        path = spec.deposit_path(index)
        address = spec.address_of(networks.hsm, wallet.key_label, wallet.network, path)
        row = DepositAddress(wallet_id=wallet.id, idx=index, path=path,
                             address=address, label=label)
        try:
            with sessions.begin() as s:
                s.add(row)
            return row
        except IntegrityError:
            continue  # another request took this index: take the next
    raise Conflict("address allocation contended; retry")


def _used(networks: Networks, spec: ChainSpec, wallet: Wallet,
          known: list[DepositAddress]) -> set[str]:
    """Which issued addresses received coins (the gap limit needs the node: while it is
    unreachable the chain's ``NodeUnavailable`` is a 503, and no address is handed out)."""
    held = networks.planner(wallet.chain).balance(wallet, spec.native.asset)
    paths = {c.path for c in held.coins or ()}
    return {a.address for a in known if a.path in paths}
