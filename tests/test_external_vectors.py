"""Published external vectors, run through fedrecord's own functions.

The vectors live in ``tests/data/external`` (copied unchanged; its README names
each source).  They check that our strict CBOR decoder, did:key encoding,
COSE_Sign1 layer, Ed25519 verification, X25519 and XChaCha20-Poly1305 agree
with other implementations, and that whatever we refuse is refused with one of
our own errors, never with an exception that would become a 500.

Sources: RFC 8949 Appendix A (cbor/test-vectors), w3c-ccg/did-method-key,
cose-wg/Examples (RFC 9052), C2SP/wycheproof (testvectors_v1).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nacl.bindings as sodium
import pytest

from fedrecord.core import cbor, cose, identity
from fedrecord.core.errors import (
    AuthenticationError,
    Code,
    FedrecordError,
    LocalProtocolError,
    RemoteProtocolError,
)
from fedrecord.core.identity import (
    SigningIdentity,
    multibase_x25519,
    public_key_from_did,
    verify_ed25519,
    x25519_shared_secret,
)
from fedrecord.core.sealed_box import SEAL_OVERHEAD, seal
from fedrecord.core.stream import aead_decrypt, aead_encrypt

DATA = Path(__file__).parent / "data" / "external"


def _load(relative: str) -> Any:
    return json.loads((DATA / relative).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------
# CBOR: RFC 8949 Appendix A
# --------------------------------------------------------------------------

APPENDIX_A: list[dict[str, Any]] = _load("cbor/appendix_a.json")


class _Refused(Exception):
    def __init__(self, code: Code) -> None:
        self.code = code


def _walk(data: bytes, pos: int) -> int:
    """Walk one item from ``pos`` and return where it ends; raise _Refused at the first forbidden feature.

    This is the test's own oracle of what the protocol's data model refuses
    (spec [CBOR-1] .. [CBOR-11]), read off the item's initial bytes in
    encoding order, so that each Appendix A item has exactly one expected
    outcome.  Integers beyond 64 bits are tags 2 and 3 in CBOR (RFC 8949
    section 3.4.3), hence forbidden-tag.
    """
    initial = data[pos]
    major, info = initial >> 5, initial & 0x1F
    pos += 1
    if info == 31:
        raise _Refused(Code.INDEFINITE_LENGTH if major in (2, 3, 4, 5) else Code.MALFORMED)
    if major == 7:
        # false, true, null belong to the data model; floats, undefined and simple values do not.
        if info in (20, 21, 22):
            return pos
        raise _Refused(Code.UNSUPPORTED_TYPE)
    if info < 24:
        argument = info
    else:
        size = 1 << (info - 24)
        argument = int.from_bytes(data[pos : pos + size], "big")
        pos += size
        if argument < (0, 24, 0x100, 0x10000, 0x100000000)[info - 23]:
            raise _Refused(Code.NON_CANONICAL)
    if major == 6:
        raise _Refused(Code.FORBIDDEN_TAG)
    if major in (0, 1):
        return pos
    if major in (2, 3):
        return pos + argument
    if major == 4:
        for _ in range(argument):
            pos = _walk(data, pos)
        return pos
    previous_key = b""
    for _ in range(argument):
        key_start = pos
        pos = _walk(data, key_start)
        if data[key_start] >> 5 != 3:
            raise _Refused(Code.INVALID_MAP_KEY)
        if data[key_start:pos] <= previous_key:
            raise _Refused(Code.NON_CANONICAL if data[key_start:pos] < previous_key else Code.DUPLICATE_KEY)
        previous_key = data[key_start:pos]
        pos = _walk(data, pos)
    return pos


def _expected_refusal(data: bytes) -> Code | None:
    try:
        end = _walk(data, 0)
    except _Refused as refusal:
        return refusal.code
    assert end == len(data), "an Appendix A item is one complete item"
    return None


def _expected_value(case: dict[str, Any]) -> Any:
    if "decoded" in case:
        return case["decoded"]
    # JSON cannot hold byte strings: those cases only give diagnostic notation h'..'.
    diagnostic = case["diagnostic"]
    assert diagnostic.startswith("h'") and diagnostic.endswith("'"), f"no value to compare for {case}"
    return bytes.fromhex(diagnostic[2:-1])


def _same(actual: Any, expected: Any) -> bool:
    """Equality that also compares types, so that False is not 0 and a list is not a map."""
    if isinstance(expected, list):
        return (
            isinstance(actual, (list, tuple))
            and len(actual) == len(expected)
            and all(_same(a, e) for a, e in zip(actual, expected, strict=True))
        )
    if isinstance(expected, dict):
        return (
            isinstance(actual, Mapping)
            and actual.keys() == expected.keys()
            and all(_same(actual[key], expected[key]) for key in expected)
        )
    return type(actual) is type(expected) and actual == expected


def test_appendix_a_oracle_covers_every_kind() -> None:
    # Guards the oracle itself: Appendix A has accepted items and every kind of refusal we expect.
    outcomes = {_expected_refusal(bytes.fromhex(case["hex"])) for case in APPENDIX_A}
    assert outcomes == {
        None,
        Code.UNSUPPORTED_TYPE,
        Code.FORBIDDEN_TAG,
        Code.INDEFINITE_LENGTH,
        Code.INVALID_MAP_KEY,
    }


@pytest.mark.parametrize("case", APPENDIX_A, ids=[case["hex"] for case in APPENDIX_A])
def test_cbor_appendix_a(case: dict[str, Any]) -> None:
    """RFC 8949 Appendix A through the strict decoder (spec [CBOR-1] .. [CBOR-11])."""
    data = bytes.fromhex(case["hex"])
    expected_code = _expected_refusal(data)
    if expected_code is None:
        value = cbor.decode(data)
        assert _same(value, _expected_value(case))
        # Only deterministic encodings are accepted, so every accepted item re-encodes to itself
        # (and Appendix A marks each of them as round-tripping).
        assert case["roundtrip"] is True
        assert cbor.encode(value) == data
    else:
        with pytest.raises(RemoteProtocolError) as refused:
            cbor.decode(data)
        assert refused.value.code is expected_code


@pytest.mark.parametrize(
    "case",
    [
        case
        for case in APPENDIX_A
        if type(case.get("decoded")) in (float, int) and _expected_refusal(bytes.fromhex(case["hex"]))
    ],
    ids=lambda case: case["hex"],
)
def test_cbor_encoder_refuses_what_the_decoder_refuses(case: dict[str, Any]) -> None:
    # Floats and integers beyond 64 bits (hex c2.., c3.., f9.., fa.., fb..) cannot be written either.
    with pytest.raises(LocalProtocolError) as refused:
        cbor.encode(case["decoded"])
    assert refused.value.code is Code.UNSUPPORTED_TYPE


# --------------------------------------------------------------------------
# did:key (w3c-ccg/did-method-key test vectors)
# --------------------------------------------------------------------------

DID_KEYS: dict[str, dict[str, Any]] = _load("didkey/ed25519-x25519.json")

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _b58decode(text: str) -> bytes:
    """Plain base58btc decoding, written here so the expected keys do not come from the product."""
    number = 0
    for char in text:
        number = number * 58 + _B58_ALPHABET.index(char)
    body = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return b"\0" * (len(text) - len(text.lstrip("1"))) + body


def _published_key(method: dict[str, Any]) -> bytes:
    """The raw key of a verification method, in either form the file uses (2018/2019 suites or JWK)."""
    if "publicKeyBase58" in method:
        return _b58decode(method["publicKeyBase58"])
    encoded = method["publicKeyJwk"]["x"]
    return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))


@pytest.mark.parametrize("did", list(DID_KEYS), ids=list(DID_KEYS))
def test_did_key(did: str) -> None:
    entry = DID_KEYS[did]
    identity = SigningIdentity.from_seed(bytes.fromhex(entry["seed"]))
    ed25519_key = _published_key(entry["verificationKeyPair"])

    assert identity.did == did
    assert identity.public_key == ed25519_key
    assert public_key_from_did(did) == ed25519_key

    # The did:key method derives the key-agreement key from the signing key.  fedrecord never
    # does (spec [ID-5]); the test derives it only to check our multibase X25519 rendering.
    x25519_key = sodium.crypto_sign_ed25519_pk_to_curve25519(ed25519_key)
    assert x25519_key == _published_key(entry["keyAgreementKeyPair"])
    (key_agreement,) = entry["didDocument"]["keyAgreement"]
    assert multibase_x25519(x25519_key) == key_agreement.split("#", 1)[1]


# --------------------------------------------------------------------------
# COSE_Sign1 (cose-wg/Examples, RFC 9052)
# --------------------------------------------------------------------------


def test_cose_eddsa_sig_01_reproduced_byte_for_byte() -> None:
    vector = _load("cose/eddsa-sig-01.json")
    key = vector["input"]["sign0"]["key"]
    payload = vector["input"]["plaintext"].encode()
    expected_output = bytes.fromhex(vector["output"]["cbor"])
    identity = SigningIdentity.from_seed(bytes.fromhex(key["d_hex"]))
    assert identity.public_key == bytes.fromhex(key["x_hex"])

    # protected {alg: EdDSA, content type: 0}, unprotected {kid: "11"}; Ed25519 is deterministic.
    protected = {cose.HEADER_ALG: cose.ALG_EDDSA, cose.HEADER_CONTENT_TYPE: 0}
    encoded = cose.sign1(identity, protected=protected, payload=payload, unprotected={cose.HEADER_KID: b"11"})
    assert encoded == expected_output

    protected_bytes = cbor.encode(protected, int_keys=True)
    assert protected_bytes == bytes.fromhex("A201270300")
    assert cose.sig_structure(protected_bytes, payload) == bytes.fromhex(
        vector["intermediates"]["ToBeSign_hex"]
    )

    message = cose.verify_with_cose_key(expected_output, key)
    assert message.payload == payload
    assert message.protected == protected
    assert dict(message.unprotected) == {cose.HEADER_KID: b"11"}
    assert message.to_be_signed == bytes.fromhex(vector["intermediates"]["ToBeSign_hex"])


def test_cose_eddsa_sig_02_ed448_is_refused() -> None:
    vector = _load("cose/eddsa-sig-02.json")
    # Our Sig_structure builder still agrees with the published one...
    assert cose.sig_structure(
        bytes.fromhex("A10127"), vector["input"]["plaintext"].encode()
    ) == bytes.fromhex(vector["intermediates"]["ToBeSign_hex"])
    # ...but an Ed448 key is refused before any signature arithmetic.
    with pytest.raises(RemoteProtocolError) as refused:
        cose.verify_with_cose_key(bytes.fromhex(vector["output"]["cbor"]), vector["input"]["sign0"]["key"])
    assert refused.value.code is Code.UNSUPPORTED_ALGORITHM


SIGN1_TESTS = sorted(path.stem for path in (DATA / "cose").glob("sign-*.json"))

# Every sign1-test is ES256, which we never accept: each is refused, at the first check it fails.
SIGN1_EXPECTED = {
    "sign-fail-01": Code.FORBIDDEN_TAG,  # tag 998 instead of 18
    "sign-pass-03": Code.BAD_HEADER,  # tag removed: RFC 9052 lets context decide, we require tag 18
}


def test_sign1_tests_present() -> None:
    assert SIGN1_TESTS == [
        "sign-fail-01",
        "sign-fail-02",
        "sign-fail-03",
        "sign-fail-04",
        "sign-fail-06",
        "sign-fail-07",
        "sign-pass-01",
        "sign-pass-02",
        "sign-pass-03",
    ]


@pytest.mark.parametrize("name", SIGN1_TESTS, ids=SIGN1_TESTS)
def test_cose_sign1_tests_refused(name: str) -> None:
    vector = _load(f"cose/{name}.json")
    data = bytes.fromhex(vector["output"]["cbor"])
    assert vector["input"]["sign0"]["alg"] == "ES256"
    # The mutations the examples mark "fail": true (wrong tag, changed signature, changed or
    # unknown alg, added or removed protected attribute) must be refused by us too; the "pass"
    # ones are refused as well, because ES256 is not EdDSA.
    if vector.get("fail"):
        assert name.startswith("sign-fail-")
    with pytest.raises(RemoteProtocolError) as refused:
        cose.parse_sign1(data)
    assert refused.value.code is SIGN1_EXPECTED.get(name, Code.UNSUPPORTED_ALGORITHM)


# --------------------------------------------------------------------------
# Wycheproof Ed25519
# --------------------------------------------------------------------------

ED25519 = _load("wycheproof/ed25519_test.json")
ED25519_CASES = [
    (group["publicKey"]["pk"], test) for group in ED25519["testGroups"] for test in group["tests"]
]


def _wycheproof_id(test: dict[str, Any]) -> str:
    return f"tc{test['tcId']}-{'-'.join(test['flags'])}"


def test_ed25519_vector_count() -> None:
    assert len(ED25519_CASES) == ED25519["numberOfTests"]


@pytest.mark.parametrize(
    ("public_key", "test"), ED25519_CASES, ids=[_wycheproof_id(t) for _, t in ED25519_CASES]
)
def test_wycheproof_ed25519(public_key: str, test: dict[str, Any]) -> None:
    key, message, signature = (bytes.fromhex(x) for x in (public_key, test["msg"], test["sig"]))
    if test["result"] == "valid":
        verify_ed25519(key, message, signature)
        return
    try:
        verify_ed25519(key, message, signature)
    except FedrecordError as error:
        assert isinstance(error, RemoteProtocolError)
        assert error.code in (Code.BAD_KEY, Code.BAD_SIGNATURE)
        if error.code is Code.BAD_SIGNATURE:
            assert isinstance(error, AuthenticationError)
    else:
        assert test["result"] == "acceptable", "an invalid signature verified"


def _verification(key: bytes, message: bytes, signature: bytes) -> str:
    try:
        verify_ed25519(key, message, signature)
    except FedrecordError as error:
        return error.code.value
    return "verified"


def test_wycheproof_ed25519_without_the_cffi_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """verify_ed25519 calls libsodium through PyNaCl's cffi module; its fallback, the bindings, agrees."""
    cases = [(bytes.fromhex(k), bytes.fromhex(t["msg"]), bytes.fromhex(t["sig"])) for k, t in ED25519_CASES]
    direct = [_verification(*case) for case in cases]
    monkeypatch.setattr(identity, "_lib", None)
    assert [_verification(*case) for case in cases] == direct
    assert direct.count("verified") >= sum(1 for _, t in ED25519_CASES if t["result"] == "valid")


