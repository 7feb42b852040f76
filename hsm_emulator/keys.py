"""Key material inside the HSM: generation from the HSM's randomness, and signing.

Nothing in this module returns private key bytes to a caller outside the HSM; the
store seals :meth:`KeyMaterial.to_sealed` and only :meth:`Hsm.export_private_key_unsafe`
(gated by the key's ``exportable`` attribute AND the partition setting) hands them out.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import coincurve
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from .derivation import Curve, ExtendedKey, derive, fingerprint, master_from_seed, public_key
from .errors import AttributeDenied, DerivationError, InvalidInput
from .model import KeyAlgorithm, SignScheme

#: secp256k1 group order, for the BIP341 tweak.
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
RSA_SIZES = range(2048, 4097)
#: Derived keys kept per key (see :meth:`KeyMaterial.derive`).
MAX_DERIVED = 1024
#: ... and across every key of the process (see :class:`_DerivedBudget`).
MAX_DERIVED_TOTAL = 16_384

_SCHEMES: dict[KeyAlgorithm, frozenset[SignScheme]] = {
    KeyAlgorithm.SECP256K1: frozenset(
        {SignScheme.ECDSA_SECP256K1_DIGEST, SignScheme.SCHNORR_BIP340_DIGEST,
         SignScheme.SHA256_WITH_ECDSA}
    ),
    KeyAlgorithm.ED25519: frozenset({SignScheme.ED25519_MESSAGE, SignScheme.EDDSA}),
    KeyAlgorithm.RSA: frozenset({SignScheme.SHA256_WITH_RSA, SignScheme.SHA256_WITH_RSA_PSS}),
    KeyAlgorithm.P256: frozenset({SignScheme.SHA256_WITH_ECDSA}),
}

_CURVES = {KeyAlgorithm.SECP256K1: Curve.SECP256K1, KeyAlgorithm.ED25519: Curve.ED25519}


def tagged_hash(tag: str, data: bytes) -> bytes:
    """BIP340 tagged hash: https://github.com/bitcoin/bips/blob/master/bip-0340.mediawiki"""
    t = hashlib.sha256(tag.encode()).digest()
    return hashlib.sha256(t + t + data).digest()


def taproot_tweak_secret(secret: bytes, merkle_root: bytes = b"") -> bytes:
    """BIP341 ``taproot_tweak_seckey``: the key that signs a key-path spend.

    https://github.com/bitcoin/bips/blob/master/bip-0341.mediawiki#constructing-and-spending-taproot-outputs
    """
    sk = int.from_bytes(secret, "big")
    point = coincurve.PrivateKey(secret).public_key.format(compressed=True)
    if point[0] == 3:  # odd y: BIP340 uses the even-y twin
        sk = SECP256K1_N - sk
    t = int.from_bytes(tagged_hash("TapTweak", point[1:] + merkle_root), "big")
    if t >= SECP256K1_N:
        raise DerivationError("taproot tweak out of range")
    tweaked = (sk + t) % SECP256K1_N
    if tweaked == 0:
        raise DerivationError("taproot tweak gives the zero key")
    return tweaked.to_bytes(32, "big")


