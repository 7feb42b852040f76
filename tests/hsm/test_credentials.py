"""Unit tests for hsm_emulator.credentials: parsing, identity, verification, timestamps."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import importlib.resources
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsm_emulator.credentials import (
    MAX_CREDENTIAL_CHARS,
    Credential,
    CredentialKind,
    b64decode_strict,
    credential_from_public_key,
    parse_credential,
    verify,
    verify_timestamp,
)
from hsm_emulator.errors import ApprovalRefused, CredentialInvalid, HsmError, InvalidInput

VECTORS = Path(__file__).parents[1] / "vectors"
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
NOT_AFTER = dt.datetime(2031, 1, 1, tzinfo=dt.UTC)


# --------------------------------------------------------------------------- fixtures

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@pytest.fixture(scope="module")
def keys() -> dict[CredentialKind, PrivateKey]:
    """One private key per supported kind, generated once (RSA keygen is the slow part)."""
    return {
        CredentialKind.RSA: rsa.generate_private_key(65537, 2048),
        CredentialKind.P256: ec.generate_private_key(ec.SECP256R1()),
        CredentialKind.SECP256K1: ec.generate_private_key(ec.SECP256K1()),
        CredentialKind.ED25519: ed25519.Ed25519PrivateKey.generate(),
    }


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def spki(key: Any) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def self_signed(key: Any) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "approver")])
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(NOT_AFTER)
        .sign(key, algorithm)
    )


def cert_b64(key: Any) -> str:
    return b64(self_signed(key).public_bytes(serialization.Encoding.DER))


def sign(key: Any, message: bytes, digest: hashes.HashAlgorithm | None = None) -> bytes:
    """Sign the way the default approver client does: PKCS#1 v1.5 / DER ECDSA / EdDSA."""
    digest = digest or hashes.SHA256()
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(message, padding.PKCS1v15(), digest)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(message, ec.ECDSA(digest))
    return key.sign(message)


def to_p1363(der_sig: bytes) -> bytes:
    r, s = decode_dss_signature(der_sig)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


ALL_KINDS = list(CredentialKind)


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_certificate_and_public_key_are_the_same_approver(kind, keys):
    key = keys[kind]
    from_cert = parse_credential("certificate", cert_b64(key))
    from_spki = parse_credential("public_key", b64(spki(key)))
    assert from_cert == from_spki
    assert from_cert.fingerprint == from_spki.fingerprint
    assert from_cert.kind is kind
    assert from_cert.public_key_b64 == b64(spki(key))
    assert from_cert.certificate_not_after == NOT_AFTER
    assert from_spki.certificate_not_after is None
    assert hash(from_cert) == hash(from_spki)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_round_trip_through_public_key_b64(kind, keys):
    cred = credential_from_public_key(keys[kind].public_key())
    assert parse_credential("public_key", cred.public_key_b64) == cred


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_pem_and_wrapped_base64_are_tolerated(kind, keys):
    key = keys[kind]
    cert = self_signed(key)
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    spki_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    wrapped = "\n".join(textwrap.wrap(cert_b64(key), 64)) + "\r\n"
    expected = credential_from_public_key(key.public_key())
    assert parse_credential("certificate", cert_pem) == expected
    assert parse_credential("public_key", spki_pem.decode()) == expected
    assert parse_credential("certificate", wrapped) == expected


@pytest.mark.parametrize(
    "raw_hex",
    [
        "01" + "00" * 31,  # identity: universal forgery (R = identity, S = 0)
        "00" * 32,  # order 4
        "ec" + "ff" * 30 + "7f",  # order 2
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
    ],
)
def test_small_order_ed25519_keys_are_refused(raw_hex):
    """A small-order approver key would let anyone forge that approver's signature."""
    pk = ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(raw_hex))
    with pytest.raises(CredentialInvalid, match="prime order"):
        credential_from_public_key(pk)


def test_even_rsa_modulus_is_refused():
    pk = rsa.RSAPublicNumbers(65537, (1 << 2047) + 2).public_key()
    with pytest.raises(CredentialInvalid, match="even"):
        credential_from_public_key(pk)


