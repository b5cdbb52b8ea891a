"""Strict CBOR bodies, body caps and versions, and the field rules of signed records (Sections 3, 6, 13, 15.2).

Most cases attack ``POST /v0/connect``: the one endpoint whose refusal is easy
to tell from a success from the outside.  A refused connect must not consume
the invitation ([ERR-4]): each case ends by connecting with the same token and
a valid profile, and by checking that the hostile actor received no grant.
The strictness vectors come from the installed package
(:mod:`fedrecord.vectors.cbor_cases`), not from the spec folder.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import cbor2
import nacl.bindings
from yarl import URL

from fedrecord.core import Grant, NodeProfile, cbor, open_record
from fedrecord.core.errors import FedrecordError
from fedrecord.core.records import StateHead
from fedrecord.vectors import cbor_cases
from fedrecord.vectors.record_cases import forge

from ..actors import DAY, Actor, now
from ..registry import Failed, case
from ..session import Session, expect_refusal, expect_status
from ..wire import Answer, body, raw_exchange, status_of

MIB = 1 << 20
#: The protected header of a record signed by ``identity`` as ``typ`` (Section 5.1).
ALG, KID, TYP = 1, 4, 16
PROFILE = "fedrecord/node-profile"


# --- helpers -------------------------------------------------------------------------------------------


def _text(value: str) -> bytes:
    return cbor.encode(value)


def _raw_map(items: Sequence[tuple[bytes, bytes]], *, head: bytes | None = None) -> bytes:
    """A CBOR map written key by key exactly as given (any order, any repetition)."""
    count = len(items)
    start = head if head is not None else (bytes([0xA0 + count]) if count < 24 else bytes([0xB8, count]))
    return start + b"".join(key + value for key, value in items)


def _connect_items(token: bytes, profile: bytes) -> list[tuple[bytes, bytes]]:
    """The fields of a connect request in canonical order: ``v``, ``token``, ``profile``."""
    return [
        (_text("v"), cbor.encode(0)),
        (_text("token"), cbor.encode(token)),
        (_text("profile"), cbor.encode(profile)),
    ]


async def _connect_raw(s: Session, actor: Actor, data: bytes) -> Answer:
    return await s.wire.call("/v0/connect", actor.identity, raw=data)


async def _connect(s: Session, actor: Actor, token: Any, profile: Any, **more: Any) -> Answer:
    fields = {"token": token, "profile": profile, **more}
    return await s.wire.call("/v0/connect", actor.identity, fields)


async def _still_unused(s: Session, token: bytes, *hostile: Actor) -> None:
    """The invitation was not consumed by the refusals, and no hostile actor received a grant ([ERR-4])."""
    for actor in hostile:
        if (await s.grants_for(actor)):
            raise Failed(f"a refused connect left a grant addressed to {actor.name}")
    honest = Actor.create("Honest clinic")
    answer = await _connect(s, honest, token, honest.profile.encoded)
    if answer.status != 201:
        raise Failed(
            f"the invitation no longer connects after the refusals (answered {answer.describe()}): "
            "a refused connect consumed it"
        )


def _profile_payload(actor: Actor, **changes: Any) -> dict[str, Any]:
    """The payload of ``actor``'s profile with ``changes`` (a value of ``...`` removes the field)."""
    payload = dict(actor.profile.record.to_wire())
    for key, value in changes.items():
        if value is ...:
            payload.pop(key, None)
        else:
            payload[key] = value
    return payload


def _signed_profile(actor: Actor, payload: dict[str, Any] | bytes) -> bytes:
    """A node-profile record with ``payload``, correctly signed by ``actor`` (Section 5.1)."""
    head = {ALG: -8, KID: actor.did.encode(), TYP: PROFILE}
    return forge(head, payload, actor.identity)


# --- strict CBOR bodies -----------------------------------------------------------------------------


def _strictness_vectors(*, result: str) -> list[dict[str, Any]]:
    """The cases of the strict-decoding vectors made under the default cap (the body cap is larger)."""
    vectors = cbor_cases.build().to_json()
    return [
        test
        for group in vectors["testGroups"]
        if group["maxSize"] == cbor.MAX_RECORD_SIZE
        for test in group["tests"]
        if test["result"] == result
    ]


