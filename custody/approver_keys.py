"""An approver's own key: created here, kept encrypted on disk, used to sign challenges.

The private key is stored as PKCS#8 PEM under ``BestAvailableEncryption`` (the strongest
scheme ``cryptography`` offers for PEM); it is decrypted only for the moment a command
needs it. Next to it, ``<key file>.hsm-pin.json`` holds the HSM identity public key the
approver chose to trust (pinned once, out of band or on first use), so a challenge is
always checked against that key and never against one the server hands out later.

Pure apart from reading and writing these two files: no network, no clock, no prompts.
Every refusal is an :class:`ApproverError` with a message fit to show a person.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from hsm_emulator.credentials import credential_from_public_key
from hsm_emulator.errors import HsmError

#: Shortest passphrase ``init`` accepts for a new key.
MIN_PASSPHRASE = 12
#: Largest key file read: an encrypted RSA-8192 PKCS#8 PEM is about 7 KB.
MAX_KEY_FILE = 64 * 1024
PIN_SUFFIX = ".hsm-pin.json"


class ApproverError(Exception):
    """A refusal of the approver client; ``exit_code`` 1: refused or not verified,
    2: local problem (key, passphrase, files), 3: the server cannot be reached."""

    def __init__(self, reason: str, exit_code: int = 1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_code = exit_code


class KeyType(StrEnum):
    """The approval key types the HSM accepts (hsm_emulator.credentials)."""

    RSA = "rsa"
    P256 = "p256"
    SECP256K1 = "secp256k1"
    ED25519 = "ed25519"


def generate(kind: KeyType) -> PrivateKeyTypes:
    if kind is KeyType.RSA:
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    if kind is KeyType.P256:
        return ec.generate_private_key(ec.SECP256R1())
    if kind is KeyType.SECP256K1:
        return ec.generate_private_key(ec.SECP256K1())
    return ed25519.Ed25519PrivateKey.generate()


@dataclass(frozen=True)
class ApproverKey:
    """A decrypted approval key; signs with the schemes the HSM verifies by default
    (RSA PKCS#1 v1.5, ECDSA DER, pure Ed25519; SHA-256)."""

    private: PrivateKeyTypes

    @property
    def spki_der(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    @property
    def spki_b64(self) -> str:
        """What goes in a policy's ``approvals[].value`` and in ``approverCertificate``."""
        return base64.b64encode(self.spki_der).decode()

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.spki_der).hexdigest()

    @property
    def kind(self) -> str:
        return credential_from_public_key(self.private.public_key()).kind.value

    def sign(self, message: bytes) -> bytes:
        k = self.private
        if isinstance(k, ed25519.Ed25519PrivateKey):
            return k.sign(message)
        if isinstance(k, rsa.RSAPrivateKey):
            return k.sign(message, padding.PKCS1v15(), hashes.SHA256())
        if isinstance(k, ec.EllipticCurvePrivateKey):
            return k.sign(message, ec.ECDSA(hashes.SHA256()))
        raise ApproverError("unsupported key type", 2)

    def csr_pem(self, subject: str) -> bytes:
        """A PKCS#10 request for this key, e.g. ``subject="CN=trader-1,O=Desk"``."""
        try:
            name = x509.Name.from_rfc4514_string(subject)
        except ValueError as exc:
            raise ApproverError(f"subject {subject!r} is not an RFC 4514 name: {exc}", 2) \
                from None
        if len(name) == 0:
            raise ApproverError("the certificate subject must not be empty", 2)
        algorithm = None if isinstance(self.private, ed25519.Ed25519PrivateKey) \
            else hashes.SHA256()
        csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(
            self.private, algorithm)  # type: ignore[arg-type]
        return csr.public_bytes(serialization.Encoding.PEM)


def _checked(private: Any) -> ApproverKey:
    """Refuse keys the HSM would refuse (weak RSA, other curves) at the client already."""
    if not isinstance(private, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey,
                                ed25519.Ed25519PrivateKey)):
        raise ApproverError(f"unsupported key type {type(private).__name__}", 2)
    try:
        credential_from_public_key(private.public_key())
    except HsmError as exc:
        raise ApproverError(f"the HSM would not accept this key: {exc.reason}", 2) from None
    return ApproverKey(private)


