"""HTTP message signatures (Section 14) and signed records (Section 5), attacked from the outside.

Request signatures are built here by hand (:func:`hand_signed`), from the
signature base of Section 14.2, so that any parameter, component or label can
be wrong on purpose; every case first checks that its baseline, built the same
way, is accepted.  Records are forged with :func:`fedrecord.vectors.record_cases.forge`
and presented as the requester's own profile in a connect request, whose
refusal must leave the invitation unused ([ERR-4]).
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import cbor2
from multidict import CIMultiDict

from fedrecord.core import Grant, SigningIdentity, cbor, open_record
from fedrecord.core.identity import DID_KEY_PREFIX, _b58encode
from fedrecord.core.records import Revocation
from fedrecord.http.aiohttp_signing import signed_target_uri
from fedrecord.vectors import identity_cases, record_cases
from fedrecord.vectors.record_cases import forge

from ..actors import Actor, now
from ..registry import Failed, case
from ..session import Session, expect_refusal, expect_status
from ..wire import CBOR_TYPE, Answer, Wire, b64, body, body_of, raw_exchange, status_of

OPAQUE = "signature did not verify"
ALG, KID, TYP = 1, 4, 16
PROFILE = "fedrecord/node-profile"


class Raw(str):
    """A parameter value written into Signature-Input as is (not as a quoted string)."""


# --- requests signed by hand ----------------------------------------------------------------------


def default_params(
    signer: SigningIdentity, *, t: int | None = None, lifetime: int = 60
) -> list[tuple[str, Any]]:
    """The six parameters of [HTTP-3], in the order the reference writes them."""
    t = now() if t is None else t
    return [
        ("created", t),
        ("keyid", signer.did),
        ("alg", "ed25519"),
        ("expires", t + lifetime),
        ("nonce", b64(os.urandom(16))),
        ("tag", "fedrecord/v0"),
    ]


def _param(value: Any) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, bool):
        return "?1" if value else "?0"
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _digest(data: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"


def hand_signed(
    wire: Wire,
    signer: SigningIdentity,
    path: str,
    data: bytes | None,
    *,
    components: Sequence[str] | None = None,
    params: Sequence[tuple[str, Any]] | None = None,
    key: SigningIdentity | None = None,
    label: str = "fr",
    authority: str | None = None,
    headers: Mapping[str, str] | None = None,
    method: str = "POST",
) -> CIMultiDict[str]:
    """The header fields of a request signed as Section 14.2 says, each part replaceable.

    ``components`` are serialised component identifiers (``'"@method"'``);
    ``params`` the signature parameters in order; ``key`` signs in place of
    ``signer`` (whose did stays the ``keyid``); ``authority`` signs (and sends
    in ``Host``) another authority than the target's.
    """
    base_url = wire.base_url
    if authority is not None:
        base_url = base_url.split("://", 1)[0] + "://" + authority
    _, host, target_uri = signed_target_uri(base_url + path)
    fields: CIMultiDict[str] = CIMultiDict({"Content-Type": CBOR_TYPE, **(headers or {})})
    fields["Host"] = host
    values = {
        "@method": method,
        "@target-uri": target_uri,
        "@authority": host.lower(),
        "fedrecord-streamed": fields.get("Fedrecord-Streamed", ""),
        "range": fields.get("Range", ""),
        "content-type": fields.get("Content-Type", ""),
    }
    if data:
        fields["Content-Digest"] = _digest(data)
        values["content-digest"] = fields["Content-Digest"]
    if components is None:
        components = ['"@method"', '"@target-uri"', '"@authority"'] + (['"content-digest"'] if data else [])
    if params is None:
        params = default_params(signer)
    inner = "(" + " ".join(components) + ")" + "".join(f";{name}={_param(v)}" for name, v in params)
    lines = []
    for component in components:
        name = component.split(";", 1)[0].strip('"')
        lines.append(f"{component}: {values.get(name, '')}")
    lines.append(f'"@signature-params": {inner}')
    signature = (key or signer).sign("\n".join(lines).encode("ascii"))
    fields["Signature-Input"] = f"{label}={inner}"
    fields["Signature"] = f"{label}=:{base64.b64encode(signature).decode()}:"
    return fields


async def send(wire: Wire, path: str, data: bytes | None, headers: CIMultiDict[str]) -> Answer:
    return await wire.request("POST", path, data=data, headers=headers)


async def _baseline(s: Session, actor: Actor) -> None:
    """The control every hand-signed case starts from: a hand-signed state request of a node the target
    knows is accepted."""
    await s.make_known(actor)
    data = body()
    answer = await send(s.wire, "/v0/state", data, hand_signed(s.wire, actor.identity, "/v0/state", data))
    expect_status(answer, 200, what="set-up: a state request signed by hand as Section 14.2 says")


def _opaque(answer: Answer, what: str) -> None:
    expect_refusal(answer, "bad-signature", what=what)
    message = cbor.decode(answer.body).get("message")
    if message != OPAQUE:
        raise Failed(f"{what}: the bad-signature message is {message!r}, not {OPAQUE!r} ([ERR-3])")


def _unsigned(answer: Answer, what: str) -> None:
    if "Signature" in answer.headers or "Signature-Input" in answer.headers:
        raise Failed(f"{what}: a refusal given before the request verified carries a signature")


async def _token(s: Session) -> bytes:
    return bytes((await s.invitation())["token"])


async def _still_unused(s: Session, token: bytes, *hostile: Actor) -> None:
    """The invitation was not consumed, and no hostile actor became known or received a grant ([ERR-4])."""
    for actor in hostile:
        answer = await s.wire.call("/v0/state", actor.identity, {})
        own = s.known_grant(actor)
        if own is None and answer.status != 404:
            raise Failed(f"after a refused connect, {actor.name}'s state request answered {answer.describe()}")
        if own is not None:
            expect_status(answer, 200, what=f"the state request of {actor.name}")
            grants = {open_record(g, Grant).id for g in answer.data["grants"]}
            if grants - {own}:
                raise Failed(f"a refused connect left a grant addressed to {actor.name}")
    honest = Actor.create("Honest clinic")
    answer = await s.wire.call(
        "/v0/connect", honest.identity, {"token": token, "profile": honest.profile.encoded}
    )
    if answer.status != 201:
        raise Failed(f"the invitation no longer connects after the refusals ({answer.describe()})")


def _connect_body(token: bytes, profile: bytes) -> bytes:
    return body(token=token, profile=profile)


# --- request signatures ---------------------------------------------------------------------------


@case(
    "signatures.unsigned-request",
    requires=["HTTP-1", "HTTP-7", "HTTP-14", "ERR-3", "API-5", "ERR-4"],
    adversarial=True,
)
async def unsigned_request(s: Session) -> None:
    """An unsigned request to a signed endpoint is bad-signature, opaque and unsigned; nothing is stored."""
    token = await _token(s)
    actor = Actor.create("Unsigned clinic")
    data = _connect_body(token, actor.profile.encoded)
    answer = await s.wire.call("/v0/connect", None, raw=data)
    _opaque(answer, "an unsigned connect")
    _unsigned(answer, "an unsigned connect")
    for path in ("/v0/state", "/v0/list", "/v0/fetch", "/v0/manage", "/v0/records", "/v0/sync"):
        answer = await s.wire.call(path, None, {})
        _opaque(answer, f"an unsigned POST {path}")
    # Half a signature is no signature.
    for dropped in ("Signature", "Signature-Input"):
        headers = s.wire.signed_headers(actor.identity, "POST", "/v0/connect", data)
        del headers[dropped]
        _opaque(await send(s.wire, "/v0/connect", data, headers), f"a connect without {dropped}")
    await _still_unused(s, token, actor)


@case(
    "signatures.wrong-key",
    requires=["HTTP-2", "ID-4", "ERR-3", "ERR-4"],
    adversarial=True,
)
async def wrong_key(s: Session) -> None:
    """A request signed by another key than its keyid, or with a broken signature, is bad-signature."""
    await _baseline(s, actor := Actor.create("Impersonated clinic"))
    token = await _token(s)
    data = _connect_body(token, actor.profile.encoded)
    mallory = Actor.create("Mallory")
    answer = await send(
        s.wire,
        "/v0/connect",
        data,
        hand_signed(s.wire, actor.identity, "/v0/connect", data, key=mallory.identity),
    )
    _opaque(answer, "a connect signed by another key than its keyid")
    for what, signature in (
        ("a 63-byte signature", base64.b64encode(bytes(63)).decode()),
        ("an all-zero signature", base64.b64encode(bytes(64)).decode()),
        ("an empty signature", ""),
    ):
        headers = hand_signed(s.wire, actor.identity, "/v0/connect", data)
        headers["Signature"] = f"fr=:{signature}:"
        _opaque(await send(s.wire, "/v0/connect", data, headers), what)
    headers = hand_signed(s.wire, actor.identity, "/v0/connect", data)
    sig = bytearray(base64.b64decode(headers["Signature"][4:-1]))
    sig[0] ^= 1
    headers["Signature"] = f"fr=:{base64.b64encode(bytes(sig)).decode()}:"
    _opaque(await send(s.wire, "/v0/connect", data, headers), "a signature with one bit flipped")
    # [ID-4] step 4: a canonical did of a key that is no curve point fails as bad-key, after the signature.
    not_a_point = DID_KEY_PREFIX + _b58encode(b"\xed\x01\x02" + bytes(31))
    params = [(k, not_a_point if k == "keyid" else v) for k, v in default_params(actor.identity)]
    answer = await send(
        s.wire, "/v0/connect", data, hand_signed(s.wire, actor.identity, "/v0/connect", data, params=params)
    )
    expect_refusal(answer, "bad-key", what="a keyid whose key is not a curve point")
    await _still_unused(s, token, actor)


@case("signatures.content-digest", requires=["HTTP-5", "HTTP-10", "ERR-4"], adversarial=True)
async def content_digest(s: Session) -> None:
    """A Content-Digest that is absent, of another form or of other content is bad-signature; no nonce is kept."""
    token = await _token(s)
    actor = Actor.create("Digest forger")
    await s.make_known(actor)  # its last, valid, state request is answered ([API-16])
    data = _connect_body(token, actor.profile.encoded)
    other = _connect_body(bytes(32), actor.profile.encoded)
    digest = _digest(data)
    sha512 = "sha-512=:" + base64.b64encode(hashlib.sha512(data).digest()).decode() + ":"
    nonce = b64(os.urandom(16))
    params = [(k, nonce if k == "nonce" else v) for k, v in default_params(actor.identity)]
    for what, field, sent in (
        ("the body changed after signing", digest, other),
        ("a digest of other content", _digest(other), data),
        ("a sha-512 digest only", sha512, data),
        ("a second member", f"{digest}, {sha512}", data),
        ("a digest with a parameter", f"{digest};x=1", data),
        ("an unparsable digest", "sha-256=" + digest[9:-1], data),
        ("no digest", None, data),
    ):
        headers = hand_signed(s.wire, actor.identity, "/v0/connect", data, params=params)
        if field is None:
            del headers["Content-Digest"]
        else:
            headers["Content-Digest"] = field
        _opaque(await send(s.wire, "/v0/connect", sent, headers), what)
    # A signature made for a request without content does not carry a body.
    headers = hand_signed(s.wire, actor.identity, "/v0/connect", None, params=params)
    headers["Content-Digest"] = digest
    _opaque(await send(s.wire, "/v0/connect", data, headers), "a body added to a request signed without one")
    # [HTTP-10]: none of those refusals recorded the nonce; the same nonce in a valid request is accepted.
    await _still_unused(s, token, actor)
    data = body()
    answer = await send(
        s.wire, "/v0/state", data, hand_signed(s.wire, actor.identity, "/v0/state", data, params=params)
    )
    expect_status(answer, 200, what="the nonce of the refused requests, in a valid one")


@case("signatures.covered-components", requires=["HTTP-4"], adversarial=True)
async def covered_components(s: Session) -> None:
    """A signature covering another component list than the profile's is bad-signature (Range included)."""
    actor = Actor.create("Component shuffler")
    await _baseline(s, actor)
    data = body()
    method, target, authority, digest = '"@method"', '"@target-uri"', '"@authority"', '"content-digest"'
    for what, components in (
        ("@authority left out", [method, target, digest]),
        ("content-digest left out", [method, target, authority]),
        ("the components in another order", [target, method, authority, digest]),
        ("content-type added", [method, target, authority, digest, '"content-type"']),
        ("a parameter on @method", ['"@method";req', target, authority, digest]),
        ("@method twice", [method, method, target, authority, digest]),
        (
            "fedrecord-streamed in place of content-digest",
            [method, target, authority, '"fedrecord-streamed"'],
        ),
        ("no component", []),
    ):
        headers = hand_signed(s.wire, actor.identity, "/v0/state", data, components=components)
        _opaque(await send(s.wire, "/v0/state", data, headers), what)
    # A Range field added after signing changes the list the verifier expects.
    headers = hand_signed(s.wire, actor.identity, "/v0/state", data)
    headers["Range"] = "bytes=0-"
    _opaque(await send(s.wire, "/v0/state", data, headers), "a Range field added after signing")
    # An empty request covers no digest: the three request components alone.
    headers = hand_signed(
        s.wire, actor.identity, "/v0/state", None, components=[method, target, authority, digest]
    )
    _opaque(await send(s.wire, "/v0/state", None, headers), "an empty request covering content-digest")