def test_pem_label_must_match_kind(keys):
    pem = self_signed(keys[CredentialKind.P256]).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CredentialInvalid, match="PEM label"):
        parse_credential("public_key", pem.decode())


def test_compressed_and_uncompressed_points_are_one_approver(keys):
    """The SPKI is canonicalised, so a compressed-point encoding cannot mint a new identity."""
    pub = keys[CredentialKind.P256].public_key()
    point = pub.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    header = bytes.fromhex("3039301306072a8648ce3d020106082a8648ce3d030107032200")
    compressed = parse_credential("public_key", b64(header + point))
    assert compressed == credential_from_public_key(pub)


@pytest.mark.parametrize(
    ("public_key", "reason"),
    [
        (lambda: rsa.generate_private_key(65537, 1024).public_key(), "1024 bits"),
        (lambda: rsa.RSAPublicNumbers(65537, (1 << 2046) + 1).public_key(), "2047 bits"),
        (lambda: rsa.RSAPublicNumbers(65537, (1 << 8192) + 1).public_key(), "8193 bits"),
        (lambda: ec.generate_private_key(ec.SECP384R1()).public_key(), "secp384r1"),
        (lambda: ec.generate_private_key(ec.SECP521R1()).public_key(), "secp521r1"),
        (lambda: dsa.generate_private_key(1024).public_key(), "DSA"),
        (lambda: ed448.Ed448PrivateKey.generate().public_key(), "Ed448"),
        (lambda: x25519.X25519PrivateKey.generate().public_key(), "X25519"),
    ],
    ids=["rsa1024", "rsa2047", "rsa8193", "p384", "p521", "dsa", "ed448", "x25519"],
)
def test_unsupported_keys_are_refused(public_key, reason):
    pk = public_key()
    der = pk.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(CredentialInvalid, match=reason):
        parse_credential("public_key", b64(der))
    with pytest.raises(CredentialInvalid, match=reason):
        credential_from_public_key(pk)


def test_p384_certificate_is_refused():
    key = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(CredentialInvalid, match="secp384r1"):
        parse_credential("certificate", cert_b64(key))


def _garbage_inputs(der: bytes) -> dict[str, tuple[str, str]]:
    return {
        "unknown-kind": ("x509", b64(der)),
        "empty": ("public_key", ""),
        "whitespace": ("public_key", " \n\t"),
        "not-base64": ("public_key", "not base64!"),
        "urlsafe-alphabet": ("public_key", b64(der).replace("+", "-").replace("/", "_") + "-_"),
        "missing-padding": ("public_key", b64(der + b"\x00").rstrip("=")),
        "non-canonical-bits": ("public_key", "AB=="),
        "truncated": ("public_key", b64(der[:-1])),
        "trailing-bytes": ("public_key", b64(der + b"\x00")),
        "cert-as-key": ("public_key", b64(b"\x30\x03\x02\x01\x01")),
        "key-as-cert": ("certificate", b64(der)),
        "huge": ("public_key", "A" * (MAX_CREDENTIAL_CHARS + 4)),
        "pem-garbage-after": (
            "public_key",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----x",
        ),
    }


@pytest.mark.parametrize("case", list(_garbage_inputs(b"").keys()))
def test_garbage_is_refused(case, keys):
    der = spki(keys[CredentialKind.P256])
    kind, value = _garbage_inputs(der)[case]
    with pytest.raises(CredentialInvalid):
        parse_credential(kind, value)


def test_certificate_with_trailing_bytes_is_refused(keys):
    der = self_signed(keys[CredentialKind.ED25519]).public_bytes(serialization.Encoding.DER)
    with pytest.raises(CredentialInvalid):
        parse_credential("certificate", b64(der + b"\x00"))
    with pytest.raises(CredentialInvalid):
        parse_credential("certificate", b64(der[:-3]))


