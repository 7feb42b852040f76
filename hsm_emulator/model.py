"""Typed values shared across the HSM: actions, algorithms, attributes, intents.

Pure data: no I/O, no crypto. Everything here is immutable.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, Protocol

from .canonical import canonical_json as canonical_json  # noqa: PLC0414 (re-export)
from .errors import InvalidInput


class Action(StrEnum):
    """The four key actions of seed 003's glossary, each with its own rule."""

    USE = "use"
    BLOCK = "block"
    UNBLOCK = "unblock"
    MODIFY = "modify"


class KeyAlgorithm(StrEnum):
    SECP256K1 = "SECP256K1"
    ED25519 = "ED25519"
    RSA = "RSA"
    P256 = "P256"


class SignScheme(StrEnum):
    """How one item is signed. Chain schemes sign a digest the HSM computed itself."""

    #: 32-byte digest; low-S r||s plus the recovery id (65 bytes)
    ECDSA_SECP256K1_DIGEST = "ECDSA_SECP256K1_DIGEST"
    SCHNORR_BIP340_DIGEST = "SCHNORR_BIP340_DIGEST"  #: BIP340 over a BIP341 sighash, key tweaked
    ED25519_MESSAGE = "ED25519_MESSAGE"  #: RFC 8032 over the whole message
    #: General payload signing, as the TSB API names them (hash computed inside the HSM).
    SHA256_WITH_RSA = "SHA256_WITH_RSA"
    SHA256_WITH_RSA_PSS = "SHA256_WITH_RSA_PSS"
    SHA256_WITH_ECDSA = "SHA256_WITH_ECDSA"
    EDDSA = "EDDSA"


@dataclass(frozen=True)
class KeyAttributes:
    """Seed 003's key attributes, enforced on every call."""

    sign: bool = True
    decrypt: bool = False
    unwrap: bool = False
    destroyable: bool = True
    exportable: bool = False
    derive: bool = True

    @classmethod
    def from_json(cls, data: Any) -> KeyAttributes:
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise InvalidInput("attributes: must be an object")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InvalidInput(f"attributes: unknown attribute(s) {sorted(unknown)}")
        for k, v in data.items():
            if not isinstance(v, bool):
                raise InvalidInput(f"attributes.{k}: must be true or false")
        return cls(**data)

    def to_json(self) -> dict[str, bool]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class IntentKind(StrEnum):
    """What a payload does. Only ``TRANSFER`` and ``GRANT`` are value-complete: the
    decoder accounts for every unit they can make leave the key's accounts. The two
    opaque kinds are released by a conditioned token only if it names them."""

    TRANSFER = "transfer"
    GRANT = "grant"  #: lets someone else move funds later: an ERC-20 approve or permit
    CONTRACT_CALL = "contract_call"  #: opaque: calldata / instructions not accounted for
    MESSAGE = "message"  #: opaque: typed data / off-chain message


#: Kinds whose every outflow the decoder accounts for.
VALUE_COMPLETE = frozenset({IntentKind.TRANSFER, IntentKind.GRANT})


def network_id(chain: str, network: str) -> str:
    """``chain:network`` as policies and ``CUSTODY_NETWORKS`` name it: ``bitcoin:regtest``,
    ``ethereum:31337`` (an intent's ``eip155:`` prefix dropped), ``solana:localnet``."""
    return f"{chain}:{network.removeprefix('eip155:')}"


@dataclass(frozen=True)
class Transfer:
    """One outgoing movement: ``amount`` in the asset's base units (sat, wei, lamports)."""

    asset: str
    amount: int
    destination: str


@dataclass(frozen=True)
class Grant:
    """An allowance: ``grantee`` may later move up to ``amount`` of ``asset`` from the key's
    account without another signature (ERC-20 ``approve``, EIP-2612 ``permit``)."""

    asset: str
    amount: int
    grantee: str


