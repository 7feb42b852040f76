"""Response bodies of the API, one model per shape, so the OpenAPI spec documents answers.

The field names are the wire's (seed 003's camelCase) and every field a route sends is
here, nulls included: a model refuses a field it does not know (``extra="forbid"``), so a
route that starts sending a new field fails its tests until the model says so. Refusals
are problem+json (:mod:`approvals_app.problems`); streams are documented per route.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Public(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- keys -------------------------------------------------------------------------------


class KeyStatus(Public):
    blocked: bool
    invalidated: bool


class KeyPublic(Public):
    """A key as the HSM describes it; ``attestation`` (the HSM's signed statement of the
    key's attributes and policy) on reads, null when just created."""

    label: str
    algorithm: str
    keySize: int | None
    publicKey: str  #: base64 SPKI DER
    rawPublicKey: str  #: base64: compressed secp256k1, raw Ed25519, or SPKI
    attributes: dict[str, Any]
    policy: dict[str, Any]
    policyDigest: str
    keyStatus: KeyStatus
    parent: str | None
    path: str
    attestation: dict[str, Any] | None


class KeyAddress(Public):
    label: str
    path: str
    kind: str
    network: str
    address: str


# -- sign requests ----------------------------------------------------------------------


class SignCreated(Public):
    signRequestId: str


class RequestCreated(Public):
    """A block / unblock / modify (or join) request: it waits for the key's approvers."""

    requestId: str
    status: str


class RequestPublic(Public):
    id: str
    status: str
    executionTime: str | None
    approvedBy: list[str]
    notYetApprovedBy: list[str]
    rejectedBy: list[str]
    result: str | None  #: the first signature, base64
    signatures: list[str]
    keyLabel: str
    action: str
    payloadType: str
    intent: dict[str, Any] | None
    metaData: dict[str, Any] | None
    error: str | None


# -- approvals --------------------------------------------------------------------------


class EarlierAttempt(Public):
    """A transaction signed earlier for the same transfer that expired unlanded."""

    txid: str
    reason: str


class TaskPublic(Public):
    """A task at ``detailLevel``: level1 the challenge only, level2 adds what it is
    about, level3 the payload too (fields beyond the level are absent, not null)."""

    detailLevel: str
    id: str
    approvalToBeSigned: str
    keyLabel: str | None = None
    action: str | None = None
    payloadType: str | None = None
    intent: dict[str, Any] | None = None
    status: str | None = None
    payload: str | None = None
    metaData: dict[str, Any] | None = None
    initiator: str | None = None
    #: level2 on, a transfer signed again: its earlier transactions, none of which landed
    #: (an extension of TSB's task; the broker's word, not the HSM's)
    earlierAttempts: list[EarlierAttempt] | None = None


class SignedHeadPublic(Public):
    """The HSM's signed audit head (``hsm_emulator.audit.SignedHead``): the last entry's
    ``seq`` and ``hash``, when, and the HSM's counter (``epoch``, ``counter``), signed with
    its identity key (hex P1363) over their canonical JSON. Served with every task list so
    approvers' clients can refuse an HSM whose state went back."""

    seq: int
    hash: str
    at: float
    epoch: int | None = None
    counter: int | None = None
    signature: str


class TaskList(Public):
    """Tasks, and the HSM's latest signed audit head for the approver's witness."""

    tasks: list[TaskPublic]
    auditHead: SignedHeadPublic


class GroupMissing(Public):
    """A group of a tier: its quorum and how many approvals it still lacks."""

    name: str
    quorum: int
    missing: int


class TierProgress(Public):
    """A tier (token) that can still release the request, as the broker reports it."""

    name: str
    groups: list[GroupMissing]
    hold: int  #: the tier's timelock, seconds; a hold follows the last approval if > 0
    holdRemaining: int | float


class Decision(Public):
    """An approval or rejection recorded; ``tiers``: what each tier still needs (empty once
    the request is closed)."""

    id: str
    status: str
    tiers: list[TierProgress] = []


class GroupProgress(Public):
    """One group of a token: its quorum, approvals so far and how many are missing (the
    page words the tier from these: "medium: 2 traders, 1 more needed")."""

    name: str
    quorum: int
    approved: int
    missing: int


class TokenProgress(Public):
    """A token (tier) that can still release the request: by when (HSM time), the hold
    left, how many approvals are missing, and per group."""

    name: str
    deadline: int | float | None
    holdRemaining: int | float
    missing: int
    groups: list[GroupProgress]


class PageTask(Public):
    """A task as the approver page shows it: the challenge, and the broker's notes."""

    id: str
    approvalToBeSigned: str
    keyLabel: str
    action: str
    status: str
    initiator: str
    approvedBy: list[str]
    rejectedBy: list[str]
    tokens: list[TokenProgress]
    #: the transfer is being signed again: its earlier transactions, none of which landed
    earlierAttempts: list[EarlierAttempt] = []


class PageTaskList(Public):
    """Tasks, and the HSM's latest signed audit head for the page's witness."""

    tasks: list[PageTask]
    auditHead: SignedHeadPublic


# -- enrolment --------------------------------------------------------------------------


class EnrolmentPublic(Public):
    id: str
    name: str
    status: str
    credentialType: str
    fingerprint: str | None
    hsmFingerprint: str
    decidedBy: str | None
    credential: str | None  #: the policy entry's value, once confirmed


class EnrolmentList(Public):
    enrolments: list[EnrolmentPublic]


class PasskeyOptions(Public):
    id: str
    options: str  #: PublicKeyCredentialCreationOptions as JSON, for the browser


# -- audit, health ----------------------------------------------------------------------


class AuditPage(Public):
    entries: list[dict[str, Any]]
    head: dict[str, Any]
    checkpoints: list[dict[str, Any]]


class HsmIdentity(Public):
    identityPublicKey: str  #: base64 SPKI DER
    hsmId: str


class Health(Public):
    status: str


# -- treasury ---------------------------------------------------------------------------


class WalletPublic(Public):
    id: str
    name: str
    chain: str
    network: str
    keyLabel: str
    address: str
    assets: list[dict[str, Any]]
    policy: dict[str, Any]
    createdAt: str


class PendingHold(Public):
    """A live transfer and what it holds of the wallet until it ends."""

    id: str
    state: str
    locks: str  #: decimal units of the asset


class CoinPublic(Public):
    outpoint: str
    amount: str
    path: str
    lockedBy: str | None  #: the live transfer that spends it


class BalancePublic(Public):
    """One asset: ``total`` (= ``amount``, the node's figure), ``locked`` by the
    ``pendingTransfers``, ``available`` to the next transfer; decimal units. ``utxos``
    and ``coins`` on UTXO chains only."""

    symbol: str
    asset: str
    amount: str
    baseUnits: str
    total: str
    locked: str
    available: str
    pendingTransfers: list[PendingHold]
    utxos: int | None = None
    coins: list[CoinPublic] | None = None


class Balances(Public):
    wallet: str
    balances: list[BalancePublic]


class AddressPublic(Public):
    index: int
    path: str
    address: str
    label: str
    createdAt: str | None


class TransferPublic(Public):
    id: str
    wallet: str
    asset: str
    assetId: str
    amount: str
    baseUnits: str
    destination: str
    memo: str
    state: str
    tier: str | None
    signRequestId: str | None
    txid: str | None
    confirmations: int
    error: str | None
    feeCap: str
    nonce: int | None
    history: list[dict[str, Any]]
    createdAt: str | None
    updatedAt: str | None


class WebhookPublic(Public):
    """A registered endpoint; its secret is shown once, at creation, never here."""

    id: str
    url: str
    active: bool
    createdAt: str | None


class WebhookCreated(Public):
    id: str
    url: str
    secret: str  #: the HMAC key: shown here only


class DeliveryPublic(Public):
    id: int
    eventId: str
    transfer: str
    state: Any
    status: str
    attempts: int
    lastStatusCode: int | None
    lastError: str | None
    deliveredAt: str | None


# -- address lists ----------------------------------------------------------------------


class AddressListPublic(Public):
    uploadId: str
    size: int  #: distinct addresses once finished; addresses received while uploading
    chunks: int
    digest: str | None  #: set once finished: what a policy names
    finished: bool
    discarded: bool = False  #: the answer to DELETE: this upload (as it was) is gone