def test_non_string_arguments_are_refused():
    with pytest.raises(CredentialInvalid):
        parse_credential("public_key", b"MCowBQYDK2VwAyEA")  # type: ignore[arg-type]
    for kind in (None, ["public_key"], b"public_key"):
        with pytest.raises(CredentialInvalid):
            parse_credential(kind, "MCowBQYDK2VwAyEA")  # type: ignore[arg-type]


def test_direct_construction_is_validated(keys):
    der = spki(keys[CredentialKind.P256])
    with pytest.raises(CredentialInvalid, match="not SECP256K1"):
        Credential(CredentialKind.SECP256K1, der)
    with pytest.raises(CredentialInvalid):
        Credential("P256", der)  # type: ignore[arg-type]
    with pytest.raises(CredentialInvalid):
        Credential(CredentialKind.P256, der + b"\x00")
    assert Credential(CredentialKind.P256, der).kind is CredentialKind.P256


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["certificate", "public_key", "other"]), value=st.text(max_size=300))
def test_fuzz_text_only_raises_credential_invalid(kind, value):
    with pytest.raises(CredentialInvalid):
        parse_credential(kind, value)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["certificate", "public_key"]), raw=st.binary(max_size=600))
def test_fuzz_bytes_only_raise_credential_invalid(kind, raw):
    with contextlib.suppress(CredentialInvalid):
        parse_credential(kind, b64(raw))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_fuzz_mutated_certificates(data):
    """Flip or cut bytes of a real certificate: either a credential or CredentialInvalid."""
    der = bytearray(base64.b64decode(_TUTORIAL["policy_approval"]["value"]))
    position = data.draw(st.integers(0, len(der) - 1))
    der[position] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(1, len(der)))
    try:
        cred = parse_credential("certificate", b64(bytes(der[:cut])))
    except CredentialInvalid:
        return
    assert cred.kind in CredentialKind


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
@pytest.mark.parametrize(
    ("folder", "kind"), [("x509", "certificate"), ("asymmetric", "public_key")]
)
def test_cryptography_vectors_corpus_only_raises_credential_invalid(folder, kind):
    """Hundreds of odd real-world certificates/keys (cryptography_vectors): parse or refuse."""
    root = importlib.resources.files("cryptography_vectors") / folder
    parsed = refused = 0
    for path in _walk(root):
        data = path.read_bytes()
        if len(data) > MAX_CREDENTIAL_CHARS // 2:
            continue
        pem = data.lstrip().startswith(b"-----")
        value = data.decode("latin-1") if pem else b64(data)
        try:
            parse_credential(kind, value)
            parsed += 1
        except CredentialInvalid:
            refused += 1
    assert parsed >= 5
    assert refused >= 100


def _walk(node: Any) -> list[Any]:
    if node.is_file():
        return [node]
    return [leaf for child in node.iterdir() for leaf in _walk(child)]


# --------------------------------------------------------------------------- verify


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("digest", ["SHA-256", "SHA-384", "SHA-512"])
def test_sign_verify_round_trip(kind, digest, keys):
    key = keys[kind]
    cred = credential_from_public_key(key.public_key())
    algorithm = {"SHA-256": hashes.SHA256(), "SHA-384": hashes.SHA384(), "SHA-512": hashes.SHA512()}
    sig = sign(key, b"approve", algorithm[digest])
    assert verify(cred, b"approve", sig, digest)
    assert not verify(cred, b"approvE", sig, digest)
    assert not verify(cred, b"approve", sig[:-1] + bytes([sig[-1] ^ 1]), digest)
    assert not verify(cred, b"approve", b"", digest)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_other_approvers_signature_fails(kind, keys):
    others = [k for k in ALL_KINDS if k is not kind]
    cred = credential_from_public_key(keys[kind].public_key())
    for other in others:
        assert not verify(cred, b"m", sign(keys[other], b"m"))


@pytest.mark.parametrize(
    "salt", [padding.PSS.DIGEST_LENGTH, padding.PSS.MAX_LENGTH, 0], ids=["hlen", "max", "zero"]
)
def test_rsa_pss_accepted(salt, keys):
    key = keys[CredentialKind.RSA]
    cred = credential_from_public_key(key.public_key())
    sig = key.sign(b"m", padding.PSS(padding.MGF1(hashes.SHA256()), salt), hashes.SHA256())
    assert verify(cred, b"m", sig)
    assert verify(cred, b"m", sig, rsa_padding="pss")
    assert not verify(cred, b"m", sig, rsa_padding="pkcs1v15")