@case(
    "encoding.cbor-vectors",
    requires=[
        "CBOR-2",
        "CBOR-3",
        "CBOR-4",
        "CBOR-5",
        "CBOR-6",
        "CBOR-7",
        "CBOR-8",
        "CBOR-9",
        "CBOR-10",
        "CBOR-11",
        "CBOR-13",
        "API-2",
        "VEC-1",
        "ERR-1",
    ],
    adversarial=True,
)
async def cbor_vectors(s: Session) -> None:
    """Every invalid strict-CBOR vector, sent as a signed state request body, is refused with its code."""
    tests = _strictness_vectors(result="invalid")
    if len(tests) < 40:
        raise Failed(f"the installed package holds only {len(tests)} invalid CBOR vectors")
    actor = Actor.create("CBOR prober")
    await s.make_known(actor)  # its valid state request is answered ([API-16])
    wrong = []
    for test in tests:
        answer = await s.wire.call("/v0/state", actor.identity, raw=bytes.fromhex(test["input"]))
        try:
            expect_refusal(answer, test["error"])
        except Failed as exc:
            wrong.append(f"tcId {test['tcId']} ({test['comment']}, input {test['input'][:24]}): {exc}")
    if wrong:
        raise Failed(f"{len(wrong)} of {len(tests)} vectors answered wrongly: " + "; ".join(wrong[:6]))
    # The refusals stored nothing and did not block the requester: a proper state request still answers.
    expect_status(await s.wire.call("/v0/state", actor.identity, {}), 200, what="a valid state request")


@case("encoding.valid-cbor-wrong-body", requires=["API-2", "VEC-1"], adversarial=True)
async def valid_cbor_wrong_body(s: Session) -> None:
    """Valid CBOR that is not a body map is malformed; a map without a version is unsupported-version."""
    actor = Actor.create("Body prober")
    for test in _strictness_vectors(result="valid"):
        data = bytes.fromhex(test["input"])
        decoded = cbor.decode(data)
        expected = "unsupported-version" if type(decoded) is dict else "malformed"
        answer = await s.wire.call("/v0/state", actor.identity, raw=data)
        expect_refusal(answer, expected, what=f"body {test['input']} ({test['comment']})")
    expect_refusal(
        await s.wire.call("/v0/state", actor.identity, raw=cbor.encode([{"v": 0}])),
        "malformed",
        what="an array holding a version-0 map",
    )


@case(
    "encoding.connect-body-flaws",
    requires=[
        "CBOR-3",
        "CBOR-4",
        "CBOR-5",
        "CBOR-6",
        "CBOR-7",
        "CBOR-8",
        "CBOR-9",
        "CBOR-10",
        "CBOR-11",
        "API-2",
        "ERR-4",
    ],
    adversarial=True,
)
async def connect_body_flaws(s: Session) -> None:
    """A connect body with a valid token and profile but one encoding flaw is refused; the token stays unused."""
    token = (await s.invitation())["token"]
    actor = Actor.create("Sloppy encoder")
    v, tok, prof = _connect_items(token, actor.profile.encoded)
    nested = bytes([0x81] * 16) + b"\x80"  # 17 nested arrays
    flaws: list[tuple[str, str, bytes]] = [
        ("keys out of order", "non-canonical", _raw_map([v, prof, tok])),
        ("the key v twice", "duplicate-key", _raw_map([v, v, tok, prof])),
        ("a byte after the map", "trailing-bytes", _raw_map([v, tok, prof]) + b"\x00"),
        ("v as a one-byte argument", "non-canonical", _raw_map([(v[0], b"\x18\x00"), tok, prof])),
        (
            "the token length in two bytes",
            "non-canonical",
            _raw_map([v, (tok[0], b"\x59\x00\x20" + token), prof]),
        ),
        ("an indefinite-length map", "indefinite-length", _raw_map([v, tok, prof], head=b"\xbf") + b"\xff"),
        ("a float field", "unsupported-type", _raw_map([v, (_text("x"), b"\xfb" + bytes(8)), tok, prof])),
        ("undefined in a field", "unsupported-type", _raw_map([v, (_text("x"), b"\xf7"), tok, prof])),
        ("the token tagged", "forbidden-tag", _raw_map([v, (tok[0], b"\xd8\x18" + tok[1]), prof])),
        ("an integer key", "invalid-map-key", _raw_map([(b"\x01", b"\x00"), v, tok, prof])),
        ("text that is not UTF-8", "invalid-utf8", _raw_map([(_text("n"), b"\x62\xc3\x28"), v, tok, prof])),
        ("seventeen nested arrays", "too-deep", _raw_map([v, (_text("x"), nested), tok, prof])),
    ]
    for what, code, data in flaws:
        expect_refusal(await _connect_raw(s, actor, data), code, what=what)
    # The control: the same fields, canonically encoded, are what a valid request looks like.
    if _raw_map([v, tok, prof]) != body(token=token, profile=actor.profile.encoded):
        raise Failed("internal: the hand-built connect body is not the canonical one")
    await _still_unused(s, token, actor)