# --------------------------------------------------------------------------
# Wycheproof X25519
# --------------------------------------------------------------------------

X25519 = _load("wycheproof/x25519_test.json")
X25519_CASES = [test for group in X25519["testGroups"] for test in group["tests"]]
_ZERO = bytes(32)
_EPHEMERAL_SEED = bytes(range(32))


def test_x25519_vector_count() -> None:
    assert len(X25519_CASES) == X25519["numberOfTests"]
    # The file's notes: a low-order public key is exactly what gives an all-zero shared secret.
    for test in X25519_CASES:
        zero = test["shared"] == _ZERO.hex()
        assert zero == ("ZeroSharedSecret" in test["flags"]) == ("LowOrderPublic" in test["flags"])


@pytest.mark.parametrize("test", X25519_CASES, ids=[_wycheproof_id(t) for t in X25519_CASES])
def test_wycheproof_x25519_seal(test: dict[str, Any]) -> None:
    """seal() refuses exactly the low-order recipient keys (spec [SEAL-2]), never with a RuntimeError.

    The ephemeral scalar is clamped (a multiple of 8), so its product with a
    point is zero exactly when the point has low order, whatever the vector's
    own private key.
    """
    recipient = bytes.fromhex(test["public"])
    if bytes.fromhex(test["shared"]) == _ZERO:
        with pytest.raises(RemoteProtocolError) as refused:
            seal(b"x", recipient, _EPHEMERAL_SEED)
        assert refused.value.code is Code.BAD_KEY
    else:
        # Twist points and non-canonical encodings (acceptable) are not low order: sealed as usual.
        sealed = seal(b"x", recipient, _EPHEMERAL_SEED)
        assert len(sealed) == 1 + SEAL_OVERHEAD
        assert sealed[:32] == sodium.crypto_box_seed_keypair(_EPHEMERAL_SEED)[0]


