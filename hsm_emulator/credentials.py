"""Approver credentials: parse them once, identify them stably, verify their signatures.

An approver is named in a key's policy by a certificate or a bare public key, exactly as
the Securosys TSB does (``{"type": "certificate" | "public_key", "value": <base64 DER>}``).
The HSM trusts the *policy*, not a CA: a certificate is only a wrapper around the
approver's public key, so its dates and issuer are not enforced here. What matters is
the key, and the approver's identity is the SHA-256 of its canonical SubjectPublicKeyInfo,
so the certificate and the bare public key of one key are one approver.

Everything here is pure (no I/O, no clock): callers pass ``now`` and keep replay state.
Every refusal is an :class:`HsmError` subclass; nothing leaks a bare ``ValueError``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import lru_cache
from typing import Final, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from nacl.bindings import crypto_core_ed25519_is_valid_point

from hsm_emulator.canonical import canonical_json
from hsm_emulator.errors import ApprovalRefused, CredentialInvalid, InvalidInput

__all__ = [
    "MAX_CREDENTIAL_CHARS",
    "WEBAUTHN",
    "Credential",
    "CredentialKind",
    "PasskeyBinding",
    "RsaPadding",
    "SignatureEncoding",
    "b64decode_strict",
    "credential_from_public_key",
    "encode_assertion",
    "parse_credential",
    "passkey_value",
    "verify",
    "verify_timestamp",
]

MAX_CREDENTIAL_CHARS: Final = 16 * 1024
"""Largest credential text accepted; an RSA-8192 certificate in PEM is well under half."""

RSA_MIN_BITS: Final = 2048
RSA_MAX_BITS: Final = 8192
MAX_TIMESTAMP_CHARS: Final = 64

SignatureEncoding = Literal["any", "der", "p1363"]
RsaPadding = Literal["any", "pkcs1v15", "pss"]


_DIGESTS: Final[dict[str, type[hashes.HashAlgorithm]]] = {
    "SHA256": hashes.SHA256,
    "SHA384": hashes.SHA384,
    "SHA512": hashes.SHA512,
}

_PEM_RE: Final = re.compile(
    r"\A\s*-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----\s*\Z", re.DOTALL
)
_PEM_LABEL: Final = {"certificate": "CERTIFICATE", "public_key": "PUBLIC KEY"}
_WHITESPACE_RE: Final = re.compile(r"\s+")


class CredentialKind(StrEnum):
    """The key types an approver may hold; anything else is refused at policy time."""

    RSA = "RSA"
    P256 = "P256"
    SECP256K1 = "SECP256K1"
    ED25519 = "ED25519"


# ECDSA group orders, to refuse r or s outside [1, n-1] before the library sees them.
_EC_ORDER: Final[dict[CredentialKind, int]] = {
    CredentialKind.P256: 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    CredentialKind.SECP256K1: 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141,
}
_EC_FIELD_BYTES: Final = 32


@dataclass(frozen=True)
class Credential:
    """An approver's public key, in canonical DER SubjectPublicKeyInfo form.

    Construction validates that ``spki_der`` is a supported key of type ``kind`` and is
    canonical (re-encoding gives the same bytes), so two credentials of one key always
    compare equal and share a fingerprint. ``certificate_not_after`` is informative only
    (a client may warn about it) and takes no part in equality.
    """

    kind: CredentialKind
    spki_der: bytes
    certificate_not_after: datetime | None = field(default=None, compare=False)
    #: Set for a WebAuthn passkey: its signatures are assertions bound to this RP.
    passkey: PasskeyBinding | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kind, CredentialKind):
            raise CredentialInvalid(f"kind must be a CredentialKind, got {self.kind!r}")
        if not isinstance(self.spki_der, bytes):
            raise CredentialInvalid("spki_der must be bytes")
        key = _load_spki(self.spki_der)
        actual = _classify(key)
        if actual is not self.kind:
            raise CredentialInvalid(f"key is {actual.value}, not {self.kind.value}")
        if _spki_of(key) != self.spki_der:
            raise CredentialInvalid("spki_der is not in canonical DER form")
        if self.passkey is not None and self.kind is not CredentialKind.P256:
            raise CredentialInvalid("a passkey must be an ES256 (P-256) key")

    @property
    def fingerprint(self) -> str:
        """SHA-256 hex of the SPKI: the approver's stable identity across cert renewals.

        A passkey's identity also covers its RP binding, so nobody can present the same
        key with another rpId or origin list and still match the policy's entry."""
        if self.passkey is not None:
            return hashlib.sha256(b"ska-passkey-v1:" + self.passkey.document(
                self.spki_der)).hexdigest()
        return hashlib.sha256(self.spki_der).hexdigest()

    @property
    def identity(self) -> str:
        """SHA-256 hex of the bare SPKI: the person, whatever the key's encoding (certificate
        or public key) or binding (a passkey's RP). Quorums count identities once."""
        return hashlib.sha256(self.spki_der).hexdigest()

    @property
    def public_key_b64(self) -> str:
        """Base64 SPKI, the form TSB shows in ``approvedBy`` / ``notYetApprovedBy``."""
        return base64.b64encode(self.spki_der).decode("ascii")