@case("encoding.body-version", requires=["API-2", "VER-3", "ERR-4"], adversarial=True)
async def body_version(s: Session) -> None:
    """A connect body whose v is absent, a boolean, 1, -1, text or bytes is unsupported-version; nothing stored."""
    token = (await s.invitation())["token"]
    actor = Actor.create("Future clinic")
    fields = {"token": token, "profile": actor.profile.encoded}
    for what, value in (
        ("absent", ...),
        ("true", True),
        ("false", False),
        ("1", 1),
        ("-1", -1),
        ('"0"', "0"),
        ("h'00'", b"\x00"),
        ("null", None),
        ("2^63", 1 << 63),
    ):
        data = cbor.encode(fields if value is ... else {"v": value, **fields})
        expect_refusal(await _connect_raw(s, actor, data), "unsupported-version", what=f"v {what}")
    expect_refusal(
        await _connect_raw(s, actor, cbor.encode([0, token, actor.profile.encoded])),
        "malformed",
        what="the fields as an array",
    )
    await _still_unused(s, token, actor)


@case("encoding.body-field-types", requires=["API-2", "ERR-4"], adversarial=True)
async def body_field_types(s: Session) -> None:
    """A connect body lacking token or profile, or with a token that is not bytes, is malformed."""
    token = (await s.invitation())["token"]
    actor = Actor.create("Careless clinic")
    profile = actor.profile.encoded
    checks: list[tuple[str, dict[str, Any]]] = [
        ("no token", {"profile": profile}),
        ("no profile", {"token": token}),
        ("the token as text", {"token": token.hex(), "profile": profile}),
        ("the token as an integer", {"token": 7, "profile": profile}),
        ("the token inside an array", {"token": [token], "profile": profile}),
    ]
    for what, fields in checks:
        expect_refusal(await s.wire.call("/v0/connect", actor.identity, fields), "malformed", what=what)
    await _still_unused(s, token, actor)


# --- caps and content coding ---------------------------------------------------------------------


async def _chunked(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 1 << 16):
        yield data[start : start + (1 << 16)]


@case("encoding.body-cap", requires=["API-3", "CBOR-1", "ERR-4"], adversarial=True)
async def body_cap(s: Session) -> None:
    """A body over 1 MiB is too-large, announced or chunked, even when it is junk; exactly 1 MiB is read."""
    token = (await s.invitation())["token"]
    actor = Actor.create("Verbose clinic")
    base = body(token=token, profile=actor.profile.encoded, pad=b"")
    # A connect body padded with an unknown field to 1 MiB + 1 byte: valid apart from its size.
    pad_len = MIB + 1 - len(base) - 4  # the pad's byte-string head grows from 1 to 5 bytes
    over = body(token=token, profile=actor.profile.encoded, pad=bytes(pad_len))
    if len(over) != MIB + 1:
        raise Failed(f"internal: the padded body is {len(over)} bytes")
    expect_refusal(await _connect_raw(s, actor, over), "too-large", what="1 MiB + 1 byte, announced")
    headers = s.wire.signed_headers(
        actor.identity, "POST", "/v0/connect", over, headers={"Content-Type": "application/cbor"}
    )
    chunked = await s.wire.request("POST", "/v0/connect", data=_chunked(over), headers=headers)
    expect_refusal(chunked, "too-large", what="1 MiB + 1 byte, chunked without a length")
    junk = b"\xff" * (MIB + 1)
    expect_refusal(
        await s.wire.call("/v0/state", actor.identity, raw=junk),
        "too-large",
        what="1 MiB + 1 bytes of junk (the cap comes before parsing)",
    )
    await _still_unused(s, token, actor)
    # Exactly the cap is a body like any other ([API-2]: 1 MiB in place of 65536).
    exact = body(pad=bytes(MIB - len(body(pad=b"")) - 4))
    if len(exact) != MIB:
        raise Failed(f"internal: the body at the cap is {len(exact)} bytes")
    expect_status(
        await s.wire.call("/v0/state", actor.identity, raw=exact), 200, what="a body of exactly 1 MiB"
    )