def test_rsa_pss_with_mismatched_mgf_hash_fails(keys):
    key = keys[CredentialKind.RSA]
    cred = credential_from_public_key(key.public_key())
    sig = key.sign(b"m", padding.PSS(padding.MGF1(hashes.SHA1()), 32), hashes.SHA256())
    assert not verify(cred, b"m", sig)


def test_rsa_pkcs1_narrowing(keys):
    key = keys[CredentialKind.RSA]
    cred = credential_from_public_key(key.public_key())
    sig = sign(key, b"m")
    assert verify(cred, b"m", sig, rsa_padding="pkcs1v15")
    assert not verify(cred, b"m", sig, rsa_padding="pss")


@pytest.mark.parametrize("kind", [CredentialKind.P256, CredentialKind.SECP256K1])
def test_ecdsa_der_and_p1363(kind, keys):
    key = keys[kind]
    cred = credential_from_public_key(key.public_key())
    der = sign(key, b"m")
    raw = to_p1363(der)
    assert verify(cred, b"m", der)
    assert verify(cred, b"m", raw)
    assert verify(cred, b"m", der, encoding="der")
    assert verify(cred, b"m", raw, encoding="p1363")
    assert not verify(cred, b"m", raw, encoding="der")
    assert not verify(cred, b"m", der, encoding="p1363")
    assert not verify(cred, b"m", b"\x00" + raw)
    assert not verify(cred, b"m", raw[:-1])


@pytest.mark.parametrize(
    ("kind", "order"), [(CredentialKind.P256, P256_N), (CredentialKind.SECP256K1, K1_N)]
)
def test_ecdsa_range_and_high_s(kind, order, keys):
    """r, s must be in [1, n-1]; high-S (n - s) is accepted, as Wycheproof rates it valid."""
    key = keys[kind]
    cred = credential_from_public_key(key.public_key())
    r, s = decode_dss_signature(sign(key, b"m"))
    assert verify(cred, b"m", encode_dss_signature(r, order - s))
    for bad_r, bad_s in [(0, s), (r, 0), (r + order, s), (r, s + order), (-r, s), (r, -s)]:
        assert not verify(cred, b"m", _der_sig(_der_int(bad_r), _der_int(bad_s)))
    assert not verify(cred, b"m", (0).to_bytes(32, "big") + s.to_bytes(32, "big"))
    assert not verify(cred, b"m", r.to_bytes(32, "big") + order.to_bytes(32, "big"))


def test_ecdsa_non_canonical_der_is_refused(keys):
    key = keys[CredentialKind.P256]
    cred = credential_from_public_key(key.public_key())
    der = sign(key, b"m")
    r, s = decode_dss_signature(der)
    assert verify(cred, b"m", _der_sig(_der_int(r), _der_int(s)))
    # Same integers, BER but not DER: long-form length, superfluous leading zero.
    body = _der_int(r) + _der_int(s)
    assert not verify(cred, b"m", bytes([0x30, 0x81, len(body)]) + body)
    assert not verify(cred, b"m", _der_sig(_der_int(r, pad=True), _der_int(s)))
    assert not verify(cred, b"m", der + b"\x00")


def _der_int(value: int, pad: bool = False) -> bytes:
    raw = value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True)
    raw = b"\x00" + raw if pad else raw
    return bytes([0x02, len(raw)]) + raw


def _der_sig(r_enc: bytes, s_enc: bytes) -> bytes:
    return bytes([0x30, len(r_enc) + len(s_enc)]) + r_enc + s_enc


def test_ed25519_ignores_digest_but_checks_its_name(keys):
    key = keys[CredentialKind.ED25519]
    cred = credential_from_public_key(key.public_key())
    sig = key.sign(b"m")
    assert verify(cred, b"m", sig, "SHA-512")
    assert not verify(cred, b"m", sig[:63])
    with pytest.raises(InvalidInput):
        verify(cred, b"m", sig, "MD5")