@case("signatures.parameters", requires=["HTTP-3", "HTTP-6", "HTTP-7", "HTTP-14"], adversarial=True)
async def parameters(s: Session) -> None:
    """Signature parameters: a wrong type or nonce form is malformed, another set or value bad-signature."""
    actor = Actor.create("Parameter fiddler")
    await _baseline(s, actor)
    data = body()
    t = now()

    def edited(**changes: Any) -> list[tuple[str, Any]]:
        params = default_params(actor.identity, t=t)
        out = [(k, changes.get(k, v)) for k, v in params if changes.get(k, v) is not ...]
        return out + [(k, v) for k, v in changes.items() if k not in dict(params) and v is not ...]

    refusals: list[tuple[str, str, list[tuple[str, Any]]]] = [
        ("no nonce", "bad-signature", edited(nonce=...)),
        ("no tag", "bad-signature", edited(tag=...)),
        ("no alg", "bad-signature", edited(alg=...)),
        ("no expires", "bad-signature", edited(expires=...)),
        ("an added parameter", "bad-signature", edited(x="y")),
        ("alg ed25519ph", "bad-signature", edited(alg="ed25519ph")),
        ("alg ecdsa-p256-sha256", "bad-signature", edited(alg="ecdsa-p256-sha256")),
        ("tag fedrecord/v1", "bad-signature", edited(tag="fedrecord/v1")),
        ("a lifetime of 301 s", "bad-signature", edited(expires=t + 301)),
        ("a lifetime of 0 s", "bad-signature", edited(expires=t)),
        ("expires before created", "bad-signature", edited(expires=t - 10)),
        ("created as a string", "malformed", edited(created=str(t))),
        ("created negative", "malformed", edited(created=-1, expires=59)),
        ("created as a decimal", "malformed", edited(created=Raw(f"{t}.5"))),
        ("keyid as an integer", "malformed", edited(keyid=7)),
        ("a nonce of 21 characters", "malformed", edited(nonce="A" * 21)),
        ("a nonce of 65 characters", "malformed", edited(nonce="A" * 65)),
        ("a nonce with '+'", "malformed", edited(nonce="+" + "A" * 22)),
        ("a nonce with padding", "malformed", edited(nonce="A" * 22 + "==")),
        ("a nonce as a byte sequence", "malformed", edited(nonce=Raw(":" + "A" * 24 + ":"))),
    ]
    for what, code, params in refusals:
        answer = await send(
            s.wire, "/v0/state", data, hand_signed(s.wire, actor.identity, "/v0/state", data, params=params)
        )
        expect_refusal(answer, code, what=what)
        _unsigned(answer, what)
    # What the profile allows: any order, a 64-character nonce, a lifetime of 300 s.
    for what, params in (
        ("the parameters in another order", list(reversed(edited()))),
        ("a nonce of 64 characters", edited(nonce="a-_Z" * 16)),
        ("a lifetime of 300 s", edited(expires=t + 300)),
    ):
        answer = await send(
            s.wire, "/v0/state", data, hand_signed(s.wire, actor.identity, "/v0/state", data, params=params)
        )
        expect_status(answer, 200, what=what)