@case("encoding.compressed-body", requires=["API-4", "ERR-4"], adversarial=True)
async def compressed_body(s: Session) -> None:
    """A request body with a Content-Encoding other than identity is malformed; identity is accepted."""
    token = (await s.invitation())["token"]
    actor = Actor.create("Compressing clinic")
    plain = body(token=token, profile=actor.profile.encoded)
    for coding, data in (
        ("gzip", gzip.compress(plain)),
        ("deflate", zlib.compress(plain)),
        ("br", plain),
        ("GZIP", gzip.compress(plain)),
    ):
        answer = await s.wire.call(
            "/v0/connect", actor.identity, raw=data, extra={"Content-Encoding": coding}
        )
        expect_refusal(answer, "malformed", what=f"Content-Encoding: {coding}")
    await _still_unused(s, token, actor)
    answer = await s.wire.call("/v0/state", actor.identity, {}, extra={"Content-Encoding": "Identity"})
    expect_status(answer, 200, what="Content-Encoding: Identity")


# --- the field rules of records ------------------------------------------------------------------


@case(
    "encoding.record-version",
    requires=["REC-3", "VER-3", "SIG-9", "SIG-11", "ERR-4"],
    adversarial=True,
)
async def record_version(s: Session) -> None:
    """A profile payload whose v is absent, true, 1 or text is unsupported-version, before its other fields."""
    token = (await s.invitation())["token"]
    actor = Actor.create("Versioned clinic")
    for what, value in (("absent", ...), ("true", True), ("1", 1), ('"0"', "0")):
        payload = _profile_payload(actor, v=value)
        answer = await _connect(s, actor, token, _signed_profile(actor, payload))
        expect_refusal(answer, "unsupported-version", what=f"profile v {what}")
    # The version is checked before the fields: v 1 with an unknown field is still unsupported-version.
    payload = _profile_payload(actor, v=1, x=1, name=...)
    answer = await _connect(s, actor, token, _signed_profile(actor, payload))
    expect_refusal(answer, "unsupported-version", what="profile v 1 with other field errors")
    # ... and after the payload is known to be a map: an array payload is invalid-record.
    answer = await _connect(s, actor, token, _signed_profile(actor, cbor.encode([0])))
    expect_refusal(answer, "invalid-record", what="a payload that is an array")
    await _still_unused(s, token, actor)


@case(
    "encoding.record-field-rules",
    requires=["REC-1", "REC-4", "REC-5", "REC-6", "REC-8", "SIG-9", "ERR-4"],
    adversarial=True,
)
async def record_field_rules(s: Session) -> None:
    """A signed profile breaking one field rule (unknown, missing, null, unordered set, range) is invalid-record."""
    token = (await s.invitation())["token"]
    actor = Actor.create("Creative clinic")
    t = now()
    key = actor.keys.public_key
    enc = {"key": key, "nbf": t - DAY, "exp": t + DAY}
    breaks: list[tuple[str, dict[str, Any]]] = [
        ("an unknown field", {"x": 1}),
        ("the name missing", {"name": ...}),
        ("the enc array missing", {"enc": ...}),
        ("null as the patient", {"patient": None}),
        ("null as the name", {"name": None}),
        ("endpoints out of order", {"endpoints": ["https://b.example", "https://a.example"]}),
        ("an endpoint twice", {"endpoints": ["https://a.example", "https://a.example"]}),
        ("versions out of order", {"versions": [1, 0]}),
        ("seq 2^63", {"seq": 1 << 63}),
        ("a negative iat", {"iat": -1}),
        ("iat as text", {"iat": str(t)}),
        ("an empty name", {"name": ""}),
        ("a name of 129 characters", {"name": "n" * 129}),
        ("role hospital", {"role": "hospital"}),
        ("no encryption key", {"enc": []}),
        ("nine encryption keys", {"enc": [enc] * 9}),
        ("an encryption key with an extra field", {"enc": [{**enc, "alg": "x25519"}]}),
        ("an encryption key without exp", {"enc": [{"key": key, "nbf": t - DAY}]}),
        ("an encryption key of 31 bytes", {"enc": [{**enc, "key": key[:31]}]}),
        ("an encryption key ending when it starts", {"enc": [{**enc, "exp": t - DAY}]}),
        ("a clinic naming a patient", {"patient": s.patient.did}),
        ("a patient did that is not a did", {"role": "device", "patient": "patient.example"}),
        ("the version list without 0", {"versions": [1]}),
    ]
    for what, changes in breaks:
        answer = await _connect(s, actor, token, _signed_profile(actor, _profile_payload(actor, **changes)))
        expect_refusal(answer, "invalid-record", what=what)
    await _still_unused(s, token, actor)


