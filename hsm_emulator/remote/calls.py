"""The remote calls, declared once: :data:`TABLE`.

Each entry names an :class:`~hsm_emulator.client.HsmClient` call and its role (which
role protocol declares it: keys, signing, audit, officer, lists), gives each of its
parameters a :class:`Kind` - how the value travels: its strict server-side check (the
error message a bad value gets), its client-side encoding, and a conversion applied once
every argument is read - and a :class:`Result`: how the HSM's answer is encoded by the
server and decoded by the client. Names, order, positional/keyword-only and defaults come
from the ``HsmClient`` signature itself (checked against the table when this module is
imported), so the server's argument checks and dispatch (:mod:`.server`) and the client's
methods (:mod:`.client`) are both driven by this table and cannot drift apart. Every
call is in exactly one role, and every call of a role protocol is in the table (checked
at import too).
"""

from __future__ import annotations

import base64
import binascii
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..address_lists import AddressListInfo
from ..addresses import AddressKind, Network
from ..audit import AuditEntry, SignedHead
from ..challenge import Challenge
from ..client import ROLES, HsmClient, Role, role_calls
from ..errors import AuditFailure, InvalidInput, TransportError
from ..flow import Approval
from ..model import KeyAttributes
from ..officers import OfficerOutcome, OfficerSet
from ..results import (
    ApprovalOutcome,
    Attestation,
    Execution,
    KeyInfo,
    evaluation_from_json,
    evaluation_to_json,
)
from .wire import _INT64, _REPLY_ENVELOPE, MAX_FRAME, _b64, _encode, _unb64

# -- server: arguments ------------------------------------------------------------------


_MISSING: Any = object()