@pytest.mark.parametrize("test", X25519_CASES, ids=[_wycheproof_id(t) for t in X25519_CASES])
def test_wycheproof_x25519_shared_secret(test: dict[str, Any]) -> None:
    private, public, shared = (bytes.fromhex(test[name]) for name in ("private", "public", "shared"))
    if test["result"] == "valid" and shared != _ZERO:
        assert x25519_shared_secret(private, public) == shared
    elif shared == _ZERO:
        with pytest.raises(RemoteProtocolError) as refused:
            x25519_shared_secret(private, public)
        assert refused.value.code is Code.BAD_KEY
    else:
        # "acceptable" (twist points, non-canonical keys): refusing is allowed, but a result
        # must be the RFC 7748 one.
        try:
            result = x25519_shared_secret(private, public)
        except FedrecordError as error:
            assert error.code is Code.BAD_KEY
        else:
            assert result == shared


# --------------------------------------------------------------------------
# Wycheproof XChaCha20-Poly1305
# --------------------------------------------------------------------------

XCHACHA = _load("wycheproof/xchacha20_poly1305_test.json")
XCHACHA_CASES = [test for group in XCHACHA["testGroups"] for test in group["tests"]]


def test_xchacha_vector_count() -> None:
    assert len(XCHACHA_CASES) == XCHACHA["numberOfTests"]