# --------------------------------------------------------------------------- base64


def b64decode_strict(s: str, what: str) -> bytes:
    """Decode standard base64 that must be canonical: padded, no whitespace, no junk.

    Canonical means re-encoding gives back ``s`` exactly, so one byte string has one
    textual form and nothing can hide in padding bits. Raises InvalidInput naming ``what``.
    """
    if not isinstance(s, str):
        raise InvalidInput(f"{what}: expected a base64 string, got {type(s).__name__}")
    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{what}: not valid base64 ({exc})") from None
    if base64.b64encode(raw).decode("ascii") != s:
        raise InvalidInput(f"{what}: base64 is not canonical (padding or trailing bits)")
    return raw


# --------------------------------------------------------------------------- parsing


def parse_credential(kind: str, value: str) -> Credential:
    """Parse a TSB approver entry: ``kind`` is "certificate" or "public_key".

    ``value`` is base64 DER (the TSB form, no newlines); PEM armour and embedded
    whitespace are tolerated because people paste ``openssl`` output. Certificate
    validity dates are not checked: the policy that lists the approver is the anchor.
    """
    if kind == WEBAUTHN:
        return _parse_passkey(value)
    if not isinstance(kind, str) or kind not in _PEM_LABEL:
        raise CredentialInvalid(f"unknown credential type {kind!r}; use certificate/public_key")
    der = _decode_text(kind, value)
    if kind == "certificate":
        return _from_certificate_der(der)
    return credential_from_public_key(_load_spki(der))


def credential_from_public_key(pk: PublicKeyTypes) -> Credential:
    """Build a Credential from a ``cryptography`` public key (tests, CLI approver)."""
    return Credential(kind=_classify(pk), spki_der=_spki_of(pk))


def _decode_text(kind: str, value: str) -> bytes:
    """Strip optional PEM armour and whitespace, then strict-base64 decode to DER."""
    if not isinstance(value, str):
        raise CredentialInvalid(f"{kind}: value must be a string")
    if len(value) > MAX_CREDENTIAL_CHARS:
        raise CredentialInvalid(f"{kind}: value longer than {MAX_CREDENTIAL_CHARS} characters")
    body = value
    match = _PEM_RE.match(value)
    if match is not None:
        if match.group(1) != _PEM_LABEL[kind]:
            raise CredentialInvalid(f"{kind}: PEM label {match.group(1)!r} is not expected")
        body = match.group(2)
    compact = _WHITESPACE_RE.sub("", body)
    if not compact:
        raise CredentialInvalid(f"{kind}: empty value")
    try:
        return b64decode_strict(compact, kind)
    except InvalidInput as exc:
        raise CredentialInvalid(exc.reason) from None


def _from_certificate_der(der: bytes) -> Credential:
    """Take the public key out of an X.509 certificate; trailing bytes are refused."""
    try:
        cert = x509.load_der_x509_certificate(der)
        key = cert.public_key()
        not_after = cert.not_valid_after_utc
    except (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion) as exc:
        raise CredentialInvalid(f"certificate: cannot parse DER X.509 ({_short(exc)})") from None
    base = credential_from_public_key(key)
    return Credential(base.kind, base.spki_der, certificate_not_after=not_after)


