"""Signed node-to-node HTTP messages (spec/fedrecord.md section 14, RFC 9421 profile).

Unit tests of the pure layer (``fedrecord.http.message_signatures``), a fixed
vector a second implementation can reproduce, and one end-to-end run over a
real TCP server on 127.0.0.1 through the aiohttp adapters.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import aiohttp
import http_sf
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict
from nacl.signing import VerifyKey

from fedrecord.core import cbor
from fedrecord.core.errors import AuthenticationError, Code, FedrecordError, LocalProtocolError
from fedrecord.core.identity import SigningIdentity
from fedrecord.http import aiohttp_signing
from fedrecord.http import message_signatures as ms
from fedrecord.http.aiohttp_signing import SignedClient, client_signing_headers, signed_response, verified
from fedrecord.http.message_signatures import (
    check_content_digest,
    content_digest,
    sign_request,
    sign_response,
    verify_request,
    verify_response,
)

from .conftest import NOW, identity

URL = "https://patient.example/v0/inbox"
BODY = bytes.fromhex("a1617600")  # CBOR {"v": 0}
NONCE = "AAECAwQFBgcICQoLDA0ODw"  # base64url of bytes 0..15
OTHER_NONCE = "EBESExQVFhcYGRobHB0eHw"  # base64url of bytes 16..31

CLINIC = identity("clinic")
PATIENT = identity("patient")
MALLORY = identity("mallory")


def signed(
    *,
    signer: SigningIdentity = CLINIC,
    method: str = "POST",
    url: str = URL,
    body: bytes | None = BODY,
    now: int = NOW,
    nonce: str = NONCE,
    streamed: bool = False,
    lifetime: int = 60,
) -> dict[str, str]:
    """A signed request's header fields (Content-Type plus what sign_request adds)."""
    headers = {"Content-Type": "application/cbor"}
    headers.update(
        sign_request(
            identity=signer,
            method=method,
            url=url,
            headers=headers,
            body=body,
            now=now,
            nonce=nonce,
            lifetime=lifetime,
            streamed=streamed,
        )
    )
    return headers


def code_of(excinfo: pytest.ExceptionInfo[FedrecordError]) -> Code:
    return excinfo.value.code


def replace_param(headers: dict[str, str], old: str, new: str) -> dict[str, str]:
    assert old in headers["Signature-Input"]
    return {**headers, "Signature-Input": headers["Signature-Input"].replace(old, new)}


@contextmanager
def patched(monkeypatch: pytest.MonkeyPatch, target: object, name: str, value: object) -> Iterator[None]:
    """Sign under a changed profile constant, then verify under the real one."""
    with monkeypatch.context() as patch:
        patch.setattr(target, name, value)
        yield


# --------------------------------------------------------------------------------------------------
# Fixed vector (spec/fedrecord.md section 14, "Example").

VECTOR_SIGNER = SigningIdentity.from_seed(bytes(32))
VECTOR_DID = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
VECTOR_DIGEST = "sha-256=:zej8d1OeubCRjUVe5+UghZRAc6i92WjAlbpyL2lc1d4=:"
VECTOR_REQUEST_BASE = (
    '"@method": POST\n'
    '"@target-uri": https://patient.example/v0/inbox\n'
    '"@authority": patient.example\n'
    '"content-digest": sha-256=:zej8d1OeubCRjUVe5+UghZRAc6i92WjAlbpyL2lc1d4=:\n'
    '"@signature-params": ("@method" "@target-uri" "@authority" "content-digest");created=1790000000;'
    'keyid="did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp";alg="ed25519";expires=1790000060;'
    'nonce="AAECAwQFBgcICQoLDA0ODw";tag="fedrecord/v0"'
)
VECTOR_REQUEST_HEADERS = {
    "Content-Digest": VECTOR_DIGEST,
    "Signature-Input": (
        'fr=("@method" "@target-uri" "@authority" "content-digest");created=1790000000;'
        'keyid="did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp";alg="ed25519";expires=1790000060;'
        'nonce="AAECAwQFBgcICQoLDA0ODw";tag="fedrecord/v0"'
    ),
    "Signature": "fr=:rBip+xd1B69ih0Fh3ej4J2NDP1oxVMTw9qvXuitDS4o7szobvSXeb7Emp975moOjs1BZ+AjEMcvPvTQjg7dTCg==:",
}
VECTOR_RESPONSE_BASE = (
    '"@status": 200\n'
    '"content-digest": sha-256=:zej8d1OeubCRjUVe5+UghZRAc6i92WjAlbpyL2lc1d4=:\n'
    '"@method";req: POST\n'
    '"@target-uri";req: https://patient.example/v0/inbox\n'
    '"signature";req;key="fr": '
    ":rBip+xd1B69ih0Fh3ej4J2NDP1oxVMTw9qvXuitDS4o7szobvSXeb7Emp975moOjs1BZ+AjEMcvPvTQjg7dTCg==:\n"
    '"@signature-params": ("@status" "content-digest" "@method";req "@target-uri";req "signature";req;key="fr")'
    ';created=1790000001;keyid="did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp";alg="ed25519";'
    'expires=1790000061;tag="fedrecord/v0"'
)
VECTOR_RESPONSE_HEADERS = {
    "Content-Digest": VECTOR_DIGEST,
    "Signature-Input": (
        'fr=("@status" "content-digest" "@method";req "@target-uri";req "signature";req;key="fr");'
        'created=1790000001;keyid="did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp";alg="ed25519";'
        'expires=1790000061;tag="fedrecord/v0"'
    ),
    "Signature": "fr=:4Axsuw/MkhL8nw03iZ11ycZ8MvjAprYucAivZCajcfAZNoGZJF0aP6wZ7P2Yy1WJpEzn2FD5bWxlfwGPgdxvBw==:",
}