@case("signatures.structured-fields", requires=["HTTP-1", "HTTP-7"], adversarial=True)
async def structured_fields(s: Session) -> None:
    """Signature fields that are not the profile's structured fields are malformed; other labels are ignored."""
    actor = Actor.create("Field mangler")
    await _baseline(s, actor)
    data = body()
    good = hand_signed(s.wire, actor.identity, "/v0/state", data)
    inner = good["Signature-Input"][3:]
    value = good["Signature"][3:]
    for what, code, signature_input, signature in (
        ("Signature-Input not a dictionary", "malformed", "fr=(", good["Signature"]),
        ("Signature not a dictionary", "malformed", good["Signature-Input"], "fr=:abc"),
        ("the fr input not an inner list", "malformed", 'fr="x"', good["Signature"]),
        ("the fr signature not a byte sequence", "malformed", good["Signature-Input"], 'fr="abc"'),
        ("the fr signature with a parameter", "malformed", good["Signature-Input"], f"fr={value};x=1"),
        ("the key fr twice", "malformed", f"fr={inner}, fr={inner}", good["Signature"]),
        ("only another label", "bad-signature", f"sig={inner}", f"sig={value}"),
        ("fr only in Signature-Input", "bad-signature", good["Signature-Input"], f"sig={value}"),
    ):
        headers = hand_signed(s.wire, actor.identity, "/v0/state", data)
        headers["Signature-Input"] = signature_input
        headers["Signature"] = signature
        answer = await send(s.wire, "/v0/state", data, headers)
        expect_refusal(answer, code, what=what)
    # [HTTP-1]: a well-formed member of another label (an intermediary's) is ignored.
    headers = hand_signed(s.wire, actor.identity, "/v0/state", data)
    other = hand_signed(s.wire, Actor.create("Proxy").identity, "/v0/state", data)
    headers["Signature-Input"] = f"proxy={other['Signature-Input'][3:]}, {headers['Signature-Input']}"
    headers["Signature"] = f"{headers['Signature']}, proxy={other['Signature'][3:]}"
    expect_status(await send(s.wire, "/v0/state", data, headers), 200, what="an added label beside fr")


