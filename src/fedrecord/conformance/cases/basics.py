"""Profile, health and the shape of every answer (Sections 15.1 to 15.3)."""

from __future__ import annotations

from fedrecord.core import NodeProfile, cbor, open_record
from fedrecord.core.errors import FedrecordError

from ..registry import Failed, case
from ..session import Session, expect_refusal


@case("basics.profile", requires=["API-7", "SIG-1", "ID-1"])
async def profile(s: Session) -> None:
    """GET /v0/profile answers the patient node's signed profile, unsigned request, role patient."""
    answer = await s.wire.get("/v0/profile")
    if answer.status != 200:
        raise Failed(f"GET /v0/profile answered {answer.describe()}")
    try:
        opened = open_record(answer.body, NodeProfile)
    except FedrecordError as exc:
        raise Failed(f"the profile does not open: {exc.code.value}") from None
    if opened.signer != s.patient.did:
        raise Failed("the profile is not signed by the patient's key")
    if opened.record.role != "patient" or 0 not in opened.record.versions:
        raise Failed(f"the profile says role {opened.record.role!r}, versions {opened.record.versions!r}")


@case("basics.health", requires=["API-7"])
async def health(s: Session) -> None:
    """GET /v0/health answers {v: 0, node, role, versions} without a signature."""
    answer = await s.wire.get("/v0/health")
    if answer.status != 200:
        raise Failed(f"GET /v0/health answered {answer.describe()}")
    try:
        data = cbor.decode(answer.body)
    except FedrecordError as exc:
        raise Failed(f"the health answer is not strict CBOR: {exc.code.value}") from None
    expected = {"v": 0, "node": s.patient.did, "role": "patient"}
    if (
        type(data) is not dict
        or any(data.get(k) != v for k, v in expected.items())
        or 0 not in data.get("versions", [])
    ):
        raise Failed(f"the health answer is {data!r}")


@case("basics.unknown-path", requires=["API-1", "ERR-2"], adversarial=True)
async def unknown_path(s: Session) -> None:
    """A path the API does not define is answered not-found (404) with an error body."""
    expect_refusal(await s.wire.get("/v0/no-such-endpoint"), "not-found")
    expect_refusal(
        await s.wire.get("/v0/invitation"), "not-found", what="/v0/invitation serves nothing in v0"
    )


@case("basics.wrong-method", requires=["API-1"], adversarial=True)
async def wrong_method(s: Session) -> None:
    """A method a served path does not take is answered malformed with HTTP status 405."""
    expect_refusal(await s.wire.get("/v0/fetch"), "malformed", 405)
    expect_refusal(await s.wire.request("DELETE", "/v0/profile"), "malformed", 405)