def _signature_bytes(field: str) -> bytes:
    assert field.startswith("fr=:") and field.endswith(":")
    return base64.b64decode(field[4:-1], validate=True)


def test_vector_request_headers_and_signature_base():
    """[HTTP-3], [HTTP-5]: the exact fields for seed 0^32, POST, URL, BODY, now 1790000000."""
    assert VECTOR_SIGNER.did == VECTOR_DID
    headers = sign_request(
        identity=VECTOR_SIGNER,
        method="POST",
        url=URL,
        headers={"Content-Type": "application/cbor"},
        body=BODY,
        now=1_790_000_000,
        nonce=NONCE,
    )
    assert headers == VECTOR_REQUEST_HEADERS
    # Checked without our code: RFC 9530 digest, and Ed25519 over exactly the base string.
    expected_digest = base64.b64encode(hashlib.sha256(BODY).digest()).decode()
    assert f"sha-256=:{expected_digest}:" == VECTOR_DIGEST
    VerifyKey(VECTOR_SIGNER.public_key).verify(
        VECTOR_REQUEST_BASE.encode(), _signature_bytes(VECTOR_REQUEST_HEADERS["Signature"])
    )
    result = verify_request(
        method="POST", url=URL, headers=VECTOR_REQUEST_HEADERS, body=BODY, now=1_790_000_000
    )
    assert (result.signer, result.nonce, result.created, result.expires) == (
        VECTOR_DID,
        NONCE,
        1_790_000_000,
        1_790_000_060,
    )


def test_vector_response_headers_and_signature_base():
    """[HTTP-12]: the answer 200 BODY to the vector request, signed at 1790000001 by the same key."""
    headers = sign_response(
        identity=VECTOR_SIGNER,
        status=200,
        headers={},
        body=BODY,
        request_method="POST",
        request_url=URL,
        request_signature=VECTOR_REQUEST_HEADERS["Signature"],
        request_signature_input=VECTOR_REQUEST_HEADERS["Signature-Input"],
        now=1_790_000_001,
    )
    assert headers == VECTOR_RESPONSE_HEADERS
    VerifyKey(VECTOR_SIGNER.public_key).verify(
        VECTOR_RESPONSE_BASE.encode(), _signature_bytes(VECTOR_RESPONSE_HEADERS["Signature"])
    )
    verify_response(
        expected_signer=VECTOR_DID,
        status=200,
        headers=VECTOR_RESPONSE_HEADERS,
        body=BODY,
        request_method="POST",
        request_url=URL,
        request_headers=VECTOR_REQUEST_HEADERS,
        now=1_790_000_001,
    )


# --------------------------------------------------------------------------------------------------
# Requests: what verifies.


def test_signed_request_verifies():
    result = verify_request(method="POST", url=URL, headers=signed(), body=BODY, now=NOW + 5)
    assert result == ms.VerifiedRequest(signer=CLINIC.did, nonce=NONCE, created=NOW, expires=NOW + 60)


