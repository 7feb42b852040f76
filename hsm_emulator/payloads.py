"""What a key is asked to do, checked and decoded: shared by the approval flow
(:mod:`.flow`) and the auto tier (:mod:`.autotier`), so both refuse the same payloads
with the same errors and sign exactly what the chain's decoder says is to be signed."""

from __future__ import annotations

from typing import Any

from .decoders import MAX_PAYLOAD, UNSPECIFIED, DecoderRegistry
from .errors import AttributeDenied, InvalidInput, KeyBlocked, NetworkNotAllowed
from .model import Action, Intent, SignItem, SignScheme, canonical_json, network_id
from .policy import parse_policy
from .records import KeyRecords, KeyState

#: Enum members used per payload, looked up once: on Python 3.11 reading an attribute of
#: an Enum class is several times slower than reading a module global.
_USE = Action.USE


def prepare(registry: DecoderRegistry, state: KeyState, act: Action, payload: bytes,
            payload_type: str, scheme: SignScheme | str | None,
            new_policy: dict[str, Any] | None,
            ) -> tuple[bytes, Intent | None, tuple[SignItem, ...]]:
    """Check the key may act; decode the payload into its intent and what to sign."""
    if not isinstance(payload, bytes):
        raise InvalidInput("payload must be bytes")
    if act is _USE:
        if not state.attributes.sign:
            raise AttributeDenied(f"key {state.label!r} does not allow signing")
        if state.blocked:
            raise KeyBlocked(f"key {state.label!r} is blocked")
        return (payload, *sign_items(registry, state, payload_type, payload,
                                     parse_scheme(scheme)))
    if payload or payload_type != UNSPECIFIED:
        raise InvalidInput(f"a {act.value} request carries no payload")
    if act is Action.MODIFY:
        if new_policy is None:
            raise InvalidInput("a modify request needs the new policy")
        parse_policy(new_policy)
        return canonical_json(new_policy), None, ()
    if new_policy is not None:
        raise InvalidInput(f"a {act.value} request takes no policy")
    if act is Action.UNBLOCK and not state.blocked:
        raise InvalidInput(f"key {state.label!r} is not blocked")
    if act is Action.BLOCK and state.blocked:
        raise InvalidInput(f"key {state.label!r} is already blocked")
    return b"", None, ()


def sign_items(registry: DecoderRegistry, state: KeyState, payload_type: str, payload: bytes,
               scheme: SignScheme | None) -> tuple[Intent | None, tuple[SignItem, ...]]:
    """The payload's intent (None if UNSPECIFIED) and the items the key is to sign."""
    if payload_type != UNSPECIFIED:
        if scheme is not None:
            raise InvalidInput(f"{payload_type} payloads are signed as their chain requires;"
                               " give no signature algorithm")
        intent, items = registry.prepare(payload_type, payload, KeyRecords.view(state))
        check_network(state, intent)
        return intent, items
    if scheme is None:
        raise InvalidInput("an UNSPECIFIED payload needs a signature algorithm")
    if len(payload) > MAX_PAYLOAD:
        raise InvalidInput(f"payload larger than {MAX_PAYLOAD} bytes")
    return None, (SignItem(scheme, payload),)


def sign(state: KeyState, items: tuple[SignItem, ...]) -> tuple[bytes, ...]:
    assert state.material is not None
    if not state.attributes.derive and any(item.path for item in items):
        raise AttributeDenied("signing for a derived path needs the derive attribute")
    return tuple([state.material.derive(item.path).sign(item.scheme, item.data, item.tweak)
                  for item in items])


def check_network(state: KeyState, intent: Intent | None) -> None:
    """A key signs only for the networks its policy names. The test decoder's payloads
    (chain ``test``, registered only where tests enable it) are no chain's transactions:
    a SHA-256 of JSON can be no chain's sighash, so they are exempt."""
    if intent is None or intent.chain == "test":
        return
    where = network_id(intent.chain, intent.network)
    if where not in state.policy.networks:
        named = ", ".join(sorted(state.policy.networks)) or "none"
        raise NetworkNotAllowed(f"key {state.label!r} does not sign for {where}: its policy "
                                f"names {named}")


def parse_action(value: Action | str) -> Action:
    try:
        return Action(value)
    except ValueError:
        raise InvalidInput(f"action: one of {[a.value for a in Action]}") from None


def parse_scheme(value: SignScheme | str | None) -> SignScheme | None:
    if value is None:
        return None
    try:
        return SignScheme(value)
    except ValueError:
        raise InvalidInput(f"signature algorithm {value!r} not supported; one of "
                           f"{[s.value for s in SignScheme]}") from None
