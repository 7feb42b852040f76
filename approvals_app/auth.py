"""JWT bearer authentication (PyJWT) with roles; approvers authenticate by signatures.

Roles (:class:`Role`): ``business`` (initiate, read and cancel its tenant's requests),
``key_admin`` (create keys, request block / unblock / modify), ``security_officer``,
``auditor``. Only HS256 with the configured secret is accepted - ``alg: none`` and
algorithm confusion are refused by pinning the algorithm list - and ``exp``, ``aud``,
``iss`` and ``sub`` are required. The FastAPI wiring (``CurrentPrincipal``,
``RequireRole``) is in :mod:`approvals_app.deps`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from enum import StrEnum

import jwt

from custody.broker import Principal
from custody.errors import RateLimited, Unauthorized
from custody.settings import Settings


class Role(StrEnum):
    """What a token may do; a token's other role names are ignored."""

    BUSINESS = "business"
    KEY_ADMIN = "key_admin"
    SECURITY_OFFICER = "security_officer"
    AUDITOR = "auditor"


ROLES = frozenset(r.value for r in Role)
#: Failed authentications allowed per client address per minute.
MAX_FAILURES_PER_MINUTE = 20
#: Failing client addresses past which idle ones (no failure in the window) are dropped:
#: the table then holds at most the addresses that failed in the last window.
MAX_FAILING_CLIENTS = 4096


class FailureLimiter:
    """Failed bearer authentications per client address in a sliding minute.

    The HSM's socket server keeps its own limiter (``hsm_emulator.remote.server``) for
    failed handshakes: it sits on the other side of the trust boundary, which imports
    nothing from the broker or the API, and the broker uses no HSM internals, so the two
    stay apart on purpose - each guards its own door.
    """

    def __init__(self, limit: int = MAX_FAILURES_PER_MINUTE, window: float = 60.0) -> None:
        self.limit, self.window = limit, window
        #: only addresses that failed: a lookup never adds one, and idle ones are
        #: forgotten once there are more than :data:`MAX_FAILING_CLIENTS`
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, client: str) -> None:
        with self._lock:
            q = self._failures.get(client)
            if q is None:
                return
            while q and q[0] < time.monotonic() - self.window:
                q.popleft()
            if len(q) >= self.limit:
                raise RateLimited("too many failed authentications; try again later")

    def failed(self, client: str) -> None:
        with self._lock:
            now = time.monotonic()
            if len(self._failures) >= MAX_FAILING_CLIENTS:
                for c in [c for c, q in self._failures.items()
                          if not q or q[-1] < now - self.window]:
                    del self._failures[c]
            self._failures.setdefault(client, deque()).append(now)

    def __len__(self) -> int:
        """Client addresses remembered (for tests: the table must stay bounded)."""
        return len(self._failures)


def issue_token(secret: str, subject: str, tenant: str, roles: list[str], *,
                audience: str = "ska-custody", issuer: str = "ska-custody",
                lifetime: int = 3600) -> str:
    """Mint a token (for the CLI, the demo and tests; production has its own issuer)."""
    now = int(time.time())
    return jwt.encode({"sub": subject, "tenant": tenant, "roles": roles, "aud": audience,
                       "iss": issuer, "iat": now, "exp": now + lifetime}, secret,
                      algorithm="HS256")


class VerifiedTokens:
    """Tokens already verified, with their expiry: a token is checked in full (signature,
    claims) once, and on later calls only against its ``exp`` - which PyJWT would check
    again the same way. Bounded: when full it starts over."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._known: dict[str, tuple[Principal, float]] = {}

    def get(self, token: str) -> Principal | None:
        hit = self._known.get(token)
        if hit is None or time.time() >= hit[1]:
            return None
        return hit[0]

    def put(self, token: str, principal: Principal, exp: float) -> None:
        if len(self._known) >= self.limit:
            self._known = {}
        self._known[token] = (principal, exp)


def authenticate(settings: Settings, limiter: FailureLimiter, tokens: VerifiedTokens,
                 client: str, authorization: str) -> Principal:
    """The caller's principal from its ``Authorization`` header (CPU only)."""
    limiter.check(client)
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        limiter.failed(client)
        raise Unauthorized("a bearer token is required")
    if not settings.jwt_secret:
        raise Unauthorized("this server has no token secret configured")
    known = tokens.get(token)
    if known is not None:
        return known
    try:
        claims = jwt.decode(token, settings.jwt_secret, algorithms=["HS256"],
                            audience=settings.jwt_audience, issuer=settings.jwt_issuer,
                            options={"require": ["exp", "aud", "iss", "sub"]})
    except jwt.PyJWTError as exc:
        limiter.failed(client)
        raise Unauthorized(f"invalid token: {type(exc).__name__}") from None
    roles = claims.get("roles", [])
    tenant = claims.get("tenant", "")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles) or not (
            isinstance(tenant, str) and tenant):
        limiter.failed(client)
        raise Unauthorized("token needs a tenant and a list of roles")
    principal = Principal(str(claims["sub"]), tenant, frozenset(roles) & ROLES)
    tokens.put(token, principal, float(claims["exp"]))
    return principal