@pytest.mark.parametrize("body", [None, b""])
def test_bodiless_request_covers_no_digest(body):
    headers = signed(method="GET", body=body)
    assert "Content-Digest" not in headers
    assert headers["Signature-Input"].startswith('fr=("@method" "@target-uri" "@authority");')
    assert verify_request(method="GET", url=URL, headers=headers, body=None, now=NOW).signer == CLINIC.did
    assert verify_request(method="GET", url=URL, headers=headers, body=b"", now=NOW).signer == CLINIC.did


def test_header_names_are_case_insensitive_and_other_fields_ignored():
    headers = {name.lower(): value for name, value in signed().items()}
    headers["x-added-by-proxy"] = "1"
    assert verify_request(method="POST", url=URL, headers=headers, body=BODY, now=NOW).signer == CLINIC.did


def test_repeated_fields_are_combined_as_one():
    """A CIMultiDict with two Signature-Input lines is read as one combined field (RFC 9110 5.3)."""
    headers = CIMultiDict(signed())
    headers.add("Signature-Input", 'other=("@method");created=1')
    headers.add("Signature", "other=:AAAA:")
    assert verify_request(method="POST", url=URL, headers=headers, body=BODY, now=NOW).signer == CLINIC.did


def test_other_labels_are_ignored_but_fr_is_required():
    headers = signed()
    relabelled = {
        **headers,
        "Signature-Input": headers["Signature-Input"].replace("fr=", "sig1=", 1),
        "Signature": headers["Signature"].replace("fr=", "sig1=", 1),
    }
    with pytest.raises(AuthenticationError):
        verify_request(method="POST", url=URL, headers=relabelled, body=BODY, now=NOW)


# --------------------------------------------------------------------------------------------------
# Requests: each covered component and parameter.


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("PUT", URL),  # @method
        ("POST", "https://patient.example/v0/inbox/2"),  # @target-uri: path
        ("POST", URL + "?x=1"),  # @target-uri: query
        ("POST", "http://patient.example/v0/inbox"),  # @target-uri: scheme
        ("POST", "https://clinic.example/v0/inbox"),  # @authority
        ("POST", "https://patient.example:8443/v0/inbox"),  # @authority: port
    ],
    ids=["method", "path", "query", "scheme", "authority", "port"],
)
def test_changed_component_is_bad_signature(method, url):
    with pytest.raises(AuthenticationError) as excinfo:
        verify_request(method=method, url=url, headers=signed(), body=BODY, now=NOW)
    assert code_of(excinfo) is Code.BAD_SIGNATURE
    assert excinfo.value.message == "signature did not verify"  # [ERR-3]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (f"created={NOW}", f"created={NOW - 1}"),
        (f"expires={NOW + 60}", f"expires={NOW + 61}"),
        (f'nonce="{NONCE}"', f'nonce="{OTHER_NONCE}"'),
        (f'keyid="{CLINIC.did}"', f'keyid="{PATIENT.did}"'),
    ],
    ids=["created", "expires", "nonce", "keyid"],
)
def test_changed_parameter_is_bad_signature(old, new):
    with pytest.raises(AuthenticationError):
        verify_request(method="POST", url=URL, headers=replace_param(signed(), old, new), body=BODY, now=NOW)


def test_another_keys_signature_under_our_keyid_is_bad_signature():
    forged = replace_param(signed(signer=MALLORY), f'keyid="{MALLORY.did}"', f'keyid="{CLINIC.did}"')
    with pytest.raises(AuthenticationError):
        verify_request(method="POST", url=URL, headers=forged, body=BODY, now=NOW)


def test_keyid_that_is_not_a_did_key_is_bad_key():
    headers = replace_param(signed(), f'keyid="{CLINIC.did}"', 'keyid="https://clinic.example/key"')
    with pytest.raises(FedrecordError) as excinfo:
        verify_request(method="POST", url=URL, headers=headers, body=BODY, now=NOW)
    assert code_of(excinfo) is Code.BAD_KEY