@case("signatures.time-window", requires=["HTTP-8", "HTTP-10", "HTTP-14"], adversarial=True)
async def time_window(s: Session) -> None:
    """A signature created an hour ahead is not-yet-valid, one past its expires expired; neither keeps its nonce."""
    actor = Actor.create("Time traveller")
    await _baseline(s, actor)
    token = await _token(s)
    data = _connect_body(token, actor.profile.encoded)
    t = now()
    nonce = b64(os.urandom(16))
    for what, code, created, lifetime in (
        ("created an hour ahead", "not-yet-valid", t + 3600, 60),
        ("expired two minutes ago", "expired", t - 180, 60),
        ("expires now", "expired", t - 60, 60),
        ("expired long ago with the longest lifetime", "expired", t - 86_400, 300),
    ):
        params = [
            (k, nonce if k == "nonce" else v)
            for k, v in default_params(actor.identity, t=created, lifetime=lifetime)
        ]
        answer = await send(
            s.wire,
            "/v0/connect",
            data,
            hand_signed(s.wire, actor.identity, "/v0/connect", data, params=params),
        )
        expect_refusal(answer, code, what=what)
        _unsigned(answer, what)
    await _still_unused(s, token, actor)
    params = [(k, nonce if k == "nonce" else v) for k, v in default_params(actor.identity)]
    data = body()
    answer = await send(
        s.wire, "/v0/state", data, hand_signed(s.wire, actor.identity, "/v0/state", data, params=params)
    )
    expect_status(answer, 200, what="the nonce of the refused requests, in a valid one")


def _target(s: Session) -> tuple[str, int]:
    authority = s.wire.base_url.split("://", 1)[1].split("/", 1)[0]
    host, _, port = authority.rpartition(":")
    return host.strip("[]"), int(port)