@dataclass(frozen=True)
class Intent:
    """What a payload does, as decoded by the HSM itself - never as the caller claims.

    Change outputs back to the wallet are not transfers. ``fee`` is the **most** the
    payload can pay in fees (Bitcoin inputs minus outputs, Ethereum ``gasLimit x
    maxFeePerGas``, Solana base plus priority fee), in ``fee_asset``; ``rent`` is what
    else it can cost in that asset (a Solana token account's rent-exempt deposit). The
    fee is volatile: a rebuilt transaction may change it (fee bump, new gas price)
    within ``fee_cap``; everything in :meth:`binding` must stay identical for approvals
    to remain valid. ``grants`` are allowances the payload gives; ``calls`` the
    contracts or programs an opaque payload invokes.

    Value-complete (``ARCHITECTURE.md``): :meth:`outflow` is every unit of every asset
    the signature can make leave the key's accounts, for a ``TRANSFER`` or ``GRANT``.
    """

    chain: str
    network: str
    kind: IntentKind
    transfers: tuple[Transfer, ...]
    fee: int = 0
    fee_asset: str = ""
    details: tuple[tuple[str, str], ...] = field(default=())
    grants: tuple[Grant, ...] = ()
    rent: int = 0
    calls: tuple[str, ...] = ()

    def total(self, asset: str) -> int:
        return sum(t.amount for t in self.transfers if t.asset == asset)

    @property
    def cost(self) -> int:
        """What the payload costs beyond what it moves: the maximum fee plus rent, in
        :attr:`fee_asset`. This is what a token's ``maxFee`` bounds."""
        return self.fee + self.rent

    def moved(self) -> dict[str, int]:
        """Per asset, what leaves by transfer or may leave by grant: what amount bands
        bound."""
        sums = self.totals()
        if self.grants:
            sums = dict(sums)
            for g in self.grants:
                sums[g.asset] = sums.get(g.asset, 0) + g.amount
        return sums

    def outflow(self) -> dict[str, int]:
        """Per asset, everything that can leave the key's accounts: :meth:`moved` plus
        :attr:`cost` in the fee asset. Velocity limits count this."""
        sums = self.moved()
        if self.cost and self.fee_asset:
            sums = dict(sums)
            sums[self.fee_asset] = sums.get(self.fee_asset, 0) + self.cost
        return sums

    def recipients(self) -> tuple[str, ...]:
        """Every party the payload sends to, grants to or calls: what allowlists check."""
        return (*(t.destination for t in self.transfers),
                *(g.grantee for g in self.grants), *self.calls)

    def assets(self) -> frozenset[str]:
        return frozenset(t.asset for t in self.transfers)

    def totals(self) -> dict[str, int]:
        """Every asset's total, in sorted asset order: one pass over the transfers, for
        callers that need each asset's total (:meth:`total` walks them once per asset)."""
        sums: dict[str, int] = {}
        for t in self.transfers:
            sums[t.asset] = sums.get(t.asset, 0) + t.amount
        return dict(sorted(sums.items())) if len(sums) > 1 else sums

    def binding(self) -> dict[str, Any]:
        """The fields approvals bind to: all but the volatile fee and display details."""
        out: dict[str, Any] = {
            "chain": self.chain,
            "network": self.network,
            "kind": self.kind.value,
            "transfers": [
                {"asset": t.asset, "amount": str(t.amount), "destination": t.destination}
                for t in self.transfers
            ],
        }
        if self.grants:
            out["grants"] = [{"asset": g.asset, "amount": str(g.amount), "grantee": g.grantee}
                             for g in self.grants]
        if self.rent:
            out["rent"] = str(self.rent)
        if self.calls:
            out["calls"] = list(self.calls)
        return out

    def to_json(self) -> dict[str, Any]:
        """:meth:`binding` (same keys, same order) with the fee, its asset and the
        details (added to the fresh dict :meth:`binding` returns: a remote HSM encodes
        one per signature of a batch)."""
        out = self.binding()
        out["fee"] = str(self.fee)
        out["feeAsset"] = self.fee_asset
        out["details"] = dict(self.details)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Intent:
        """The intent :meth:`to_json` wrote. Read once per signature by a remote HSM's
        client (a batch reply carries one per payload), so written for speed: list
        comprehensions, the usual absent fields not rebuilt, the kind looked up in a dict
        (an unknown kind is still :class:`ValueError`, from the Enum)."""
        kind = data["kind"]
        return cls(
            data["chain"], data["network"],
            _KINDS[kind] if type(kind) is str and kind in _KINDS else IntentKind(kind),
            tuple([Transfer(t["asset"], int(t["amount"]), t["destination"])
                   for t in data["transfers"]]),
            int(data.get("fee", "0")), data.get("feeAsset", ""),
            tuple(sorted(data["details"].items())) if "details" in data else (),
            tuple([Grant(g["asset"], int(g["amount"]), g["grantee"])
                   for g in data.get("grants", ())]),
            int(data.get("rent", "0")),
            tuple(data.get("calls", ())),
        )


#: Each kind by its value, for :meth:`Intent.from_json` (an Enum call costs more).
_KINDS: dict[Any, IntentKind] = {k.value: k for k in IntentKind}


@dataclass(frozen=True)
class SignItem:
    """One thing the HSM must sign for a payload.

    ``path`` is relative to the request's key (e.g. ``"0/5"`` for a Bitcoin input owned by
    the 5th receive address), or empty for the key itself. ``tweak`` is the BIP341
    taproot tweak's merkle root (empty for key-path spends with no script tree).
    """

    scheme: SignScheme
    data: bytes
    path: str = ""
    tweak: bytes = b""


class KeyView(Protocol):
    """What a decoder may know of the signing key: public keys, never private ones.

    Decoders use it to *prove* ownership claims made by the payload - a Bitcoin change
    output must pay a script derived from this key at the path the PSBT names, a Solana
    transfer's source must be this key - so a compromised broker cannot hide an
    outgoing amount as "change".
    """

    @property
    def algorithm(self) -> KeyAlgorithm: ...

    @property
    def fingerprint(self) -> bytes:
        """The BIP32 fingerprint (4 bytes) of the key itself (HD keys only)."""
        ...

    def public_key(self, path: str = "") -> bytes:
        """Compressed secp256k1 / raw Ed25519 public key at ``path`` relative to the key."""
        ...


class PayloadDecoder(Protocol):
    """Turns a payload of one type into an intent and the items to sign. Pure, no I/O.

    Raises :class:`hsm_emulator.errors.DecodeError`, and only that, for anything it
    cannot fully parse - truncated, trailing bytes, unknown fields, ownership claims that
    ``owner`` does not confirm; never returns a partial intent. (Any other exception is a
    bug; the registry still fails closed on it, as a DecodeError.) A decoder may also
    define ``prepare(payload, owner)`` returning both at once from one parse.
    """

    payload_type: str

    def decode(self, payload: bytes, owner: KeyView) -> Intent: ...

    def sign_items(self, payload: bytes, owner: KeyView) -> tuple[SignItem, ...]: ...