def test_verify_argument_errors(keys):
    cred = credential_from_public_key(keys[CredentialKind.P256].public_key())
    for digest in ["SHA-1", "SHA3-256", "", "sha-256 "]:
        with pytest.raises(InvalidInput):
            verify(cred, b"m", b"s", digest)
    with pytest.raises(InvalidInput):
        verify(cred, b"m", b"s", encoding="base64")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        verify(cred, b"m", b"s", rsa_padding="oaep")  # type: ignore[arg-type]
    assert verify(cred, b"m", sign(keys[CredentialKind.P256], b"m"), "sha256")
    assert not verify(cred, "m", b"s")  # type: ignore[arg-type]


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(kind=st.sampled_from(ALL_KINDS), sig=st.binary(max_size=600), msg=st.binary(max_size=64))
def test_fuzz_verify_never_raises(kind, sig, msg, keys):
    cred = credential_from_public_key(keys[kind].public_key())
    assert verify(cred, msg, sig) is False


# --------------------------------------------------------------------------- timestamps

TS = "2023-10-30T17:30:24+00:00"
TS_EPOCH = dt.datetime(2023, 10, 30, 17, 30, 24, tzinfo=dt.UTC).timestamp()


@pytest.fixture(scope="module")
def p256(keys) -> tuple[ec.EllipticCurvePrivateKey, Credential]:
    key = keys[CredentialKind.P256]
    return key, credential_from_public_key(key.public_key())


def test_timestamp_accepted_within_skew(p256):
    key, cred = p256
    sig = b64(sign(key, TS.encode()))
    assert verify_timestamp(cred, TS, sig, now=TS_EPOCH + 299) == TS_EPOCH
    assert verify_timestamp(cred, TS, sig, now=TS_EPOCH - 299) == TS_EPOCH


@pytest.mark.parametrize(
    "text", ["2023-10-30T17:30:24Z", "2023-10-30T19:30:24+02:00", "2023-10-30T12:30:24.000-05:00"]
)
def test_timestamp_offsets(text, p256):
    key, cred = p256
    assert verify_timestamp(cred, text, b64(sign(key, text.encode())), now=TS_EPOCH) == TS_EPOCH


def test_timestamp_skew_refused(p256):
    key, cred = p256
    sig = b64(sign(key, TS.encode()))
    with pytest.raises(ApprovalRefused, match="skew"):
        verify_timestamp(cred, TS, sig, now=TS_EPOCH + 301)
    with pytest.raises(ApprovalRefused, match="skew"):
        verify_timestamp(cred, TS, sig, now=TS_EPOCH - 10, max_skew=5)


def test_timestamp_nan_clock_refused(p256):
    key, cred = p256
    sig = b64(sign(key, TS.encode()))
    with pytest.raises(ApprovalRefused, match="skew"):
        verify_timestamp(cred, TS, sig, now=float("nan"))
    with pytest.raises(ApprovalRefused, match="skew"):
        verify_timestamp(cred, TS, sig, now=TS_EPOCH, max_skew=float("nan"))


def test_timestamp_bad_signature_refused(p256, keys):
    key, cred = p256
    other = b64(sign(keys[CredentialKind.SECP256K1], TS.encode()))
    with pytest.raises(ApprovalRefused, match="does not verify"):
        verify_timestamp(cred, TS, other, now=TS_EPOCH)
    different_text = b64(sign(key, b"2023-10-30T17:30:24Z"))
    with pytest.raises(ApprovalRefused, match="does not verify"):
        verify_timestamp(cred, TS, different_text, now=TS_EPOCH)


@pytest.mark.parametrize(
    "text",
    [
        "2023-10-30T17:30:24",
        "2023-10-30",
        "yesterday",
        "",
        "2023-13-30T17:30:24Z",
        "x" * 100,
        "\uff12\uff10\uff12\uff13-10-30T17:30:24Z",  # fullwidth digits
        1698687024,
    ],
)
def test_timestamp_malformed_refused(text, p256):
    key, cred = p256
    sig = b64(sign(key, str(text).encode()))
    with pytest.raises(ApprovalRefused):
        verify_timestamp(cred, text, sig, now=TS_EPOCH)