@pytest.mark.parametrize("missing", [("Signature",), ("Signature-Input",), ("Signature", "Signature-Input")])
def test_missing_signature_fields_are_bad_signature(missing):
    headers = {name: value for name, value in signed().items() if name not in missing}
    with pytest.raises(AuthenticationError):
        verify_request(method="POST", url=URL, headers=headers, body=BODY, now=NOW)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("Signature-Input", "fr=(("),
        ("Signature-Input", "fr=:AAAA:"),  # not an inner list
        ("Signature-Input", 'fr=("@method" @target-uri)'),  # component not a string
        ("Signature-Input", "fr=(), fr=()"),  # duplicate label
        ("Signature-Input", "fr=(\u00e9)"),  # not ASCII
        ("Signature", "fr=token"),  # not a byte sequence
        ("Signature", "fr=:not base64:"),
        ("Signature", "fr=:AAAA:;p=1"),  # parameters on the signature
    ],
)
def test_garbage_signature_fields_are_malformed(field, value):
    headers = {**signed(), field: value}
    with pytest.raises(FedrecordError) as excinfo:
        verify_request(method="POST", url=URL, headers=headers, body=BODY, now=NOW)
    assert code_of(excinfo) is Code.MALFORMED


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (f"created={NOW}", 'created="now"'),
        (f"expires={NOW + 60}", "expires=?1"),
        ('alg="ed25519"', "alg=ed25519"),  # a token, not a string
        (f'nonce="{NONCE}"', 'nonce="short"'),
        (f'nonce="{NONCE}"', 'nonce="' + "A" * 65 + '"'),
        (f"created={NOW}", "created=-1"),
    ],
)
def test_parameters_of_the_wrong_form_are_malformed(old, new):
    with pytest.raises(FedrecordError) as excinfo:
        verify_request(method="POST", url=URL, headers=replace_param(signed(), old, new), body=BODY, now=NOW)
    assert code_of(excinfo) is Code.MALFORMED


def test_oversized_signature_field_is_too_large():
    headers = {**signed(), "Signature": "fr=:" + "A" * 5000 + ":"}
    with pytest.raises(FedrecordError) as excinfo:
        verify_request(method="POST", url=URL, headers=headers, body=BODY, now=NOW)
    assert code_of(excinfo) is Code.TOO_LARGE


@pytest.mark.parametrize(
    ("old", "new"),
    [(';tag="fedrecord/v0"', ""), (';tag="fedrecord/v0"', ';tag="fedrecord/v0";extra=1')],
    ids=["missing", "extra"],
)
def test_other_parameter_set_is_bad_signature(old, new):
    with pytest.raises(AuthenticationError):
        verify_request(method="POST", url=URL, headers=replace_param(signed(), old, new), body=BODY, now=NOW)


def test_wrong_tag_is_bad_signature(monkeypatch):
    """A valid signature under another tag (another protocol or version) is refused ([HTTP-3])."""
    with patched(monkeypatch, ms, "TAG", "fedrecord/v1"):
        headers = signed()
    assert 'tag="fedrecord/v1"' in headers["Signature-Input"]
    with pytest.raises(AuthenticationError):
        verify_request(method="POST", url=URL, headers=headers, body=BODY, now=NOW)


def test_wrong_alg_is_bad_signature(monkeypatch):
    with patched(monkeypatch, ms._PyNaClEd25519, "algorithm_id", "hmac-sha256"):
        headers = signed()
    assert 'alg="hmac-sha256"' in headers["Signature-Input"]
    with pytest.raises(AuthenticationError):
        verify_request(method="POST", url=URL, headers=headers, body=BODY, now=NOW)


@pytest.mark.parametrize(
    "components",
    [
        ('"@target-uri"', '"@method"', '"@authority"'),  # reordered
        ('"@method"', '"@target-uri"'),  # one missing
        ('"@method"', '"@target-uri"', '"@authority"', '"@path"'),  # one more
        ('"@method"', '"@target-uri"', '"@authority"', '"content-type"'),
    ],
)
def test_other_component_list_is_bad_signature(monkeypatch, components):
    with patched(monkeypatch, ms, "REQUEST_COMPONENTS", components):
        headers = signed(body=None)
    with pytest.raises(AuthenticationError):
        verify_request(method="POST", url=URL, headers=headers, body=None, now=NOW)


def test_lifetime_over_300_seconds_is_refused():
    with pytest.raises(LocalProtocolError):
        signed(lifetime=301)
    assert verify_request(method="POST", url=URL, headers=signed(lifetime=300), body=BODY, now=NOW + 299)
    # A correctly signed request with a longer window, made below the public API.
    view = ms._Request(method="GET", url=URL, headers={})
    headers = ms._sign(CLINIC, view, list(ms.REQUEST_COMPONENTS), now=NOW, lifetime=301, nonce=NONCE)
    with pytest.raises(AuthenticationError):
        verify_request(method="GET", url=URL, headers=headers, body=None, now=NOW)


# --------------------------------------------------------------------------------------------------
# Requests: time window ([HTTP-8]).


