"""The auto tier: sign at once what a policy token releases with no approvals and no
hold (:meth:`AutoTier.sign_now`), one payload or a batch (:meth:`AutoTier.sign_batch`).

Every payload is decoded and evaluated exactly as :mod:`hsm_emulator.flow` would, with
the velocity ledger counting what was signed before it; anything needing approvals is
refused with :class:`PolicyNotMet` (then use ``begin``).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

from .boundary import Boundary
from .decoders import UNSPECIFIED
from .errors import HsmError, InvalidInput, PolicyNotMet
from .evaluate import evaluate
from .flow import Approval, initiated, new_request
from .model import Action, Intent, SignItem, SignScheme
from .payloads import parse_scheme, prepare, sign
from .policy import Approver
from .records import KeyState
from .request import RequestStatus
from .results import Execution

MAX_BATCH = 1000
#: Enum members used per payload, looked up once: on Python 3.11 reading an attribute of
#: an Enum class is several times slower than reading a module global.
_USE = Action.USE
NO_APPROVALS: frozenset[str] = frozenset()  #: the auto tier's approver set
X = TypeVar("X")
Y = TypeVar("Y")


class _AutoItem(NamedTuple):
    """A payload the auto tier has decoded and released, not yet signed."""

    state: KeyState
    payload: bytes
    intent: Intent | None
    items: tuple[SignItem, ...]
    token: str | None  #: the releasing token
    at: float  #: when the policy released it


class AutoTier:
    """The auto-tier calls of :class:`hsm_emulator.Hsm` (see
    :class:`hsm_emulator.client.HsmSigning`)."""

    def __init__(self, boundary: Boundary) -> None:
        self._b = boundary

    def sign_now(self, label: str, payload: bytes, payload_type: str = UNSPECIFIED,
                 scheme: SignScheme | str | None = None, *,
                 request_id: str | None = None,
                 initiation: Approval | None = None) -> Execution:
        """Sign at once if a token needs no approvals and no hold (the auto tier);
        otherwise refuse with :class:`PolicyNotMet` - then use ``begin``.

        With the caller's own ``request_id`` the result is also kept as an executed
        request, so ``request_result`` returns it again to a caller that crashed
        before recording it, and a second call under that id signs nothing.
        ``initiation``: as for ``begin`` (required if the policy names initiators)."""
        event: dict[str, Any] = {"op": "sign.now", "label": label, "payloadType": payload_type}
        b = self._b

        def run() -> Execution:
            rid = secrets.token_hex(16) if request_id is None else b.requests.fresh_id(
                request_id)
            checked = self._check_auto(label, payload, payload_type, scheme)
            proven = initiated(b.hsm_id, checked.state, _USE, payload_type, checked.payload,
                               request_id, initiation, event)
            signatures = sign(checked.state, checked.items)
            result = _release(label, checked, signatures, rid, event)
            if request_id is not None:
                self._keep_auto(checked, result, payload_type, scheme, proven)
            return result

        with b.locked():
            return b.audited(event, run)

    def sign_batch(self, label: str, payloads: Sequence[bytes],
                   payload_type: str = UNSPECIFIED, scheme: SignScheme | str | None = None,
                   ) -> list[Execution]:
        """Bulk auto-tier signing: each payload decoded, evaluated (velocity counting the
        ones before it), signed and audited on its own, all committed at once.

        All or nothing: if any payload is refused, nothing is signed and the refusal
        names its index. Saves a commit per signature, not any check. The work runs in
        three passes - check every item, sign every item, audit every item - because
        running each kind of work back to back is markedly faster than alternating them
        (CPU caches); every pass is inside the batch's one transaction, so nothing is
        returned before all of it is committed, and a refused batch signs nothing.
        """
        if not 0 < len(payloads) <= MAX_BATCH:
            raise InvalidInput(f"a batch holds 1 to {MAX_BATCH} payloads")
        event: dict[str, Any] = {"op": "sign.batch", "label": label, "size": len(payloads)}
        b = self._b

        def run() -> list[Execution]:
            check = self._checker(label, payload_type, scheme)
            if check.state.policy.initiators:
                raise InvalidInput(f"key {label!r}: its policy names initiators; initiated "
                                   "requests are signed one by one (sign_now, begin)")
            with b.audit.buffered(), b.ledger.buffered():
                checked = _per_item(check, payloads)
                signatures = _per_item(lambda c: sign(c.state, c.items), checked)
                return self._release_batch(label, payload_type, checked, signatures)

        with b.locked():
            return b.audited(event, run)

    def _release_batch(self, label: str, payload_type: str, checked: list[_AutoItem],
                       signatures: list[tuple[bytes, ...]]) -> list[Execution]:
        """The batch's results, and for each item its own audit entry - the entry
        :meth:`sign_now` writes, with the item's index (what every item shares is
        encoded once: :meth:`AuditLog.record_all`)."""
        ids = secrets.token_hex(16 * len(checked))  # every request id from one draw
        common = {"op": "sign.now", "label": label, "payloadType": payload_type,
                  "result": "ok"}
        each: list[dict[str, Any]] = [{"batchIndex": i} for i in range(len(checked))]
        results = [_release(label, item, sigs, ids[32 * i:32 * i + 32], each[i])
                   for i, (item, sigs) in enumerate(zip(checked, signatures, strict=True))]
        self._b.audit.record_all(self._b.clock.now, common, each)
        return results

    def _check_auto(self, label: str, payload: bytes, payload_type: str,
                    scheme: SignScheme | str | None) -> _AutoItem:
        """Decode ``payload`` and evaluate the key's policy on it now, with no approvals;
        refuse unless a token releases it (see :class:`_AutoCheck`)."""
        return self._checker(label, payload_type, scheme)(payload)

    def _checker(self, label: str, payload_type: str, scheme: SignScheme | str | None,
                 ) -> _AutoCheck:
        """The check of :meth:`_check_auto` for payloads of one key, type and scheme: what
        does not depend on the payload - the auto tier's freeze, the key's state, the
        ledger's window reader - looked up once. Within one call the HSM's lock is held
        and nothing in a batch writes a key, so none of it can change in between."""
        b = self._b
        b.check_auto_tier()  # frozen for a while after a restore from backup
        return _AutoCheck(b, b.keys.usable(label), payload_type, scheme)

    def _keep_auto(self, checked: _AutoItem, result: Execution, payload_type: str,
                   scheme: SignScheme | str | None, proven: Approver | None) -> None:
        """An auto-signed request kept like an executed one (see :meth:`sign_now`)."""
        self._b.requests.put(new_request(
            result.request_id, checked.state, _USE, payload_type, checked.payload,
            parse_scheme(scheme), checked.intent, status=RequestStatus.OPEN,
            created_at=checked.at, proven=proven,
            epoch=self._b.store.counter_value.epoch).executed(result))


class _AutoCheck:
    """Decode a payload for one key and evaluate its policy now, with no approvals;
    refuse unless a token releases it. Records the spend in the velocity ledger (in the
    caller's transaction), so the next payload's velocity check counts it."""

    def __init__(self, b: Boundary, state: KeyState, payload_type: str,
                 scheme: SignScheme | str | None) -> None:
        self.state = state
        self._b = b
        self._payload_type = payload_type
        self._scheme = scheme
        self._spent = b.ledger.spent(state.family)

    def __call__(self, payload: bytes) -> _AutoItem:
        b, state = self._b, self.state
        final, intent, items = prepare(b.registry, state, _USE, payload, self._payload_type,
                                       self._scheme, None)
        now = b.clock.now()
        ev = evaluate(state.policy, _USE, intent, NO_APPROVALS, now, now, spent=self._spent)
        if not ev.released:
            raise PolicyNotMet("approvals are needed: " + " | ".join(ev.missing()),
                               ev.missing())
        b.ledger.record(state.family, intent, ev.released_by or "")
        return _AutoItem(state, final, intent, items, ev.released_by, now)


def _release(label: str, checked: _AutoItem, signatures: tuple[bytes, ...],
             request_id: str, event: dict[str, Any]) -> Execution:
    """The result of a signed auto-tier payload; fills in its audit event."""
    event.update(requestId=request_id, token=checked.token,
                 payloadDigest=hashlib.sha256(checked.payload).hexdigest())
    return Execution(request_id, label, _USE, signatures, checked.token, (),
                     checked.at, checked.intent)


def _per_item(step: Callable[[X], Y], inputs: Sequence[X]) -> list[Y]:
    """``[step(x) for x in inputs]``, except that a refusal names the batch item it
    came from."""
    done: list[Y] = []
    try:
        for x in inputs:
            done.append(step(x))
    except HsmError as exc:
        exc.reason = f"batch item {len(done)}: {exc.reason}"
        exc.args = (exc.reason,)
        raise
    return done