@lru_cache(maxsize=512)
def _load_spki(der: bytes) -> PublicKeyTypes:
    """Parse DER SubjectPublicKeyInfo (cached: policies verify the same keys repeatedly)."""
    try:
        return serialization.load_der_public_key(der)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CredentialInvalid(f"public_key: cannot parse DER SPKI ({_short(exc)})") from None


def _spki_of(pk: PublicKeyTypes) -> bytes:
    return pk.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _classify(pk: PublicKeyTypes) -> CredentialKind:
    """Map a key to its kind, refusing weak RSA and every curve but P-256/secp256k1."""
    if isinstance(pk, rsa.RSAPublicKey):
        if not RSA_MIN_BITS <= pk.key_size <= RSA_MAX_BITS:
            raise CredentialInvalid(
                f"RSA key of {pk.key_size} bits; need {RSA_MIN_BITS}..{RSA_MAX_BITS}"
            )
        if pk.public_numbers().n % 2 == 0:
            raise CredentialInvalid("RSA modulus is even: not a valid RSA key")
        return CredentialKind.RSA
    if isinstance(pk, ec.EllipticCurvePublicKey):
        if isinstance(pk.curve, ec.SECP256R1):
            return CredentialKind.P256
        if isinstance(pk.curve, ec.SECP256K1):
            return CredentialKind.SECP256K1
        raise CredentialInvalid(f"EC curve {pk.curve.name} unsupported; use P-256 or secp256k1")
    if isinstance(pk, ed25519.Ed25519PublicKey):
        if not _ed25519_prime_order(pk.public_bytes_raw()):
            raise CredentialInvalid("Ed25519 key is not a point of prime order L")
        return CredentialKind.ED25519
    raise CredentialInvalid(f"unsupported key type {type(pk).__name__}")


def _short(exc: BaseException) -> str:
    """First line of a library error, so reasons stay short and free of dumps."""
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


# --------------------------------------------------------------------------- Ed25519 keys
# A small-order Ed25519 key (the identity, a torsion point) lets anyone forge
# signatures that verify: Wycheproof rates them "acceptable" for a verifier, but an
# approver key must be a real key. libsodium's check requires a canonical encoding of a
# point on the curve, in the prime-order subgroup and not of small order - which also
# rules out mixed-order keys, whose signatures verify differently under cofactored and
# cofactorless verifiers.


@lru_cache(maxsize=512)
def _ed25519_prime_order(encoded: bytes) -> bool:
    return len(encoded) == 32 and bool(crypto_core_ed25519_is_valid_point(encoded))


# --------------------------------------------------------------------------- verify


def verify(
    cred: Credential,
    message: bytes,
    signature: bytes,
    digest: str = "SHA-256",
    *,
    encoding: SignatureEncoding = "any",
    rsa_padding: RsaPadding = "any",
) -> bool:
    """True iff ``signature`` is a valid signature of ``message`` by ``cred``.

    A bad signature is an ordinary outcome, so it returns False and never raises; only
    caller mistakes (unknown digest, encoding or padding name) raise InvalidInput.

    * RSA: PKCS#1 v1.5 or PSS (MGF1 with the same hash, any salt length: PSS.AUTO),
      because approval clients differ and both are sound; ``rsa_padding`` narrows that.
    * ECDSA: strict DER or raw r||s (IEEE P1363, what WebCrypto emits); ``encoding``
      narrows that. r and s must lie in [1, n-1]. Note a valid signature has several
      accepted byte forms (DER/P1363, and s/n-s), so replay tracking must key on the
      challenge, never on the signature bytes.
    * Ed25519: pure EdDSA over ``message``; ``digest`` is validated but not used.
    """
    algorithm = _digest(digest)
    if encoding not in ("any", "der", "p1363"):
        raise InvalidInput(f"unknown signature encoding {encoding!r}")
    if rsa_padding not in ("any", "pkcs1v15", "pss"):
        raise InvalidInput(f"unknown RSA padding {rsa_padding!r}")
    if not isinstance(message, bytes) or not isinstance(signature, bytes):
        return False
    if cred.passkey is not None:
        return isinstance(algorithm, hashes.SHA256) and _verify_assertion(cred, message,
                                                                          signature)
    key = _load_spki(cred.spki_der)
    if isinstance(key, rsa.RSAPublicKey):
        return _verify_rsa(key, message, signature, algorithm, rsa_padding=rsa_padding)
    if isinstance(key, ec.EllipticCurvePublicKey):
        return _verify_ecdsa(key, cred.kind, message, signature, algorithm, encoding=encoding)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return _verify_ed25519(key, message, signature)
    return False  # unreachable: Credential refuses other key types at construction