def test_created_beyond_skew_is_not_yet_valid():
    headers = signed(now=NOW + 31)
    with pytest.raises(FedrecordError) as excinfo:
        verify_request(method="POST", url=URL, headers=headers, body=BODY, now=NOW)
    assert code_of(excinfo) is Code.NOT_YET_VALID
    assert verify_request(method="POST", url=URL, headers=signed(now=NOW + 30), body=BODY, now=NOW)
    with pytest.raises(FedrecordError) as excinfo:
        verify_request(method="POST", url=URL, headers=signed(now=NOW + 1), body=BODY, now=NOW, max_skew=0)
    assert code_of(excinfo) is Code.NOT_YET_VALID


def test_expired_at_expires():
    headers = signed()
    assert verify_request(method="POST", url=URL, headers=headers, body=BODY, now=NOW + 59)
    with pytest.raises(FedrecordError) as excinfo:
        verify_request(method="POST", url=URL, headers=headers, body=BODY, now=NOW + 60)
    assert code_of(excinfo) is Code.EXPIRED


# --------------------------------------------------------------------------------------------------
# Bodies ([HTTP-4], [HTTP-5]).


def test_content_digest_is_rfc9530_sha256():
    assert content_digest(b"") == "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"
    check_content_digest({"content-digest": content_digest(BODY)}, BODY)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "sha-256=:AAAA:",
        content_digest(b"other"),
        content_digest(BODY) + ", sha-512=:" + base64.b64encode(hashlib.sha512(BODY).digest()).decode() + ":",
        "sha-512=:" + base64.b64encode(hashlib.sha512(BODY).digest()).decode() + ":",
        "sha-256=" + base64.b64encode(hashlib.sha256(BODY).digest()).decode(),
        "((",
    ],
)
def test_check_content_digest_refuses(value):
    headers = {} if value is None else {"Content-Digest": value}
    with pytest.raises(AuthenticationError):
        check_content_digest(headers, BODY)


def test_changed_body_is_bad_signature():
    with pytest.raises(AuthenticationError):
        verify_request(method="POST", url=URL, headers=signed(), body=BODY + b"\0", now=NOW)


def test_changed_digest_is_bad_signature():
    headers = {**signed(), "Content-Digest": content_digest(b"other")}
    with pytest.raises(AuthenticationError):
        verify_request(method="POST", url=URL, headers=headers, body=b"other", now=NOW)


def test_body_added_to_bodiless_request_is_bad_signature():
    with pytest.raises(AuthenticationError):
        verify_request(method="POST", url=URL, headers=signed(body=None), body=BODY, now=NOW)


def test_digest_covered_but_body_not_given_is_bad_signature():
    with pytest.raises(AuthenticationError):
        verify_request(method="POST", url=URL, headers=signed(), body=None, now=NOW)


def test_streamed_request_covers_its_declaration_not_its_body():
    headers = signed(body=None, streamed=True)
    assert headers["Fedrecord-Streamed"] == "1"
    assert "Content-Digest" not in headers
    result = verify_request(method="POST", url=URL, headers=headers, body=None, now=NOW)
    assert result.streamed
    # A handler that buffers the body wants it covered: a streamed request is refused there.
    with pytest.raises(AuthenticationError):
        verify_request(method="POST", url=URL, headers=headers, body=BODY, now=NOW)
    # The declaration is covered: adding it to, or removing it from, a signed request fails.
    with pytest.raises(AuthenticationError):
        verify_request(
            method="POST",
            url=URL,
            headers={**signed(body=None), "Fedrecord-Streamed": "1"},
            body=None,
            now=NOW,
        )
    without = {name: value for name, value in headers.items() if name != "Fedrecord-Streamed"}
    with pytest.raises(AuthenticationError):
        verify_request(method="POST", url=URL, headers=without, body=None, now=NOW)
    with pytest.raises(FedrecordError) as excinfo:
        verify_request(
            method="POST", url=URL, headers={**headers, "Fedrecord-Streamed": "2"}, body=None, now=NOW
        )
    assert code_of(excinfo) is Code.MALFORMED