def _raw_request(target: str, headers: CIMultiDict[str], data: bytes, *, hosts: Sequence[str]) -> bytes:
    lines = [f"POST {target} HTTP/1.1"] + [f"Host: {h}" for h in hosts]
    lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() != "host"]
    lines += [f"Content-Length: {len(data)}", "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


@case("signatures.host-authority", requires=["HTTP-9", "ERR-4"], adversarial=True)
async def host_authority(s: Session) -> None:
    """A request signed for another authority, or with no single origin-form target, is bad-signature."""
    actor = Actor.create("Misdirected clinic")
    await _baseline(s, actor)
    token = await _token(s)
    data = _connect_body(token, actor.profile.encoded)
    host, port = _target(s)
    elsewhere = f"device.example:{port}"
    signed_elsewhere = hand_signed(s.wire, actor.identity, "/v0/connect", data, authority=elsewhere)
    _opaque(await send(s.wire, "/v0/connect", data, signed_elsewhere), "signed for and sent to another Host")
    for what, name, value in (
        ("X-Forwarded-Host", "X-Forwarded-Host", elsewhere),
        ("Forwarded", "Forwarded", f"host={elsewhere}"),
    ):
        headers = signed_elsewhere.copy()
        headers["Host"] = s.wire.base_url.split("://", 1)[1]
        headers[name] = value
        _opaque(await send(s.wire, "/v0/connect", data, headers), f"the other authority in {what}")
    good = hand_signed(s.wire, actor.identity, "/v0/connect", data)
    own = good["Host"]
    for what, target, hosts in (
        ("two Host fields", "/v0/connect", [own, own]),
        ("no Host field", "/v0/connect", []),
        ("an absolute-form request target", f"http://{own}/v0/connect", [own]),
    ):
        raw = await raw_exchange(host, port, _raw_request(target, good, data, hosts=hosts), read_timeout=10)
        refusal = Answer(status_of(raw) or 0, {}, body_of(raw))
        _opaque(refusal, what)
    await _still_unused(s, token, actor)


@case("signatures.replay", requires=["HTTP-10", "HTTP-14"], adversarial=True)
async def replay(s: Session) -> None:
    """A request sent again byte for byte is refused as replay, also when its first sending was refused."""
    actor = Actor.create("Replaying clinic")
    token = await _token(s)
    data = _connect_body(token, actor.profile.encoded)
    connected = await s.wire.call("/v0/connect", actor.identity, raw=data)
    expect_status(connected, 201, what="connect")
    expect_refusal(await s.wire.resend(connected, data), "replay", what="a replayed connect")
    first = await s.wire.call("/v0/state", actor.identity, {})
    expect_status(first, 200, what="state")
    expect_refusal(await s.wire.resend(first, body()), "replay", what="a replayed state request")
    if len(await s.grants_for(actor)) != 1:
        raise Failed("the replayed connect changed the grants of the clinic")
    # A request refused after it verified still spends its nonce.
    stranger = Actor.create("Stranger")
    unknown = _connect_body(os.urandom(32), stranger.profile.encoded)
    refused = await s.wire.call("/v0/connect", stranger.identity, raw=unknown)
    expect_refusal(refused, "not-found", what="connect with an unknown token")
    expect_refusal(await s.wire.resend(refused, unknown), "replay", what="a replayed refused connect")
    # The pair is (signer, nonce): the same nonce from another signer is a new request.
    nonce = b64(os.urandom(16))
    await s.make_known(stranger)
    for who in (actor, stranger):
        expect_status(
            await s.wire.call("/v0/state", who.identity, {}, nonce=nonce), 200, what="a shared nonce"
        )


@case("signatures.streamed-declaration", requires=["HTTP-11", "HTTP-7", "ERR-4"], adversarial=True)
async def streamed_declaration(s: Session) -> None:
    """A streamed request to an endpoint that takes none is bad-signature; Fedrecord-Streamed other than 1 malformed."""
    actor = Actor.create("Streaming clinic")
    token = await _token(s)
    data = _connect_body(token, actor.profile.encoded)
    headers = s.wire.signed_headers(
        actor.identity, "POST", "/v0/connect", None, headers={"Content-Type": CBOR_TYPE}, streamed=True
    )
    _opaque(await send(s.wire, "/v0/connect", data, headers), "a connect signed as streamed")
    headers = s.wire.signed_headers(actor.identity, "POST", "/v0/state", None, streamed=True)
    _opaque(await send(s.wire, "/v0/state", None, headers), "a state request signed as streamed")
    headers = s.wire.signed_headers(
        actor.identity, "POST", "/v0/connect", data, headers={"Content-Type": CBOR_TYPE}
    )
    headers["Fedrecord-Streamed"] = "1"
    _opaque(await send(s.wire, "/v0/connect", data, headers), "Fedrecord-Streamed added after signing")
    for value in ("2", "yes", "0"):
        headers = s.wire.signed_headers(
            actor.identity, "POST", "/v0/connect", data, headers={"Content-Type": CBOR_TYPE}
        )
        headers["Fedrecord-Streamed"] = value
        expect_refusal(
            await send(s.wire, "/v0/connect", data, headers), "malformed", what=f"Fedrecord-Streamed: {value}"
        )
    await _still_unused(s, token, actor)


@case("signatures.field-size", requires=["HTTP-15", "HTTP-1", "HTTP-14"], adversarial=True)
async def field_size(s: Session) -> None:
    """A Signature or Signature-Input field over 4096 characters, all lines combined, is too-large."""
    actor = Actor.create("Long-winded clinic")
    await _baseline(s, actor)
    data = body()

    def padded(total: int) -> CIMultiDict[str]:
        headers = hand_signed(s.wire, actor.identity, "/v0/state", data)
        filler = 'pad=("x");p="' + "a" * total + '"'
        excess = len(filler) + 2 + len(headers["Signature-Input"]) - total
        headers["Signature-Input"] = (
            headers["Signature-Input"] + ", " + filler[: len(filler) - excess - 1] + '"'
        )
        headers["Signature"] = headers["Signature"] + ", pad=:" + base64.b64encode(bytes(64)).decode() + ":"
        return headers

    at_cap = padded(4096)
    if len(at_cap["Signature-Input"]) != 4096:
        raise Failed(f"internal: the padded field is {len(at_cap['Signature-Input'])} characters")
    expect_status(
        await send(s.wire, "/v0/state", data, at_cap), 200, what="a Signature-Input of 4096 characters"
    )
    answer = await send(s.wire, "/v0/state", data, padded(4097))
    expect_refusal(answer, "too-large", what="a Signature-Input of 4097 characters")
    _unsigned(answer, "a too-large field")
    headers = hand_signed(s.wire, actor.identity, "/v0/state", data)
    headers["Signature"] = headers["Signature"] + ", pad=:" + base64.b64encode(bytes(3100)).decode() + ":"
    expect_refusal(
        await send(s.wire, "/v0/state", data, headers), "too-large", what="a Signature of 4100+ characters"
    )
    # Two lines of 2100 characters each: combined, they pass the cap.
    headers = hand_signed(s.wire, actor.identity, "/v0/state", data)
    headers.add("Signature-Input", 'pad=("x");p="' + "a" * 2100 + '"')
    headers.add("Signature-Input", 'pad2=("x");p="' + "a" * 2100 + '"')
    expect_refusal(
        await send(s.wire, "/v0/state", data, headers), "too-large", what="three lines over 4096 together"
    )


@case("signatures.keyid-vectors", requires=["ID-2", "ID-3", "HTTP-2", "VEC-1"], adversarial=True)
async def keyid_vectors(s: Session) -> None:
    """Each did:key vector as a request's keyid: invalid ones are bad-key, valid ones sign accepted requests."""
    vectors = identity_cases.build().to_json()
    tests = [test for group in vectors["testGroups"] for test in group["tests"]]
    data = body()
    checked = 0
    for test in tests:
        if test["result"] == "valid":
            holder = Actor.create(f"Vector key {test['tcId']}", seed=bytes.fromhex(test["seed"]))
            signer = holder.identity
            if signer.did != test["did"]:
                raise Failed(f"internal: vector {test['tcId']} does not derive its did")
            await s.make_known(holder)  # state is answered to nodes the target knows ([API-16])
            answer = await send(s.wire, "/v0/state", data, hand_signed(s.wire, signer, "/v0/state", data))
            expect_status(answer, 200, what=f"keyid {test['did']} ({test['comment']})")
        else:
            stand_in = Actor.create("Key prober").identity
            params = [(k, test["did"] if k == "keyid" else v) for k, v in default_params(stand_in)]
            answer = await send(
                s.wire, "/v0/state", data, hand_signed(s.wire, stand_in, "/v0/state", data, params=params)
            )
            expect_refusal(answer, test["error"], what=f"keyid {test['did']!r} ({test['comment']})")
        checked += 1
    if checked < 10:
        raise Failed(f"the installed package holds only {checked} did:key vectors")


@case("signatures.answers-bound", requires=["HTTP-12", "API-5", "ERR-3"])
async def answers_bound(s: Session) -> None:
    """Answers to verified requests are signed by the patient and bound to them; earlier refusals are not signed."""
    actor = Actor.create("Careful clinic")
    await s.make_known(actor)
    state = await s.wire.call("/v0/state", actor.identity, {})
    expect_status(state, 200, what="state")
    if not state.signed_by(s.patient.did):
        raise Failed("the state answer is not signed by the patient's node and bound to the request")
    if "Content-Digest" not in state.headers:
        raise Failed("the signed state answer carries no Content-Digest")
    other = await s.wire.call("/v0/state", actor.identity, {})
    moved = replace(state, request_headers=other.request_headers)
    if moved.signed_by(s.patient.did):
        raise Failed("the state answer also verifies as the answer to another request: it is not bound")
    altered = replace(state, body=state.body + b"\x00")
    if altered.signed_by(s.patient.did):
        raise Failed("the state answer verifies with other content")
    token = await _token(s)
    connected = await s.wire.call(
        "/v0/connect", actor.identity, {"token": token, "profile": actor.profile.encoded}
    )
    expect_status(connected, 201, what="connect")
    if not connected.signed_by(s.patient.did):
        raise Failed("the connect answer is not signed by the patient's node")
    for what, answer in (
        (
            "a not-found given after the request verified",
            await s.wire.call(
                "/v0/connect", actor.identity, {"token": os.urandom(32), "profile": actor.profile.encoded}
            ),
        ),
        (
            "a malformed body given after the request verified",
            await s.wire.call("/v0/connect", actor.identity, {"profile": actor.profile.encoded}),
        ),
    ):
        if answer.status < 400 or answer.code is None:
            raise Failed(f"{what}: answered {answer.describe()}")
        if not answer.signed_by(s.patient.did):
            raise Failed(f"{what}: the refusal is not signed and bound to its request")
    refused = await s.wire.call("/v0/state", None, {})
    _opaque(refused, "an unsigned request")
    _unsigned(refused, "an unsigned request")


@case("signatures.fresh-invitations", requires=["SEC-3"])
async def fresh_invitations(s: Session) -> None:
    """Invitations never share a token, and the deposit grants of connects never share a nonce."""
    tokens = [bytes((await s.invitation())["token"]) for _ in range(8)]
    if any(len(t) != 32 for t in tokens) or len(set(tokens)) != len(tokens):
        raise Failed("two invitations share a token, or a token is not 32 bytes")
    if any(t == bytes(32) or len(set(t)) < 8 for t in tokens):
        raise Failed("an invitation token is not random-looking")
    nonces = set()
    for token in tokens[:3]:
        actor = Actor.create("Fresh clinic")
        answer = await s.wire.call(
            "/v0/connect", actor.identity, {"token": token, "profile": actor.profile.encoded}
        )
        expect_status(answer, 201, what="connect")
        nonces.add(open_record(answer.data["grant"], Grant).record.nonce)
    if len(nonces) != 3:
        raise Failed("two deposit grants share a nonce")


# --- signed records -----------------------------------------------------------------------------


def _head(actor: Actor, typ: str = PROFILE) -> dict[int, Any]:
    return {ALG: -8, KID: actor.did.encode(), TYP: typ}


async def _connect_with(s: Session, actor: Actor, token: bytes, profile: bytes) -> Answer:
    return await s.wire.call("/v0/connect", actor.identity, {"token": token, "profile": profile})


def _flip(data: bytes, index: int) -> bytes:
    changed = bytearray(data)
    changed[index] ^= 1
    return bytes(changed)


@case(
    "signatures.record-forgeries",
    requires=["SIG-8", "API-6", "ERR-3", "ID-4", "ERR-4"],
    adversarial=True,
)
async def record_forgeries(s: Session) -> None:
    """A connect profile not signed by the requester (forged, altered, relayed) is bad-signature, opaquely."""
    token = await _token(s)
    actor = Actor.create("Forging clinic")
    other = Actor.create("Relayed clinic")
    payload = actor.profile.record.to_wire()
    good = actor.profile.encoded
    for what, profile in (
        (
            "a profile naming the requester, signed by another key",
            forge(_head(actor), payload, other.identity),
        ),
        ("another node's valid profile relayed", other.profile.encoded),
        ("the last signature bit flipped", _flip(good, len(good) - 1)),
        ("the first signature byte changed", _flip(good, len(good) - 64)),
        ("a 63-byte signature", forge(_head(actor), payload, actor.identity, signature=bytes(63))),
        ("an all-zero signature", forge(_head(actor), payload, actor.identity, signature=bytes(64))),
        (
            "the payload changed after signing",
            forge(
                _head(actor),
                {**payload, "name": "Someone else"},
                actor.identity,
                signature=record_cases.forge_signature(_head(actor), payload, actor.identity),
            ),
        ),
    ):
        _opaque(await _connect_with(s, actor, token, profile), what)
    await _still_unused(s, token, actor, other)


@case(
    "signatures.record-envelope",
    requires=[
        "SIG-1",
        "SIG-2",
        "SIG-3",
        "SIG-4",
        "SIG-5",
        "SIG-6",
        "SIG-7",
        "SIG-11",
        "ID-2",
        "ID-3",
        "ERR-4",
    ],
    adversarial=True,
)
async def record_envelope(s: Session) -> None:
    """A connect profile with a COSE envelope or header of the wrong shape is refused with the first check's code."""
    token = await _token(s)
    actor = Actor.create("Envelope bender")
    payload = actor.profile.record.to_wire()
    head = _head(actor)
    me = actor.identity
    good = actor.profile.encoded
    parts = cbor2.loads(good).value
    small = DID_KEY_PREFIX + _b58encode(b"\xed\x01" + b"\x01" + bytes(31))
    cases: list[tuple[str, str, bytes]] = [
        ("untagged", "bad-header", forge(head, payload, me, tag=None)),
        ("tag 17", "forbidden-tag", forge(head, payload, me, tag=17)),
        ("three elements", "bad-header", cbor2.dumps(cbor2.CBORTag(18, parts[:3]))),
        ("a detached payload", "bad-header", cbor2.dumps(cbor2.CBORTag(18, [parts[0], {}, None, parts[3]]))),
        ("the protected header an array", "bad-header", forge(cbor2.dumps([1]), payload, me)),
        ("alg -7", "unsupported-algorithm", forge({**head, ALG: -7}, payload, me)),
        ("alg absent", "unsupported-algorithm", forge({KID: head[KID], TYP: PROFILE}, payload, me)),
        ("an empty protected header", "unsupported-algorithm", forge(b"", payload, me)),
        (
            "alg only unprotected",
            "unsupported-algorithm",
            forge({KID: head[KID], TYP: PROFILE}, payload, me, unprotected={ALG: -8}),
        ),
        (
            "alg -7 and an unprotected kid (alg first)",
            "unsupported-algorithm",
            forge({**head, ALG: -7}, payload, me, unprotected={KID: head[KID]}),
        ),
        ("an unprotected kid", "bad-header", forge(head, payload, me, unprotected={KID: head[KID]})),
        ("a protected content type", "bad-header", forge({**head, 3: 0}, payload, me)),
        ("kid removed", "bad-header", forge({ALG: -8, TYP: PROFILE}, payload, me)),
        ("typ removed", "bad-header", forge({ALG: -8, KID: head[KID]}, payload, me)),
        ("kid as text", "bad-header", forge({**head, KID: actor.did}, payload, me)),
        ("typ as an integer", "wrong-type", forge({**head, TYP: 61}, payload, me)),
        (
            "typ as an integer, bad signature (typ first)",
            "wrong-type",
            forge({**head, TYP: 61}, payload, me, signature=bytes(64)),
        ),
        ("typ grant", "wrong-type", forge({**head, TYP: "fedrecord/grant"}, payload, me)),
        ("typ unknown", "wrong-type", forge({**head, TYP: "fedrecord/profile"}, payload, me)),
        ("a valid grant in place of the profile", "wrong-type", actor.grant(s.patient.did).encoded),
        (
            "typ grant, bad signature (signature first)",
            "bad-signature",
            forge({**head, TYP: "fedrecord/grant"}, payload, me, signature=bytes(64)),
        ),
        ("kid not ASCII", "bad-key", forge({**head, KID: actor.did.encode() + "é".encode()}, payload, me)),
        ("kid not a did", "bad-key", forge({**head, KID: b"clinic.example"}, payload, me)),
        ("kid a small-order key", "bad-key", forge({**head, KID: small.encode()}, payload, me)),
        (
            "kid with a leading 1",
            "bad-key",
            forge({**head, KID: (DID_KEY_PREFIX + "1" + actor.did[9:]).encode()}, payload, me),
        ),
        ("kid uppercase", "bad-key", forge({**head, KID: actor.did.upper().encode()}, payload, me)),
        (
            "a non-shortest protected header",
            "non-canonical",
            forge(
                bytes.fromhex("a301380704") + cbor2.dumps(head[KID]) + b"\x10" + cbor2.dumps(PROFILE),
                payload,
                me,
            ),
        ),
        ("payload keys out of order", "non-canonical", forge(head, record_cases._reversed_map(payload), me)),
        (
            "a float in the payload",
            "unsupported-type",
            forge(head, cbor2.dumps({**payload, "iat": float(payload["iat"])}, canonical=True), me),
        ),
        ("a trailing byte", "trailing-bytes", good + b"\x00"),
        ("65537 bytes", "too-large", good + bytes(65537 - len(good))),
    ]
    for what, code, profile in cases:
        expect_refusal(await _connect_with(s, actor, token, profile), code, what=what)
    await _still_unused(s, token, actor)


@case("signatures.record-vectors", requires=["VEC-1", "SIG-11", "SIG-2", "SIG-3", "SIG-8"], adversarial=True)
async def record_vectors(s: Session) -> None:
    """Each invalid signed-record vector, kept beside a valid grant, is refused with its code and nothing is kept."""
    vectors = record_cases.build().to_json()
    tests = [
        test
        for group in vectors["testGroups"]
        for test in group["tests"]
        if test["result"] == "invalid"
        and test["expectedType"] == "fedrecord/grant"
        and "WrongType" not in test["flags"]
    ]
    if len(tests) < 25:
        raise Failed(f"the installed package holds only {len(tests)} invalid record vectors")
    actor = Actor.create("Vector reader")
    valid = s.patient.grant(actor.did)
    wrong = []
    for test in tests:
        record = bytes.fromhex(test["record"]) * test.get("recordRepeat", 1)
        answer = await s.wire.call(
            "/v0/manage", s.patient.identity, {"op": "keep", "records": [valid.encoded, record]}
        )
        try:
            expect_refusal(answer, test["error"])
        except Failed as exc:
            wrong.append(f"tcId {test['tcId']} ({test['comment']}): {exc}")
    if wrong:
        raise Failed(f"{len(wrong)} of {len(tests)} vectors answered wrongly: " + "; ".join(wrong[:6]))
    if (await s.grants_for(actor)):
        raise Failed("a refused keep stored the valid grant that came with an invalid record")


@case("signatures.record-ids", requires=["SIG-10", "SIG-8"])
async def record_ids(s: Session) -> None:
    """The target names records by the id of [SIG-10] and hands back the bytes it received unchanged."""
    actor = Actor.create("Id checker")
    kept = s.patient.grant(actor.did, purpose="research")
    await s.keep(kept)
    grants = (await s.grants_for(actor))
    if grants != [kept.encoded]:
        raise Failed("the state answer does not hand back the kept grant's bytes unchanged")
    expected = hashlib.sha256(b"fedrecord/v0/record-id" + _sig_structure(kept.encoded)).digest()
    if kept.id != expected:
        raise Failed("internal: the suite's record id is not the one of [SIG-10]")
    revoked = await s.manage("revoke", grant=expected)
    revocation = open_record(revoked["revocation"], Revocation)
    if revocation.record.grant != expected:
        raise Failed("the revocation does not name the grant by the id of [SIG-10]")
    state = await s.state(actor)
    if revoked["revocation"] not in state["revocations"]:
        raise Failed("the state answer does not hold the revocation as the manage answer gave it")


def _sig_structure(encoded: bytes) -> bytes:
    protected, _unprotected, payload, _signature = cbor2.loads(encoded).value
    return cbor2.dumps(["Signature1", protected, b"", payload])