def _digest(name: str) -> hashes.HashAlgorithm:
    """Accept "SHA-256" (the TSB spelling) and the usual variants "SHA256"/"sha_256"."""
    if not isinstance(name, str):
        raise InvalidInput("digest must be a string such as 'SHA-256'")
    normalised = name.upper().replace("-", "").replace("_", "")
    factory = _DIGESTS.get(normalised)
    if factory is None:
        raise InvalidInput(f"unsupported digest {name!r}; use SHA-256, SHA-384 or SHA-512")
    return factory()


def _verify_rsa(
    key: rsa.RSAPublicKey,
    message: bytes,
    signature: bytes,
    algorithm: hashes.HashAlgorithm,
    *,
    rsa_padding: RsaPadding,
) -> bool:
    schemes: list[padding.AsymmetricPadding] = []
    if rsa_padding in ("any", "pkcs1v15"):
        schemes.append(padding.PKCS1v15())
    if rsa_padding in ("any", "pss"):
        schemes.append(padding.PSS(mgf=padding.MGF1(algorithm), salt_length=padding.PSS.AUTO))
    return any(_try(key.verify, signature, message, scheme, algorithm) for scheme in schemes)


def _verify_ecdsa(
    key: ec.EllipticCurvePublicKey,
    kind: CredentialKind,
    message: bytes,
    signature: bytes,
    algorithm: hashes.HashAlgorithm,
    *,
    encoding: SignatureEncoding,
) -> bool:
    order = _EC_ORDER[kind]
    candidates: list[tuple[int, int]] = []
    if encoding in ("any", "der"):
        candidates += _parse_der_rs(signature)
    if encoding in ("any", "p1363"):
        candidates += _parse_p1363_rs(signature)
    sig_algorithm = ec.ECDSA(algorithm)
    for r, s in candidates:
        if not (0 < r < order and 0 < s < order):
            continue
        if _try(key.verify, encode_dss_signature(r, s), message, sig_algorithm):
            return True
    return False


def _parse_der_rs(signature: bytes) -> list[tuple[int, int]]:
    """(r, s) from a DER ECDSA-Sig-Value, only if the encoding is the canonical one."""
    try:
        r, s = decode_dss_signature(signature)
    except ValueError:
        return []
    if r <= 0 or s <= 0 or encode_dss_signature(r, s) != signature:
        return []
    return [(r, s)]