@pytest.mark.parametrize("streamed", [False, True])
def test_range_field_is_covered_last(streamed: bool) -> None:
    """[HTTP-4]: a request with a Range field covers "range" last; changed, added or removed, it fails."""
    body = None if streamed else BODY
    fields = {"Content-Type": "application/cbor", "Range": "bytes=100-"}
    headers = {
        **fields,
        **sign_request(
            identity=CLINIC,
            method="POST",
            url=URL,
            headers=fields,
            body=body,
            now=NOW,
            nonce=NONCE,
            streamed=streamed,
        ),
    }
    middle = '"fedrecord-streamed"' if streamed else '"content-digest"'
    assert f'("@method" "@target-uri" "@authority" {middle} "range");' in headers["Signature-Input"]
    assert verify_request(method="POST", url=URL, headers=headers, body=body, now=NOW).signer == CLINIC.did
    without = {name: value for name, value in headers.items() if name != "Range"}
    added = {**signed(body=body, streamed=streamed), "Range": "bytes=100-"}
    for changed in ({**headers, "Range": "bytes=0-"}, without, added):
        with pytest.raises(AuthenticationError):
            verify_request(method="POST", url=URL, headers=changed, body=body, now=NOW)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"nonce": "short"},
        {"nonce": "A" * 22 + "!"},
        {"lifetime": 0},
        {"streamed": True},
        {"method": "post"},
        {"url": "/v0/inbox"},
    ],
)
def test_sign_request_refuses_misuse(kwargs):
    with pytest.raises(LocalProtocolError):
        signed(**kwargs)


def test_signing_replaces_stale_signature_fields():
    stale = {"signature": "fr=:AAAA:", "content-digest": content_digest(b"old"), "Fedrecord-Streamed": "1"}
    headers = sign_request(
        identity=CLINIC, method="POST", url=URL, headers=stale, body=BODY, now=NOW, nonce=NONCE
    )
    fresh = sign_request(identity=CLINIC, method="POST", url=URL, headers={}, body=BODY, now=NOW, nonce=NONCE)
    assert headers == fresh
    assert set(headers) == {"Content-Digest", "Signature-Input", "Signature"}


# --------------------------------------------------------------------------------------------------
# Responses bound to their request ([HTTP-12], [HTTP-13]).


def answer(
    request_headers: dict[str, str],
    *,
    signer: SigningIdentity = PATIENT,
    status: int = 200,
    body: bytes = BODY,
    now: int = NOW + 1,
) -> dict[str, str]:
    return sign_response(
        identity=signer,
        status=status,
        headers={"Content-Type": "application/cbor"},
        body=body,
        request_method="POST",
        request_url=URL,
        request_signature=request_headers["Signature"],
        request_signature_input=request_headers["Signature-Input"],
        now=now,
    )


def check_answer(
    headers: dict[str, str],
    request_headers: dict[str, str],
    *,
    status: int = 200,
    body: bytes = BODY,
    signer: str = PATIENT.did,
    method: str = "POST",
    url: str = URL,
    now: int = NOW + 1,
) -> None:
    verify_response(
        expected_signer=signer,
        status=status,
        headers=headers,
        body=body,
        request_method=method,
        request_url=url,
        request_headers=request_headers,
        now=now,
    )


def test_signed_answer_verifies_even_when_empty_or_an_error():
    request = signed()
    check_answer(answer(request), request)
    check_answer(answer(request, status=404, body=b""), request, status=404, body=b"")


def test_answer_moved_to_another_request_is_bad_signature():
    first, second = signed(nonce=NONCE), signed(nonce=OTHER_NONCE)
    with pytest.raises(AuthenticationError):
        check_answer(answer(first), second)


@pytest.mark.parametrize(
    "change",
    [{"status": 201}, {"body": b"other"}, {"signer": MALLORY.did}, {"method": "PUT"}, {"url": URL + "/2"}],
    ids=["status", "body", "signer", "request-method", "request-url"],
)
def test_changed_answer_is_bad_signature(change):
    request = signed()
    with pytest.raises(AuthenticationError):
        check_answer(answer(request), request, **change)


def test_answer_signed_by_another_node_is_bad_signature():
    request = signed()
    with pytest.raises(AuthenticationError):
        check_answer(answer(request, signer=MALLORY), request)


def test_unsigned_answer_is_bad_signature():
    request = signed()
    with pytest.raises(AuthenticationError):
        check_answer({"Content-Digest": content_digest(BODY)}, request)


def test_request_signature_does_not_pass_as_answer():
    request = signed()
    with pytest.raises(AuthenticationError):
        check_answer(request, request)