@pytest.mark.parametrize("sig", ["***", "AAA", "", None])
def test_timestamp_signature_encoding_refused(sig, p256):
    _, cred = p256
    with pytest.raises(ApprovalRefused):
        verify_timestamp(cred, TS, sig, now=TS_EPOCH)


def test_timestamp_unknown_digest_refused(p256):
    key, cred = p256
    with pytest.raises(ApprovalRefused, match="digest"):
        verify_timestamp(cred, TS, b64(sign(key, TS.encode())), now=TS_EPOCH, digest="MD5")


# --------------------------------------------------------------------------- base64


def test_b64decode_strict():
    assert b64decode_strict("AAEC", "x") == b"\x00\x01\x02"
    assert b64decode_strict("", "x") == b""
    for bad in ["AAE", "AA E C", "AAEC\n", "AB==", "AA===", "AA-_", "=AAA"]:
        with pytest.raises(InvalidInput, match="sig"):
            b64decode_strict(bad, "sig")
    with pytest.raises(InvalidInput):
        b64decode_strict(b"AAEC", "sig")  # type: ignore[arg-type]


def test_errors_are_hsm_errors():
    for error in (CredentialInvalid, ApprovalRefused, InvalidInput):
        assert issubclass(error, HsmError)


# --------------------------------------------------------------------------- TSB tutorial

_TUTORIAL: dict[str, Any] = json.loads((VECTORS / "tsb_tutorial.json").read_text())


def test_tutorial_certificate_matches_approved_by():
    assert _TUTORIAL["source"] == "Securosys TSB tutorial (shared/reference/seeds/003)"
    entry = _TUTORIAL["policy_approval"]
    cred = parse_credential(entry["type"], entry["value"])
    assert cred.kind is CredentialKind.RSA
    assert serialization.load_der_public_key(cred.spki_der).key_size == 2048  # type: ignore[union-attr]
    assert cred.public_key_b64 == _TUTORIAL["approved_by"]
    assert cred == parse_credential("public_key", _TUTORIAL["approved_by"])
    # Dates are informative only: the tutorial's certificate expired in 2021.
    assert cred.certificate_not_after == dt.datetime(2021, 5, 11, 14, 29, 7, tzinfo=dt.UTC)


def test_tutorial_approval_signature_verifies():
    """The tutorial's /v1/approval signature is PKCS#1 v1.5 over the decoded challenge."""
    approval = _TUTORIAL["approval"]
    cred = parse_credential("certificate", approval["approverCertificate"])
    challenge = b64decode_strict(approval["approvalToBeSigned"], "approvalToBeSigned")
    signature = b64decode_strict(approval["signature"], "signature")
    digest = approval["approvalDigestAlgorithm"]
    assert verify(cred, challenge, signature, digest)
    assert verify(cred, challenge, signature, digest, rsa_padding="pkcs1v15")
    assert not verify(cred, challenge + b"\x00", signature, digest)
    # The challenge was signed as raw bytes, not as its base64 text.
    assert not verify(cred, approval["approvalToBeSigned"].encode(), signature, digest)


def test_tutorial_timestamp_signature_verifies_with_its_own_certificate():
    task = _TUTORIAL["filtered_sign_approval_task"]
    signer = parse_credential("certificate", task["approverCertificate"])
    ts = verify_timestamp(
        signer,
        task["timestamp"],
        task["timestampSignature"],
        now=TS_EPOCH + 10,
        digest=task["timestampDigestAlgorithm"],
    )
    assert ts == TS_EPOCH
    policy_approver = parse_credential("certificate", _TUTORIAL["policy_approval"]["value"])
    assert policy_approver != signer
    with pytest.raises(ApprovalRefused, match="does not verify"):
        verify_timestamp(policy_approver, task["timestamp"], task["timestampSignature"], TS_EPOCH)