def check_passphrase(passphrase: str) -> bytes:
    if len(passphrase) < MIN_PASSPHRASE:
        raise ApproverError(f"passphrase too short: at least {MIN_PASSPHRASE} characters", 2)
    return passphrase.encode()


def save_key(path: Path, key: ApproverKey, passphrase: str) -> None:
    """Write the key encrypted, readable by its owner only; never over an existing file."""
    pem = key.private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(check_passphrase(passphrase)))
    try:  # a fresh home has no ~/.custody yet: made private, like the key
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ApproverError(f"{path} exists; refusing to overwrite an approval key", 2) \
            from None
    except OSError as exc:
        raise ApproverError(f"cannot create {path}: {exc.strerror}", 2) from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def load_key(path: Path, passphrase: str) -> ApproverKey:
    """Decrypt the key file; wrong passphrase and damaged file are told apart."""
    try:
        if path.stat().st_size > MAX_KEY_FILE:
            raise ApproverError(f"{path} is too large to be an approval key file", 2)
        data = path.read_bytes()
    except OSError as exc:
        raise ApproverError(f"cannot read key file {path}: {exc.strerror}", 2) from None
    if b"-----BEGIN ENCRYPTED PRIVATE KEY-----" not in data:
        raise ApproverError(f"{path} is not an encrypted PKCS#8 key file "
                            "(made by `custody approver init`)", 2)
    try:
        private = serialization.load_pem_private_key(data, passphrase.encode())
    except ValueError as exc:
        if "password" in str(exc).lower() or "decrypt" in str(exc).lower():
            raise ApproverError("wrong passphrase for the approval key", 2) from None
        raise ApproverError(f"{path} is damaged: {exc}", 2) from None
    except (TypeError, UnsupportedAlgorithm) as exc:
        raise ApproverError(f"{path} is not a usable key file: {exc}", 2) from None
    return _checked(private)


# -- the pinned HSM identity ------------------------------------------------------------


def pin_path(key_file: Path) -> Path:
    return key_file.with_name(key_file.name + PIN_SUFFIX)


def hsm_fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def parse_hsm_key(b64: str) -> bytes:
    """An HSM identity key as base64 SPKI; must be a P-256 public key (challenge.py)."""
    try:
        der = base64.b64decode(b64, validate=True)
        public = serialization.load_der_public_key(der)
    except (binascii.Error, ValueError, UnsupportedAlgorithm):
        raise ApproverError("the HSM identity key is not a base64 DER public key") from None
    if not (isinstance(public, ec.EllipticCurvePublicKey)
            and isinstance(public.curve, ec.SECP256R1)):
        raise ApproverError("the HSM identity key must be a P-256 public key")
    return der


def save_pin(key_file: Path, hsm_der: bytes, server: str) -> Path:
    path = pin_path(key_file)
    doc = {"hsmIdentityPublicKey": base64.b64encode(hsm_der).decode(),
           "fingerprint": hsm_fingerprint(hsm_der), "pinnedFrom": server}
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(path)
    except OSError as exc:
        raise ApproverError(f"cannot write {path}: {exc.strerror}", 2) from None
    return path


def load_pin(key_file: Path) -> bytes | None:
    """The pinned HSM key (DER), or None if nothing is pinned yet."""
    path = pin_path(key_file)
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
        der = parse_hsm_key(doc["hsmIdentityPublicKey"])
    except (OSError, ValueError, KeyError, TypeError, ApproverError):
        raise ApproverError(f"{path} is damaged; pin the HSM key again", 2) from None
    if doc.get("fingerprint") != hsm_fingerprint(der):
        raise ApproverError(f"{path} is inconsistent; pin the HSM key again", 2)
    return der
