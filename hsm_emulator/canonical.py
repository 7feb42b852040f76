"""The HSM's one canonical JSON: what it signs and digests, and what its verifiers rebuild.

The form: ``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
encoded as UTF-8 - keys sorted by code point, no insignificant whitespace, strings
escaped as ECMAScript's ``JSON.stringify`` escapes them (``\\b \\t \\n \\f \\r \\" \\\\``,
other controls as lower-case ``\\u00xx``, everything else raw UTF-8), integers as digits,
floats as Python's shortest round-trip ``repr``. Every signed or digested document goes
through :func:`canonical_json`: the approval challenge (:mod:`.challenge`), policy sources
and their digests (:mod:`.policy`), audit entry hashes and signed heads (:mod:`.audit`),
key attestations, initiation messages (:mod:`.initiation`) and a passkey's binding
document and assertion (:mod:`.credentials`). Broker-side code that needs canonical
JSON (webhook bodies, the CLI approver through :func:`.challenge.open_challenge`)
imports this same function; the HSM imports nothing from the broker.

Why not RFC 8785 (JCS, the ``rfc8785`` package) - decided in issue 13, recorded in
``docs/decisions/0001-canonical-json.md``. On the I-JSON the HSM emits - string keys of
the Basic Multilingual Plane, strings, integers below 2**53, booleans, null - this form
*is* JCS byte for byte (``tests/test_canonical_json.py`` checks it against the RFC 8785
reference vectors and the ``rfc8785`` package, hostile strings included). It differs
from JCS in exactly four places, and each one is in bytes already signed or stored:

* a float with an integral value: ``56.0`` here, ``56`` in JCS. ``hsmTime`` in every
  challenge, ``at`` in every signed audit head and ``attestedAt`` are floats from the
  clock, so JCS would change those bytes whenever the clock reads a whole second (every
  test with a manual clock does);
* integers of 2**53 and more: kept here, refused by JCS; audit events log integers of up
  to 255 bits, and policies may hold such amounts;
* keys outside the BMP: sorted here by code point, in JCS by UTF-16 code unit (a key
  with an emoji sorts before U+FB33 in JCS, after it here) - no key the HSM writes has one;
* lone surrogates: both refuse them (here ``UnicodeEncodeError`` on encoding).

Policy digests are stored in key stores, audit entry hashes chain through logs already
written and verified offline, and approvers' clients check challenge signatures: moving
to JCS would either break stores and logs written today or need a second, versioned
encoder beside this one for the stored digests - two canonical forms where there is one
now. What JCS would buy is interop with verifiers that re-serialise; ours do not (the
web page verifies the body bytes between ``{"body":`` and the envelope tail as received,
the CLI approver calls :func:`.challenge.open_challenge`). It would also cost: the
``rfc8785`` package is pure Python, 3-5x slower than ``json``'s C encoder on the audit
and challenge paths, and one more dependency inside the trust boundary. So the format
stays, the challenge stays at version 1, and ``rfc8785`` is a test-time reference only.
"""

from __future__ import annotations

import json
from typing import Any

#: ``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` builds
#: this very encoder on every call; building it once gives the same bytes for less.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_text(obj: Any) -> str:
    """``obj`` in canonical form, as text (for a caller that must encode it leniently).

    Raises ``TypeError`` for a value JSON has no form for, ``ValueError`` for a circular
    reference, ``RecursionError`` for nesting too deep.
    """
    return _CANONICAL.encode(obj)


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes: sorted keys, no spaces, UTF-8. Used for every digest.

    Raises as :func:`canonical_text` does, and ``UnicodeEncodeError`` for a lone surrogate.
    """
    return _CANONICAL.encode(obj).encode()