@pytest.mark.parametrize("test", XCHACHA_CASES, ids=[_wycheproof_id(t) for t in XCHACHA_CASES])
def test_wycheproof_xchacha20_poly1305(test: dict[str, Any]) -> None:
    key, nonce, aad, msg, ct, tag = (
        bytes.fromhex(test[name]) for name in ("key", "iv", "aad", "msg", "ct", "tag")
    )
    if test["result"] == "valid":
        assert aead_encrypt(key, nonce, msg, aad) == ct + tag
        assert aead_decrypt(key, nonce, ct + tag, aad) == msg
        return
    assert test["result"] == "invalid"
    if "InvalidNonceSize" in test["flags"]:
        # Our own misuse: only 24-byte nonces exist in XChaCha20-Poly1305.
        with pytest.raises(LocalProtocolError) as refused:
            aead_encrypt(key, nonce, msg, aad)
        assert refused.value.code is Code.MALFORMED
        with pytest.raises(LocalProtocolError) as refused:
            aead_decrypt(key, nonce, ct + tag, aad)
        assert refused.value.code is Code.MALFORMED
    else:
        assert test["flags"] == ["ModifiedTag"]
        # The ciphertext is genuine, only the tag was changed.
        sealed = aead_encrypt(key, nonce, msg, aad)
        assert sealed[: len(ct)] == ct
        assert sealed != ct + tag
        with pytest.raises(AuthenticationError) as failed:
            aead_decrypt(key, nonce, ct + tag, aad)
        assert failed.value.code is Code.DECRYPT_FAILED