def test_answer_window():
    request = signed()
    with pytest.raises(FedrecordError) as excinfo:
        check_answer(answer(request), request, now=NOW + 61)
    assert code_of(excinfo) is Code.EXPIRED
    with pytest.raises(FedrecordError) as excinfo:
        check_answer(answer(request, now=NOW + 100), request)
    assert code_of(excinfo) is Code.NOT_YET_VALID


def test_sign_response_needs_the_request_signature():
    with pytest.raises(LocalProtocolError):
        sign_response(
            identity=PATIENT,
            status=200,
            headers={},
            body=b"",
            request_method="POST",
            request_url=URL,
            request_signature="",
            request_signature_input="",
            now=NOW,
        )


# --------------------------------------------------------------------------------------------------
# End to end over TCP on 127.0.0.1 ([HTTP-9], [HTTP-10]).


class MemoryNonces:
    """An in-memory NonceStore (a node uses its database)."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], int] = {}

    async def remember(self, signer: str, nonce: str, expires: int) -> bool:
        if (signer, nonce) in self.seen:
            return False
        self.seen[(signer, nonce)] = expires
        return True


def refusal(error: FedrecordError) -> web.Response:
    return web.Response(
        status=error.status,
        body=cbor.encode({"code": error.code.value, "message": error.message}),
        content_type="application/cbor",
    )


@pytest.fixture
async def patient_node() -> AsyncIterator[tuple[TestServer, MemoryNonces, list[ms.VerifiedRequest]]]:
    nonces = MemoryNonces()
    accepted: list[ms.VerifiedRequest] = []
    authorities: list[str] = []

    async def inbox(request: web.Request) -> web.StreamResponse:
        try:
            if request.headers.get("Fedrecord-Streamed"):
                result = await verified(request, None, now=NOW, nonces=nonces, authorities=authorities)
                content = await request.read()  # a node would decrypt the STREAM here
            else:
                content = await request.read()
                result = await verified(request, content, now=NOW, nonces=nonces, authorities=authorities)
        except FedrecordError as error:
            return refusal(error)
        accepted.append(result)
        return signed_response(
            request, identity=PATIENT, now=NOW, body=cbor.encode({"v": 0, "n": len(content)})
        )

    app = web.Application()
    app.router.add_post("/v0/inbox", inbox)
    async with TestServer(app, host="127.0.0.1") as server:
        authorities.append(f"127.0.0.1:{server.port}")
        yield server, nonces, accepted


async def test_end_to_end_valid_replayed_unsigned(patient_node):
    server, nonces, accepted = patient_node
    url = server.make_url("/v0/inbox")
    async with aiohttp.ClientSession() as session:
        client = SignedClient(session)
        answer = await client.request(
            "POST", url, identity=CLINIC, now=NOW, nonce=NONCE, body=BODY, expected_signer=PATIENT.did
        )
        assert answer.status == 200 and answer.signer == PATIENT.did
        assert cbor.decode(answer.body) == {"v": 0, "n": len(BODY)}
        assert [(r.signer, r.nonce) for r in accepted] == [(CLINIC.did, NONCE)]

        # The same signed request again: refused, and the store is unchanged.
        headers = client_signing_headers(
            identity=CLINIC, method="POST", url=url, body=BODY, now=NOW, nonce=NONCE
        )
        async with session.post(url, data=BODY, headers=headers) as response:
            assert response.status == 409
            assert cbor.decode(await response.read())["code"] == "replay"

        # Unsigned: 401 bad-signature, nothing remembered.
        async with session.post(url, data=BODY) as response:
            assert response.status == 401
            assert cbor.decode(await response.read()) == {
                "code": "bad-signature",
                "message": "signature did not verify",
            }
        assert list(nonces.seen) == [(CLINIC.did, NONCE)]
        assert len(accepted) == 1


async def test_end_to_end_refusals_store_no_nonce(patient_node):
    server, nonces, accepted = patient_node
    url = server.make_url("/v0/inbox")
    async with aiohttp.ClientSession() as session:
        # Body changed in transit.
        headers = client_signing_headers(
            identity=CLINIC, method="POST", url=url, body=BODY, now=NOW, nonce=NONCE
        )
        async with session.post(url, data=BODY + b"!", headers=headers) as response:
            assert response.status == 401
        # Signed for another node: its Host is not one of ours.
        other = url.with_host("localhost")
        headers = client_signing_headers(
            identity=CLINIC, method="POST", url=other, body=BODY, now=NOW, nonce=NONCE
        )
        async with session.post(url, data=BODY, headers=headers) as response:
            assert response.status == 401
        # Expired.
        headers = client_signing_headers(
            identity=CLINIC, method="POST", url=url, body=BODY, now=NOW - 60, nonce=NONCE
        )
        async with session.post(url, data=BODY, headers=headers) as response:
            assert response.status == 403
            assert cbor.decode(await response.read())["code"] == "expired"
    assert nonces.seen == {} and accepted == []


async def test_end_to_end_streamed_body(patient_node):
    server, _, accepted = patient_node

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"x" * 70_000

    async with aiohttp.ClientSession() as session:
        answer = await SignedClient(session).request(
            "post",
            server.make_url("/v0/inbox"),
            identity=CLINIC,
            now=NOW,
            nonce=NONCE,
            stream=chunks(),
            expected_signer=PATIENT.did,
        )
    assert cbor.decode(answer.body) == {"v": 0, "n": 280_000}
    assert accepted[0].streamed


async def test_end_to_end_answer_from_wrong_node_is_refused(patient_node):
    server, _, _ = patient_node
    async with aiohttp.ClientSession() as session:
        with pytest.raises(AuthenticationError):
            await SignedClient(session).request(
                "POST",
                server.make_url("/v0/inbox"),
                identity=CLINIC,
                now=NOW,
                nonce=NONCE,
                body=BODY,
                expected_signer=MALLORY.did,
            )


def test_target_uri_normalises_default_ports():
    assert aiohttp_signing._authority("Patient.Example:443", "https") == "patient.example"
    assert aiohttp_signing._authority("patient.example:8443", "https") == "patient.example:8443"
    assert aiohttp_signing._authority("[::1]:80", "http") == "[::1]"
    assert aiohttp_signing.signed_target_uri("https://Patient.Example:443/v0/a/../inbox?q=%20")[1:] == (
        "patient.example",
        "https://patient.example/v0/inbox?q=%20",
    )


# --- the fast reading of signature fields -------------------------------------------------------------

_NAMES = st.sampled_from(["@method", "@status", "signature", "content-digest", "a", "@query-param", "A", ""])
_KEYS = st.sampled_from(["req", "key", "name", "bs", "sf", "B", "created", "fr", "x"])
_VALUES = st.sampled_from(["", '="fr"', '="x y"', "=1", '="a.b"', "=?0", "=-5", '="é"'])
_ITEM = st.builds(
    lambda name, params: f'"{name}"' + "".join(f";{k}{v}" for k, v in params),
    _NAMES,
    st.lists(st.tuples(_KEYS, _VALUES), max_size=3),
)
_MEMBER = st.one_of(
    st.builds(
        lambda key, items, params: f"{key}=(" + " ".join(items) + ")" + "".join(f";{k}{v}" for k, v in params),
        st.sampled_from(["fr", "sig2", "X"]),
        st.lists(_ITEM, max_size=5),
        st.lists(st.tuples(_KEYS, _VALUES), max_size=4),
    ),
    st.builds(lambda key, raw: f"{key}=:{base64.b64encode(raw).decode()}:", st.sampled_from(["fr", "o"]), st.binary(max_size=8)),
)


@settings(max_examples=600, deadline=None)
@given(st.lists(_MEMBER, min_size=1, max_size=3), st.sampled_from([", ", ",", " , "]))
def test_the_fast_reading_of_a_signature_field_agrees_with_the_general_parser(
    members: list[str], separator: str
) -> None:
    """Whatever the fast path reads, it reads as http_sf does; the rest it leaves to http_sf."""
    value = separator.join(members)
    fast = ms._fast_dictionary(value)
    if fast is None:
        return
    parsed = http_sf.parse(value.encode(), tltype="dictionary", on_duplicate_key=ms._refuse_duplicate)
    assert fast == {key: (member[0], member[1]) for key, member in parsed.items()}


def test_a_signed_answer_s_fields_take_the_fast_path() -> None:
    """The shapes our own answers have are read without http_sf (the property above skips None)."""
    value = (
        'fr=("@status" "content-digest" "@method";req "@target-uri";req "signature";req;key="fr")'
        ';created=1;expires=61;keyid="did:key:z6Mk";alg="ed25519";tag="fedrecord/v0"'
    )
    fast = ms._fast_dictionary(value)
    assert fast is not None
    parsed = http_sf.parse(value.encode(), tltype="dictionary")
    assert fast == {key: (member[0], member[1]) for key, member in parsed.items()}
    assert fast["fr"][0][4] == ("signature", {"req": True, "key": "fr"})