@case("encoding.token-rules", requires=["REC-7", "REC-5", "ERR-4"], adversarial=True)
async def token_rules(s: Session) -> None:
    """A patient-signed grant whose purpose or actions break the token rules is refused by keep; nothing is kept."""
    actor = Actor.create("Token reader")
    good = s.patient.grant(actor.did)
    head = {ALG: -8, KID: s.patient.did.encode(), TYP: "fedrecord/grant"}
    payload = dict(good.record.to_wire())
    for what, changes in (
        ("a purpose starting with '-'", {"purpose": "-treatment"}),
        ("a purpose with a space", {"purpose": "treat ment"}),
        ("a purpose of 65 characters", {"purpose": "p" * 65}),
        ("a purpose with a non-ASCII letter", {"purpose": "trëatment"}),
        ("an empty purpose", {"purpose": ""}),
        ("actions out of order", {"act": ["read", "deposit"]}),
    ):
        bad = forge(head, {**payload, **changes}, s.patient.identity)
        answer = await s.wire.call(
            "/v0/manage", s.patient.identity, {"op": "keep", "records": [good.encoded, bad]}
        )
        expect_refusal(answer, "invalid-record", what=what)
    if (await s.grants_for(actor)):
        raise Failed("a refused keep stored the valid grant that came with the invalid one")
    # The control: a purpose of 64 characters, first a digit, with every allowed sign, is a token.
    longest = forge(head, {**payload, "purpose": "0" + "a.b_c:d-" * 7 + "zzzzzzz"}, s.patient.identity)
    answer = await s.wire.call("/v0/manage", s.patient.identity, {"op": "keep", "records": [longest]})
    expect_status(answer, 200, what="a grant with a 64-character purpose")
    if len(await s.grants_for(actor)) != 1:
        raise Failed("the kept grant is not in its audience's state answer")


# --- what the target writes ----------------------------------------------------------------------