class _Args:
    """A request's ``args`` object, read with strict types; unknown names are refused."""

    def __init__(self, raw: Any) -> None:
        if not isinstance(raw, dict):
            raise InvalidInput("args: must be an object")
        self._raw: dict[str, Any] = raw
        self._read: set[str] = set()

    def _get(self, name: str, default: Any) -> Any:
        self._read.add(name)
        if name in self._raw:
            return self._raw[name]
        if default is _MISSING:
            raise InvalidInput(f"{name}: missing")
        return default

    def done(self) -> None:
        unknown = set(self._raw) - self._read
        if unknown:
            names = sorted(str(n)[:64] for n in unknown)[:5]
            raise InvalidInput(f"unknown argument(s) {names}")

    def text(self, name: str, default: Any = _MISSING) -> str:
        value = self._get(name, default)
        if not isinstance(value, str):
            raise InvalidInput(f"{name}: must be a string")
        return value

    def opt_text(self, name: str) -> str | None:
        value = self._get(name, None)
        if value is not None and not isinstance(value, str):
            raise InvalidInput(f"{name}: must be a string or null")
        return value

    def integer(self, name: str, default: Any = _MISSING, *, bound: int | None = None) -> int:
        value = self._get(name, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidInput(f"{name}: must be an integer")
        if bound is not None and not -bound <= value < bound:
            raise InvalidInput(f"{name}: out of range")
        return value

    def opt_integer(self, name: str) -> int | None:
        if self._get(name, None) is None:
            return None
        return self.integer(name)

    def number(self, name: str, default: Any = _MISSING) -> float:
        value = self._get(name, default)
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(
                value):
            raise InvalidInput(f"{name}: must be a finite number")
        return float(value)

    def data(self, name: str, default: Any = _MISSING) -> bytes:
        return _unb64(self._get(name, default), name)

    def opt_data(self, name: str) -> bytes | None:
        if self._get(name, None) is None:
            return None
        return self.data(name)

    def opt_object(self, name: str) -> dict[str, Any] | None:
        value = self._get(name, None)
        if value is not None and not isinstance(value, dict):
            raise InvalidInput(f"{name}: must be an object or null")
        return value

    def _list(self, name: str) -> list[Any]:
        value = self._get(name, [])
        if not isinstance(value, list):
            raise InvalidInput(f"{name}: must be a list")
        return value

    def texts(self, name: str) -> list[str]:
        values = self._list(name)
        if not all(isinstance(v, str) for v in values):
            raise InvalidInput(f"{name}: must be a list of strings")
        return values

    def datas(self, name: str) -> list[bytes]:
        return [_unb64(v, f"{name}[{i}]") for i, v in enumerate(self._list(name))]

    def approval(self, name: str) -> Approval:
        return _approval(self._get(name, _MISSING), name)

    def opt_approval(self, name: str) -> Approval | None:
        value = self._get(name, None)
        return None if value is None else _approval(value, name)

    def approvals(self, name: str) -> list[Approval]:
        return [_approval(v, f"{name}[{i}]") for i, v in enumerate(self._list(name))]


def _approval(doc: Any, what: str) -> Approval:
    if not isinstance(doc, dict) or set(doc) - {"credentialType", "credential", "signature",
                                                "digest"}:
        raise InvalidInput(f"{what}: an approval object (credentialType, credential, "
                           "signature, digest)")
    ctype, cred, digest = doc.get("credentialType"), doc.get("credential"), doc.get(
        "digest", "SHA-256")
    if not (isinstance(ctype, str) and isinstance(cred, str) and isinstance(digest, str)):
        raise InvalidInput(f"{what}: credentialType, credential and digest must be strings")
    return Approval(ctype, cred, _unb64(doc.get("signature"), f"{what}.signature"), digest)


def _address_kind(value: str) -> AddressKind:
    try:
        return AddressKind(value)
    except ValueError:
        raise InvalidInput(f"kind: one of {[k.value for k in AddressKind]}") from None


def _network(value: str) -> Network:
    try:
        return Network(value)
    except ValueError:
        raise InvalidInput(f"network: one of {[n.value for n in Network]}") from None


# -- client: arguments ------------------------------------------------------------------


def _value(v: Enum | str | None) -> Any:
    return v.value if isinstance(v, Enum) else v


def _bytes_arg(value: Any, name: str) -> str:
    if not isinstance(value, bytes):
        raise InvalidInput(f"{name} must be bytes")
    return _b64(value)


def _approval_arg(value: Approval | None, name: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Approval) or not isinstance(value.signature, bytes):
        raise InvalidInput(f"{name} must be an Approval")
    return value.to_json()


def _same(value: Any, name: str) -> Any:
    return value


# -- argument kinds ---------------------------------------------------------------------

#: ``read(args, name, wire default)``: the server's strict read of one argument.
_Read = Callable[["_Args", str, Any], Any]


@dataclass(frozen=True)
class Kind:
    """How one argument travels. ``read``: the server's strict check of the JSON value
    (``default`` is the wire form of the parameter's default, or missing). ``encode``:
    the client's Python value -> JSON (the client's own checks). ``convert``: applied by
    the server after every argument is read and none unknown is left (enum values)."""

    read: _Read
    encode: Callable[[Any, str], Any] = _same
    convert: Callable[[Any], Any] | None = None


def _read_text(a: _Args, n: str, d: Any) -> Any:
    return a.text(n, d)


def _read_opt_text(a: _Args, n: str, d: Any) -> Any:
    return a.opt_text(n)


def _read_opt_object(a: _Args, n: str, d: Any) -> Any:
    return a.opt_object(n)


TEXT = Kind(_read_text)
OPT_TEXT = Kind(_read_opt_text)
#: An enum member or its value (``algorithm``, ``action``, ``scheme``), a string on the wire.
ENUM = Kind(_read_text, lambda v, n: _value(v))
OPT_ENUM = Kind(_read_opt_text, lambda v, n: _value(v))
ADDRESS_KIND = Kind(_read_text, lambda v, n: _value(v), _address_kind)
NETWORK = Kind(_read_text, lambda v, n: _value(v), _network)
INT64 = Kind(lambda a, n, d: a.integer(n, d, bound=_INT64))
OPT_INT = Kind(lambda a, n, d: a.opt_integer(n))
NUMBER = Kind(lambda a, n, d: a.number(n, d))
BYTES = Kind(lambda a, n, d: a.data(n, d), _bytes_arg)
OPT_BYTES = Kind(lambda a, n, d: a.opt_data(n),
                 lambda v, n: None if v is None else _bytes_arg(v, n))
BYTES_LIST = Kind(lambda a, n, d: a.datas(n),
                  lambda v, n: [_bytes_arg(p, f"{n}[{i}]") for i, p in enumerate(v)])
TEXTS = Kind(lambda a, n, d: a.texts(n), lambda v, n: list(v))
OBJECT = Kind(_read_opt_object)
ATTRIBUTES = Kind(_read_opt_object,
                  lambda v, n: v.to_json() if isinstance(v, KeyAttributes) else v)
APPROVAL = Kind(lambda a, n, d: a.approval(n), lambda v, n: v.to_json())
OPT_APPROVAL = Kind(lambda a, n, d: a.opt_approval(n), _approval_arg)
APPROVALS = Kind(lambda a, n, d: a.approvals(n), lambda v, n: [x.to_json() for x in v])


# -- results ----------------------------------------------------------------------------


def _decoded(build: Callable[[], Any]) -> Any:
    try:
        return build()
    except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as exc:
        raise TransportError(f"the HSM sent a malformed result: {exc!r}") from None


@dataclass(frozen=True)
class Result:
    """A call's answer: ``encode`` (server) the HSM's return value -> JSON; ``decode``
    (client) ``(call, JSON)`` -> the value, TransportError if malformed."""

    encode: Callable[[Any], Any]
    decode: Callable[[str, Any], Any]


def _of_json(build: Callable[[Any], Any]) -> Result:
    return Result(lambda r: r.to_json(), lambda c, doc: _decoded(lambda: build(doc)))


def _list_of(build: Callable[[Any], Any]) -> Result:
    return Result(lambda r: [e.to_json() for e in r],
                  lambda c, doc: _decoded(lambda: [build(d) for d in doc]))


def _text(call: str, doc: Any) -> str:
    if not isinstance(doc, str):
        raise TransportError(f"{call}: the HSM sent a malformed result")
    return doc


def _texts(call: str, doc: Any) -> list[str]:
    if not isinstance(doc, list) or not all(isinstance(x, str) for x in doc):
        raise TransportError(f"{call}: the HSM sent a malformed result")
    return doc


def _fitting(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first entries whose reply fits in a frame: as many as fit, never an error for
    asking too many, so the log stays pageable whatever it holds (the client asks again
    from where a page ends). Entries are bounded when written (see ``audit.bounded``),
    so one always fits - unless it was written before that, which is then said."""
    room = MAX_FRAME - _REPLY_ENVELOPE
    for n, entry in enumerate(entries):
        room -= len(_encode(entry)) + 1  # the entry and its comma
        if room < 0:
            if n == 0:
                raise AuditFailure(f"audit entry {entry['seq']} alone exceeds the "
                                   f"{MAX_FRAME}-byte reply frame (it was written before "
                                   "caller strings were bounded); read it from the store")
            return entries[:n]
    return entries



KEY_INFO = _of_json(KeyInfo.from_json)
EXECUTION = _of_json(Execution.from_json)
APPROVAL_OUTCOME = _of_json(ApprovalOutcome.from_json)
EXECUTIONS = _list_of(Execution.from_json)
CHALLENGE = _of_json(Challenge.from_json)
ATTESTATION = _of_json(Attestation.from_json)
SIGNED_HEAD = _of_json(SignedHead.from_json)
SIGNED_HEADS = _list_of(SignedHead.from_json)
OFFICER_SET = _of_json(OfficerSet.from_json)
OFFICER_OUTCOME = _of_json(OfficerOutcome.from_json)
EVALUATION = Result(evaluation_to_json, lambda c, doc: _decoded(lambda: evaluation_from_json(doc)))
RAW_BYTES = Result(_b64, lambda c, doc: _decoded(lambda: base64.b64decode(doc, validate=True)))
STRING = Result(lambda r: r, _text)
STRINGS = Result(lambda r: r, _texts)
NOTHING = Result(lambda r: None, lambda c, doc: None)
#: As many entries as fit in one reply frame (the client pages).
AUDIT_ENTRIES = Result(lambda r: _fitting([e.to_json() for e in r]),
                       lambda c, doc: _decoded(lambda: [AuditEntry.from_json(d) for d in doc]))


# -- the table --------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One parameter: its name, kind, wire default (missing if required) and whether it
    is keyword-only, as in the ``HsmClient`` signature."""

    name: str
    kind: Kind
    default: Any
    keyword: bool
    client_default: Any


@dataclass(frozen=True)
class Call:
    name: str
    role: Role
    params: tuple[Param, ...]
    result: Result
    #: Changes no state: safe to send again after a lost reply.
    read_only: bool
    #: How many leading parameters are positional (the rest are keyword-only).
    positional: int


def _call(name: str, role: Role, result: Result, *, read_only: bool = False,
          **kinds: Kind) -> Call:
    """Declare a call of ``role``; its parameters must be exactly the method's of that
    role's protocol (which must declare it)."""
    if name not in role_calls(role):
        raise TypeError(f"{name}: not a call of the {role.value} role "
                        f"({ROLES[role].__name__})")
    params = list(inspect.signature(getattr(HsmClient, name)).parameters.values())[1:]
    if [p.name for p in params] != list(kinds):
        raise TypeError(f"{name}: the call table's arguments {list(kinds)} are not "
                        f"HsmClient.{name}'s {[p.name for p in params]}")
    out = []
    for p in params:
        kind = kinds[p.name]
        required = p.default is inspect.Parameter.empty
        out.append(Param(p.name, kind, _MISSING if required else kind.encode(p.default, p.name),
                         p.kind is inspect.Parameter.KEYWORD_ONLY,
                         _MISSING if required else p.default))
    return Call(name, role, tuple(out), result, read_only,
                sum(not p.keyword for p in out))


KEYS, SIGNING, AUDIT, OFFICER = Role.KEYS, Role.SIGNING, Role.AUDIT, Role.OFFICER
ADDRESS_LIST = _of_json(AddressListInfo.from_json)
#: The address list role's calls (a chunk of 5,000 addresses is about 0.4 MB of a frame).
LIST_CALLS = (
    _call("address_list_begin", Role.LISTS, ADDRESS_LIST),
    _call("address_list_add", Role.LISTS, ADDRESS_LIST, upload_id=TEXT, index=INT64,
          addresses=TEXTS),
    _call("address_list_finish", Role.LISTS, ADDRESS_LIST, upload_id=TEXT),
    _call("address_list_discard", Role.LISTS, NOTHING, upload_id=TEXT),
    _call("address_list_info", Role.LISTS, ADDRESS_LIST, read_only=True, list_id=TEXT),
)

#: Every HsmClient call but ``close`` (a client closes its connection, never the HSM),
#: by role.
TABLE: dict[str, Call] = {c.name: c for c in (
    _call("create_key", KEYS, KEY_INFO, label=TEXT, algorithm=ENUM, key_size=OPT_INT,
          attributes=ATTRIBUTES, policy=OBJECT),
    _call("derive_key", KEYS, KEY_INFO, parent=TEXT, path=TEXT, label=TEXT, policy=OBJECT),
    _call("get_key", KEYS, KEY_INFO, read_only=True, label=TEXT),
    _call("list_keys", KEYS, STRINGS, read_only=True),
    _call("public_key", KEYS, RAW_BYTES, read_only=True, label=TEXT, path=TEXT),
    _call("address", KEYS, STRING, read_only=True, label=TEXT, kind=ADDRESS_KIND,
          network=NETWORK, path=TEXT),
    _call("attest", KEYS, ATTESTATION, read_only=True, label=TEXT),
    _call("identity_public_key", KEYS, RAW_BYTES, read_only=True),
    _call("begin", SIGNING, CHALLENGE, label=TEXT, action=ENUM, payload=BYTES,
          payload_type=TEXT, scheme=OPT_ENUM, fee_cap=OPT_INT, new_policy=OBJECT,
          initiator=TEXT, request_id=OPT_TEXT, initiation=OPT_APPROVAL),
    _call("check_approval", SIGNING, STRING, read_only=True, request_id=TEXT,
          approval=APPROVAL),
    _call("execute", SIGNING, EXECUTION, request_id=TEXT, approvals=APPROVALS,
          payload=OPT_BYTES),
    _call("approve", SIGNING, APPROVAL_OUTCOME, request_id=TEXT, approval=APPROVAL,
          approvals=APPROVALS, payload=OPT_BYTES),
    _call("sign_now", SIGNING, EXECUTION, label=TEXT, payload=BYTES, payload_type=TEXT,
          scheme=OPT_ENUM, request_id=OPT_TEXT, initiation=OPT_APPROVAL),
    _call("sign_batch", SIGNING, EXECUTIONS, label=TEXT, payloads=BYTES_LIST,
          payload_type=TEXT, scheme=OPT_ENUM),
    _call("dry_run", SIGNING, EVALUATION, read_only=True, label=TEXT, payload=BYTES,
          payload_type=TEXT, action=ENUM, approvers=TEXTS, elapsed=NUMBER),
    _call("request_status", SIGNING, EVALUATION, read_only=True, request_id=TEXT,
          approvals=APPROVALS, rejected=TEXTS),
    _call("cancel", SIGNING, NOTHING, request_id=TEXT, reason=TEXT),
    _call("request_result", SIGNING, EXECUTION, read_only=True, request_id=TEXT),
    _call("request_challenge", SIGNING, CHALLENGE, read_only=True, request_id=TEXT),
    _call("audit_entries", AUDIT, AUDIT_ENTRIES, read_only=True, start=INT64, limit=INT64),
    _call("audit_head", AUDIT, SIGNED_HEAD, read_only=True),
    _call("audit_checkpoints", AUDIT, SIGNED_HEADS, read_only=True),
    _call("officer_set", OFFICER, OFFICER_SET, read_only=True),
    _call("officer_begin", OFFICER, CHALLENGE, action=ENUM, arguments=OBJECT),
    _call("officer_challenge", OFFICER, CHALLENGE, read_only=True, request_id=TEXT),
    _call("officer_execute", OFFICER, OFFICER_OUTCOME, request_id=TEXT, approvals=APPROVALS),
    _call("restore_backup", OFFICER, OFFICER_OUTCOME, request_id=TEXT, approvals=APPROVALS,
          backup=BYTES, shares=TEXTS),
    _call("invalidate_key", OFFICER, KEY_INFO, label=TEXT, so_passphrase=TEXT),
    _call("restore_key", OFFICER, KEY_INFO, label=TEXT, so_passphrase=TEXT),
    _call("destroy_key", OFFICER, KEY_INFO, label=TEXT, so_passphrase=TEXT),
    _call("export_private_key_unsafe", OFFICER, RAW_BYTES, label=TEXT, so_passphrase=TEXT),
    *LIST_CALLS,
)}


def _check_roles(table: dict[str, Call]) -> None:
    """Every call of every role protocol is in the table, under that role (a call in two
    roles, or a role method with no call, fails here, at import)."""
    for role in Role:
        declared = set(role_calls(role))
        tabled = {name for name, call in table.items() if call.role is role}
        if declared != tabled:
            raise TypeError(f"the {role.value} role ({ROLES[role].__name__}) declares "
                            f"{sorted(declared)} but the call table gives it {sorted(tabled)}")
    everywhere = [name for role in Role for name in role_calls(role)]
    if len(everywhere) != len(set(everywhere)):
        raise TypeError("a call is declared by more than one role protocol")


_check_roles(TABLE)