class _DerivedBudget:
    """Derived keys kept across all keys: at most :data:`MAX_DERIVED_TOTAL`. Per key the
    bound is :data:`MAX_DERIVED`, but one HSM holds as many keys as its callers make
    (10,000 Bitcoin wallets scanning 40 paths each would keep 400,000 private keys), so
    past the total the key that kept a child longest ago has its kept children dropped
    (approximately least recently used: a hit is not counted, to keep hits free). A key
    object that is dropped (a key written anew, a state cache cleared) takes its
    children with it, and the budget forgets them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: id of a key object -> (a weak reference to it, its children when last counted)
        self._owners: OrderedDict[int, tuple[weakref.ref[KeyMaterial], int]] = OrderedDict()
        self.total = 0

    def kept(self, owner: KeyMaterial, children: dict[str, KeyMaterial]) -> None:
        with self._lock:
            key = id(owner)
            held = self._owners.pop(key, None)
            if held is not None and held[0]() is owner:
                ref, before = held
            else:
                if held is not None:  # a dead key object's entry under a reused id
                    self.total -= held[1]
                ref, before = weakref.ref(owner, functools.partial(self._gone, key)), 0
            self._owners[key] = (ref, len(children))
            self.total += len(children) - before
            while self.total > MAX_DERIVED_TOTAL and len(self._owners) > 1:
                _, (old_ref, counted) = self._owners.popitem(last=False)
                self.total -= counted
                old = old_ref()
                if old is not None:
                    old.__dict__.pop("_derived", None)  # a fresh, empty cache on next use

    def _gone(self, key: int, ref: weakref.ref[KeyMaterial]) -> None:
        with self._lock:
            held = self._owners.get(key)
            if held is not None and held[0] is ref:
                del self._owners[key]
                self.total -= held[1]


_BUDGET = _DerivedBudget()


@dataclass(frozen=True, repr=False)
class KeyMaterial:
    """A private key as the HSM holds it. ``repr`` never shows secrets."""

    algorithm: KeyAlgorithm
    secret: bytes  #: 32-byte scalar/seed for HD curves, PKCS#8 DER for RSA and P-256
    chain_code: bytes = b""  #: HD keys only
    depth: int = 0
    parent_fingerprint: bytes = b"\0\0\0\0"
    index: int = 0

    def __repr__(self) -> str:
        return f"KeyMaterial({self.algorithm.value}, public={self.public_key.hex()[:16]}...)"

    # -- construction -----------------------------------------------------------------

    @classmethod
    def generate(cls, algorithm: KeyAlgorithm, key_size: int | None = None) -> KeyMaterial:
        if algorithm in _CURVES:
            # An HD root: 64 bytes of HSM randomness through BIP32/SLIP-10's master step.
            return cls.from_extended(algorithm, master_from_seed(_CURVES[algorithm],
                                                                 secrets.token_bytes(64)))
        if algorithm is KeyAlgorithm.RSA:
            size = key_size or 2048
            if size not in RSA_SIZES or size % 256:
                raise InvalidInput("keySize: RSA keys are 2048 to 4096 bits, in steps of 256")
            priv: Any = rsa.generate_private_key(public_exponent=65537, key_size=size)
        else:
            priv = ec.generate_private_key(ec.SECP256R1())
        der = priv.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cls(algorithm, der)

    @classmethod
    def from_extended(cls, algorithm: KeyAlgorithm, ext: ExtendedKey) -> KeyMaterial:
        return cls(algorithm, ext.private_key, ext.chain_code, ext.depth,
                   ext.parent_fingerprint, ext.index)

    @property
    def hd(self) -> bool:
        return self.algorithm in _CURVES

    def extended(self) -> ExtendedKey:
        if not self.hd:
            raise AttributeDenied(f"{self.algorithm.value} keys are not hierarchical")
        return ExtendedKey(_CURVES[self.algorithm], self.secret, self.chain_code, self.depth,
                           self.parent_fingerprint, self.index)

    def derive(self, path: str) -> KeyMaterial:
        """The key at ``path`` below this one (itself for ``""``).

        Kept per path on this object (at most :data:`MAX_DERIVED`, the oldest dropped):
        a Bitcoin wallet's inputs and address scans ask for the same few paths again and
        again, and each derivation is several curve multiplications. The object is
        immutable and so is what it derives, so the kept key cannot go stale: a key
        written anew is read back as a new object (``KeyRecords`` drops its states on
        every write), with nothing kept. A path that does not derive raises, and is not
        kept."""
        if not path:
            return self
        children = self._derived
        child = children.get(path)
        if child is None:
            child = KeyMaterial.from_extended(self.algorithm, derive(self.extended(), path))
            if len(children) >= MAX_DERIVED:
                del children[next(iter(children))]
            children[path] = child
            _BUDGET.kept(self, children)
        return child

    @cached_property
    def _derived(self) -> dict[str, KeyMaterial]:
        return {}

    # -- public parts -----------------------------------------------------------------

    @cached_property
    def public_key(self) -> bytes:
        """33-byte compressed (secp256k1), 32-byte raw (Ed25519), SPKI DER (RSA, P-256)."""
        if self.hd:
            return public_key(self.extended())
        spki: bytes = self._loaded.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return spki

    def public_key_spki(self) -> bytes:
        """SubjectPublicKeyInfo DER for every algorithm (what TSB returns as publicKey)."""
        if self.algorithm is KeyAlgorithm.ED25519:
            return ed25519.Ed25519PublicKey.from_public_bytes(self.public_key).public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        if self.algorithm is KeyAlgorithm.SECP256K1:
            return ec.EllipticCurvePublicKey.from_encoded_point(
                ec.SECP256K1(), self.public_key
            ).public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        return self.public_key

    @cached_property
    def _loaded(self) -> Any:
        return serialization.load_der_private_key(self.secret, password=None)

    # -- signing ----------------------------------------------------------------------

    def sign(self, scheme: SignScheme, data: bytes, tweak: bytes = b"") -> bytes:
        """Sign ``data`` under ``scheme``. Digest schemes take exactly 32 bytes."""
        if scheme not in _SCHEMES[self.algorithm]:
            raise InvalidInput(
                f"signature scheme {scheme.value} does not fit a {self.algorithm.value} key"
            )
        return _SIGNERS[scheme](self, data, tweak)

    @cached_property
    def _coincurve(self) -> coincurve.PrivateKey:
        return coincurve.PrivateKey(self.secret)

    @cached_property
    def _ed25519(self) -> ed25519.Ed25519PrivateKey:
        return ed25519.Ed25519PrivateKey.from_private_bytes(self.secret)

    # -- sealing ----------------------------------------------------------------------

    def to_sealed(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm.value,
            "secret": self.secret.hex(),
            "chainCode": self.chain_code.hex(),
            "depth": self.depth,
            "parentFingerprint": self.parent_fingerprint.hex(),
            "index": self.index,
        }

    @classmethod
    def from_sealed(cls, data: dict[str, Any]) -> KeyMaterial:
        return cls(
            KeyAlgorithm(data["algorithm"]),
            bytes.fromhex(data["secret"]),
            bytes.fromhex(data["chainCode"]),
            int(data["depth"]),
            bytes.fromhex(data["parentFingerprint"]),
            int(data["index"]),
        )


def _digest32(data: bytes) -> bytes:
    if len(data) != 32:
        raise InvalidInput("a digest scheme signs exactly 32 bytes")
    return data


def _sign_ecdsa_digest(key: KeyMaterial, data: bytes, tweak: bytes) -> bytes:
    # libsecp256k1 produces low-S signatures with RFC 6979 nonces: r||s||recovery id.
    return bytes(key._coincurve.sign_recoverable(_digest32(data), hasher=None))


def _sign_schnorr(key: KeyMaterial, data: bytes, tweak: bytes) -> bytes:
    tweaked = coincurve.PrivateKey(taproot_tweak_secret(key.secret, tweak))
    return bytes(tweaked.sign_schnorr(_digest32(data), secrets.token_bytes(32)))


def _sign_ed25519(key: KeyMaterial, data: bytes, tweak: bytes) -> bytes:
    return key._ed25519.sign(data)


def _sign_sha256_ecdsa(key: KeyMaterial, data: bytes, tweak: bytes) -> bytes:
    if key.algorithm is KeyAlgorithm.SECP256K1:
        return bytes(key._coincurve.sign(data))  # DER, SHA-256 inside
    signed: bytes = key._loaded.sign(data, ec.ECDSA(hashes.SHA256()))
    return signed


def _sign_rsa(key: KeyMaterial, data: bytes, tweak: bytes) -> bytes:
    signed: bytes = key._loaded.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return signed


def _sign_rsa_pss(key: KeyMaterial, data: bytes, tweak: bytes) -> bytes:
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    signed: bytes = key._loaded.sign(data, pss, hashes.SHA256())
    return signed


_SIGNERS = {
    SignScheme.ECDSA_SECP256K1_DIGEST: _sign_ecdsa_digest,
    SignScheme.SCHNORR_BIP340_DIGEST: _sign_schnorr,
    SignScheme.ED25519_MESSAGE: _sign_ed25519,
    SignScheme.EDDSA: _sign_ed25519,
    SignScheme.SHA256_WITH_ECDSA: _sign_sha256_ecdsa,
    SignScheme.SHA256_WITH_RSA: _sign_rsa,
    SignScheme.SHA256_WITH_RSA_PSS: _sign_rsa_pss,
}


class MaterialView:
    """A :class:`~hsm_emulator.model.KeyView` over key material: public parts only."""

    def __init__(self, material: KeyMaterial, may_derive: bool) -> None:
        self.__material = material
        self.__may_derive = may_derive

    @property
    def algorithm(self) -> KeyAlgorithm:
        return self.__material.algorithm

    @property
    def fingerprint(self) -> bytes:
        return fingerprint(self.__material.extended())

    def public_key(self, path: str = "") -> bytes:
        if path and not self.__may_derive:
            raise AttributeDenied("this key does not allow derivation")
        return self.__material.derive(path).public_key