def _parse_p1363_rs(signature: bytes) -> list[tuple[int, int]]:
    """(r, s) from fixed-width big-endian r||s; only the exact 64-byte length is valid."""
    if len(signature) != 2 * _EC_FIELD_BYTES:
        return []
    half = _EC_FIELD_BYTES
    return [(int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big"))]


def _verify_ed25519(key: ed25519.Ed25519PublicKey, message: bytes, signature: bytes) -> bool:
    if len(signature) != 64:
        return False
    return _try(key.verify, signature, message)


def _try(check: Callable[..., None], *args: object) -> bool:
    """Call a ``cryptography`` ``verify`` method; any of its exceptions means "not valid"."""
    try:
        check(*args)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


# --------------------------------------------------------------------------- timestamps


def verify_timestamp(
    cred: Credential,
    timestamp: str,
    signature_b64: str,
    now: float,
    max_skew: float = 300.0,
    digest: str = "SHA-256",
) -> float:
    """Check a signed timestamp (TSB's proof of key possession for listing tasks).

    ``timestamp`` is ISO-8601 with an explicit offset ("2023-10-30T17:30:24+00:00");
    the signature covers its exact UTF-8 bytes. Returns the timestamp as epoch seconds.
    Raises ApprovalRefused for anything wrong (malformed, bad signature, |now-ts| >
    ``max_skew``). The signature is checked before the clock so that a skew refusal
    always concerns a genuine approver. Replay tracking (remembering used timestamps
    per approver) is the caller's job: this function has no state.
    """
    instant = _parse_timestamp(timestamp)
    try:
        signature = b64decode_strict(signature_b64, "timestampSignature")
        valid = verify(cred, timestamp.encode("utf-8"), signature, digest)
    except InvalidInput as exc:
        raise ApprovalRefused(exc.reason) from None
    if not valid:
        raise ApprovalRefused("timestamp signature does not verify with the approver's key")
    if not abs(now - instant) <= max_skew:  # written so that a NaN refuses
        raise ApprovalRefused(
            f"timestamp {timestamp} is {now - instant:+.0f}s from HSM time; max skew {max_skew:g}s"
        )
    return instant


def _parse_timestamp(timestamp: str) -> float:
    """ISO-8601 to epoch seconds; a naive timestamp is ambiguous and therefore refused."""
    if not isinstance(timestamp, str) or len(timestamp) > MAX_TIMESTAMP_CHARS:
        raise ApprovalRefused("timestamp must be an ISO-8601 string of reasonable length")
    if not timestamp.isascii():
        raise ApprovalRefused("timestamp must be ASCII ISO-8601")
    try:
        parsed = datetime.fromisoformat(timestamp)
    except ValueError:
        raise ApprovalRefused(f"timestamp {timestamp!r} is not ISO-8601") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ApprovalRefused(f"timestamp {timestamp!r} has no timezone offset")
    return parsed.timestamp()


# --------------------------------------------------------------------------- passkeys
# A WebAuthn passkey (https://www.w3.org/TR/webauthn-3/#sctn-verifying-assertion) never
# signs the challenge itself: it signs ``authenticatorData || SHA-256(clientDataJSON)``,
# and clientDataJSON carries the challenge. So the HSM checks the whole assertion: the
# type is "webauthn.get", the challenge is SHA-256 of the bytes being approved (an SKA
# challenge can be far larger than a WebAuthn challenge should be, and a digest keeps
# clientDataJSON short), the origin is one the policy names, rpIdHash is SHA-256 of the
# policy's rpId, the user was present (and verified, if the policy asks), and the ES256
# signature holds. The RP binding is part of the credential the policy lists (and of its
# fingerprint), so it changes only through the key's ruleModify. The signature counter
# is not tracked: verification here is stateless, and synced passkeys report 0 anyway.

WEBAUTHN: Final = "webauthn"
_MAX_ASSERTION: Final = 8192
_MAX_ORIGINS: Final = 8
_UP, _UV, _AT, _ED = 0x01, 0x04, 0x40, 0x80
_RP_ID_RE: Final = re.compile(r"\A[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?\Z")
_ORIGIN_RE: Final = re.compile(r"\A(https://[a-z0-9.-]+|http://(localhost|127\.0\.0\.1))"
                               r"(:[0-9]{1,5})?\Z")


@dataclass(frozen=True)
class PasskeyBinding:
    """Where a passkey may be used: the WebAuthn RP id and the page origins."""

    rp_id: str
    origins: tuple[str, ...]
    user_verification: bool = False  #: require the UV flag, not only UP

    def document(self, spki_der: bytes) -> bytes:
        """The canonical JSON a policy's ``webauthn`` entry holds (base64-encoded).

        A valid binding is ASCII throughout (host names, origins, base64), so these are
        the bytes the ``json.dumps(..., sort_keys=True)`` of before gave: stored values
        still parse."""
        return canonical_json({"origins": list(self.origins), "publicKey": _b64(spki_der),
                               "rpId": self.rp_id, "userVerification": self.user_verification})


def passkey_value(spki_der: bytes, rp_id: str, origins: tuple[str, ...],
                  user_verification: bool = False) -> str:
    """The ``value`` of a policy entry ``{"type": "webauthn", ...}`` for a passkey."""
    doc = PasskeyBinding(rp_id, tuple(origins), user_verification).document(spki_der)
    value = _b64(doc)
    _parse_passkey(value)  # refuse now what a policy would refuse later
    return value


def encode_assertion(authenticator_data: bytes, client_data_json: bytes,
                     signature: bytes) -> bytes:
    """The approval ``signature`` bytes of a passkey: its assertion as canonical JSON."""
    return canonical_json({"authenticatorData": _b64url(authenticator_data),
                           "clientDataJSON": _b64url(client_data_json),
                           "signature": _b64url(signature)})


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: object) -> bytes | None:
    """Strict unpadded base64url, or None."""
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if _b64url(raw) == text else None


def _parse_passkey(value: str) -> Credential:
    """A ``webauthn`` entry: base64 of the canonical binding document, nothing else."""
    doc_bytes = _decode_text(WEBAUTHN, value) if isinstance(value, str) else b""
    try:
        doc = json.loads(doc_bytes)
    except (ValueError, UnicodeDecodeError):
        raise CredentialInvalid("webauthn: value is not base64 of a JSON document") from None
    if not isinstance(doc, dict) or set(doc) != {"origins", "publicKey", "rpId",
                                                 "userVerification"}:
        raise CredentialInvalid("webauthn: needs exactly origins, publicKey, rpId, "
                                "userVerification")
    rp_id, origins, uv = doc["rpId"], doc["origins"], doc["userVerification"]
    if not isinstance(rp_id, str) or not _RP_ID_RE.match(rp_id):
        raise CredentialInvalid("webauthn: rpId must be a lower-case host name")
    if (not isinstance(origins, list) or not 1 <= len(origins) <= _MAX_ORIGINS
            or not all(isinstance(o, str) and _ORIGIN_RE.match(o) for o in origins)):
        raise CredentialInvalid("webauthn: origins must be 1-8 https (or local http) origins")
    if not isinstance(uv, bool):
        raise CredentialInvalid("webauthn: userVerification must be true or false")
    base = parse_credential("public_key", doc["publicKey"]) if isinstance(
        doc["publicKey"], str) else None
    if base is None or base.kind is not CredentialKind.P256:
        raise CredentialInvalid("webauthn: publicKey must be a P-256 (ES256) SPKI")
    binding = PasskeyBinding(rp_id, tuple(origins), uv)
    if binding.document(base.spki_der) != doc_bytes:
        raise CredentialInvalid("webauthn: value is not in canonical form")
    return Credential(CredentialKind.P256, base.spki_der, passkey=binding)


def _verify_assertion(cred: Credential, message: bytes, signature: bytes) -> bool:
    """A WebAuthn assertion over ``message`` by this passkey, per the RP binding."""
    binding = cred.passkey
    parts = _assertion_parts(signature)
    if binding is None or parts is None:
        return False
    auth, client, sig = parts
    if not (_authenticator_data_ok(binding, auth)
            and _client_data_ok(binding, client, message)):
        return False
    key = _load_spki(cred.spki_der)
    return isinstance(key, ec.EllipticCurvePublicKey) and _verify_ecdsa(
        key, cred.kind, auth + hashlib.sha256(client).digest(), sig, hashes.SHA256(),
        encoding="der")


def _assertion_parts(signature: bytes) -> tuple[bytes, bytes, bytes] | None:
    """authenticatorData, clientDataJSON and the signature, from :func:`encode_assertion`."""
    if len(signature) > _MAX_ASSERTION:
        return None
    try:
        parts = json.loads(signature)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(parts, dict) or set(parts) != {"authenticatorData", "clientDataJSON",
                                                     "signature"}:
        return None
    auth, client, sig = (_unb64url(parts[k]) for k in ("authenticatorData",
                                                        "clientDataJSON", "signature"))
    if auth is None or client is None or sig is None:
        return None
    return auth, client, sig


def _authenticator_data_ok(binding: PasskeyBinding, auth: bytes) -> bool:
    """rpIdHash, UP (and UV if required); exactly 37 bytes: no AT data, no extensions."""
    if len(auth) != 37 or auth[:32] != hashlib.sha256(binding.rp_id.encode()).digest():
        return False
    flags = auth[32]
    return bool(flags & _UP) and not flags & (_AT | _ED) and (
        not binding.user_verification or bool(flags & _UV))


def _client_data_ok(binding: PasskeyBinding, client: bytes, message: bytes) -> bool:
    """type "webauthn.get", challenge = SHA-256(message), an allowed origin, same-origin."""
    try:
        data = json.loads(client)
    except (ValueError, UnicodeDecodeError):
        return False
    expected = _b64url(hashlib.sha256(message).digest())
    return (isinstance(data, dict) and data.get("type") == "webauthn.get"
            and data.get("challenge") == expected and data.get("origin") in binding.origins
            and data.get("crossOrigin", False) is False)