def _texts(value: Any) -> list[str]:
    """Every text string inside a decoded value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _texts(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _texts(v)]
    return []


def _strict(data: bytes, what: str, *, record: bool = False) -> Any:
    try:
        value = cbor.decode(data, max_size=MIB, allow_sign1_tag=record)
    except FedrecordError as exc:
        raise Failed(f"{what} is not strict deterministic CBOR ({exc.code.value})") from None
    again = cbor2.dumps(value, canonical=True) if record else cbor.encode(value)
    if again != data:
        raise Failed(f"{what} does not re-encode to the same bytes")
    return value


@case(
    "encoding.target-writes-strictly",
    requires=["CBOR-12", "REC-9", "REC-2", "API-2", "API-7", "ID-1", "ID-5", "VER-1"],
)
async def target_writes_strictly(s: Session) -> None:
    """Every answer and record the target writes is strict deterministic CBOR whose fields follow their rules."""
    actor = Actor.create("Strict reader")
    token = (await s.invitation())["token"]
    connected = await _connect(s, actor, token, actor.profile.encoded)
    expect_status(connected, 201, what="connect")
    state = await s.wire.call("/v0/state", actor.identity, {})
    expect_status(state, 200, what="state")
    refusal = await _connect(s, actor, token, actor.profile.encoded)
    profile_answer = await s.wire.get("/v0/profile")
    health = await s.wire.get("/v0/health")
    for what, answer in (
        ("the connect answer", connected),
        ("the state answer", state),
        ("the replay refusal", refusal),
        ("the health answer", health),
    ):
        value = _strict(answer.body, what)
        if answer.headers.get("Content-Type", "").split(";")[0].strip() != "application/cbor":
            raise Failed(f"{what} is not sent as application/cbor")
        if what != "the replay refusal" and (type(value) is not dict or value.get("v") != 0):
            raise Failed(f"{what} is not a map carrying v 0")
    # The records: each opens as its type (strict envelope and payload, every field rule) and re-encodes.
    records: list[tuple[str, bytes, type[Any]]] = [
        ("the profile", profile_answer.body, NodeProfile),
        ("the connect grant", connected.data["grant"], Grant),
        ("the profile in the connect answer", connected.data["profile"], NodeProfile),
        ("the state head", state.data["head"], StateHead),
    ]
    records += [(f"grant {i} of the state answer", g, Grant) for i, g in enumerate(state.data["grants"])]
    for what, encoded, kind in records:
        try:
            opened = open_record(encoded, kind)
        except FedrecordError as exc:
            raise Failed(f"{what} does not open as {kind.TYPE.value}: {exc.code.value}") from None
        if opened.signer != s.patient.did:
            raise Failed(f"{what} is not signed by the patient's node")
        _strict(encoded, what, record=True)
        # [REC-2]: the signer is named by the envelope's kid only, never again in the payload.
        if s.patient.did in _texts(opened.record.to_wire()):
            raise Failed(f"{what} repeats its own signer in its payload")
    profile = open_record(profile_answer.body, NodeProfile).record
    # [API-7]: health tells nothing the signed profile does not hold.
    expected_health = {"v": 0, "node": s.patient.did, "role": profile.role, "versions": list(profile.versions)}
    if health.data != expected_health:
        raise Failed(f"the health answer {health.data!r} is not {expected_health!r}")
    # [VER-1]: the profile lists the version it speaks, as the health answer does.
    if 0 not in profile.versions or list(health.data.get("versions", [])) != list(profile.versions):
        raise Failed(f"the profile lists versions {profile.versions}, health {health.data.get('versions')}")
    # [ID-5]: a current X25519 key, its own key pair, not derived from the signing key.
    t = now()
    current = profile.encryption_key_at(t)
    if current is None:
        raise Failed("the profile has no encryption key valid now")
    seed = s.patient.identity.seed
    derived = {
        nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(s.patient.identity.public_key),
        nacl.bindings.crypto_box_seed_keypair(seed)[0],
        nacl.bindings.crypto_scalarmult_base(hashlib.sha512(seed).digest()[:32]),
    }
    for key in profile.enc_keys:
        if len(key.key) != 32 or not key.nbf < key.exp:
            raise Failed("an encryption key of the profile is not 32 bytes with nbf < exp")
        if key.key in derived:
            raise Failed("an encryption key of the profile is derived from the signing key")


@case("encoding.body-cap-before-reading", requires=["API-3"], adversarial=True)
async def body_cap_before_reading(s: Session) -> None:
    """A request announcing a body over 1 MiB is refused at once, before the node waits for any of it."""
    url = URL(s.wire.base_url)
    host, port = url.host or "127.0.0.1", url.port or 80
    head = (
        f"POST /v0/state HTTP/1.1\r\nHost: {url.authority}\r\nContent-Type: application/cbor\r\n"
        f"Content-Length: {MIB + 1}\r\n\r\n"
    )
    # Nothing of the body is sent: a node that reads before it checks the length waits for it.
    answer = await raw_exchange(host, port, head.encode(), read_timeout=5)
    if not answer:
        raise Failed("no answer within 5 s to a head announcing 1 MiB + 1 byte: the node waits for the body")
    if status_of(answer) != 413:
        first_line = answer.split(b"\r\n", 1)[0]
        raise Failed(f"a head announcing 1 MiB + 1 byte answered {first_line!r}, not 413")
