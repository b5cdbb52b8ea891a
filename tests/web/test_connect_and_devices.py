"""The "connect a clinic" and "my devices" pages (US-2, US-12; spec 15.4, 15.17, [API-47]).

In-process, over real nodes (:func:`tests.node_helpers.build_story`): the page
is served by aiohttp's test server over the patient's own ``PatientNode``,
and what the page shows is used as a person would use it: the invitation code
copied from the page connects a real clinic node, the QR code is decoded back
into the invitation's address, the device picked in step 2 holds a device
grant and reads the whole record, and cutting it off makes its grant -- and
the grant it gave the lab -- revoked.
"""

from __future__ import annotations

import base64
import html
import re
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from fedrecord.core import Code, RemoteProtocolError, Revocation
from fedrecord.node.wire import Invitation
from fedrecord.web import i18n
from fedrecord.web.app import make_web_app
from fedrecord.web.auth import set_password

from ..node_helpers import ServedNode, Story, build_story, now
from .conftest import PASSWORD, WEB_KDF
from .forms import csrf_of, forms_of

pytestmark = pytest.mark.asyncio(loop_scope="function")

CODE = re.compile(r'<code id="invitation-code" class="invite">([^<]+)</code>')
URL = re.compile(r'<code id="invitation-url" class="invite">([^<]+)</code>')
QR = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]+)">')


@dataclass
class Site:
    story: Story
    client: TestClient  # type: ignore[type-arg]
    root: Path

    async def get(self, path: str, *, language: str = "en") -> str:
        response = await self.client.get(path, headers={"Accept-Language": language})
        assert response.status == 200, (path, response.status)
        return await response.text()

    async def post(self, path: str, data: dict[str, str], *, csrf: bool = True) -> tuple[int, str, str]:
        """Post a form with the session's CSRF token: (status, Location, body)."""
        if csrf:
            data = {"csrf": csrf_of(await self.get("/record")), **data}
        response = await self.client.post(path, data=data, allow_redirects=False)
        return response.status, response.headers.get("Location", ""), await response.text()


async def signed_in_client(story: Story) -> TestClient:  # type: ignore[type-arg]
    client = TestClient(TestServer(make_web_app(story.patient.h, story.patient.patient)))
    await client.start_server()
    response = await client.post("/signin", data={"password": PASSWORD}, allow_redirects=False)
    assert response.status == 303
    return client


@pytest_asyncio.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    story = await build_story(tmp_path)
    set_password(story.patient.h.path, PASSWORD, limits=WEB_KDF)
    client = await signed_in_client(story)
    try:
        yield Site(story, client, tmp_path)
    finally:
        await client.close()
        await story.close()


def shown_code(body: str) -> str:
    found = CODE.search(body)
    assert found, "no invitation code in the page"
    return html.unescape(found.group(1))


# --- the QR code ----------------------------------------------------------------------------------


def png_pixels(png: bytes) -> tuple[int, int, list[list[int]]]:
    """(width, height, rows of 0 = black / 255 = white) of a greyscale PNG, checking its chunks' CRCs."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    at, chunks, data = 8, [], b""
    width = height = depth = 0
    while at < len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        kind, payload = png[at + 4 : at + 8], png[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", png[at + 8 + length : at + 12 + length])
        assert zlib.crc32(kind + payload) == crc, f"bad CRC in {kind!r}"
        chunks.append(kind)
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", payload)
            assert colour == 0 and interlace == 0, "segno writes black and white as non-interlaced greyscale"
        elif kind == b"IDAT":
            data += payload
        at += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND"
    raw = zlib.decompress(data)
    stride = (width * depth + 7) // 8
    rows: list[list[int]] = []
    previous = bytearray(stride)
    for y in range(height):
        line = raw[y * (stride + 1) : (y + 1) * (stride + 1)]
        kind, scan = line[0], bytearray(line[1:])
        for i in range(stride):
            left = scan[i - 1] if i else 0
            up, corner = previous[i], previous[i - 1] if i else 0
            if kind == 1:
                scan[i] = (scan[i] + left) & 0xFF
            elif kind == 2:
                scan[i] = (scan[i] + up) & 0xFF
            elif kind == 3:
                scan[i] = (scan[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                predictor = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                scan[i] = (scan[i] + predictor) & 0xFF
        previous = scan
        per_byte, top = 8 // depth, (1 << depth) - 1
        values = [(scan[x // per_byte] >> (8 - depth * (x % per_byte + 1))) & top for x in range(width)]
        rows.append([255 if v else 0 for v in values])
    return width, height, rows


def decode_qr(png: bytes) -> str:
    """The text of the QR code in ``png`` (zxing-cpp, a test extra)."""
    zxingcpp = pytest.importorskip(
        "zxingcpp", reason="zxing-cpp decodes the QR code: pip install -e '.[test]'"
    )
    width, height, rows = png_pixels(png)
    image = memoryview(bytes(v for row in rows for v in row)).cast("B", shape=[height, width])
    found = zxingcpp.read_barcodes(image)
    assert len(found) == 1, "exactly one QR code in the image"
    assert found[0].format == zxingcpp.BarcodeFormat.QRCode
    return str(found[0].text)


# --- connect a clinic -----------------------------------------------------------------------------


async def test_the_code_shown_connects_a_real_clinic_and_the_qr_code_decodes_to_the_invitation(
    site: Site,
) -> None:
    before = await site.get("/connect")
    # The story's lab and GP connected with invitations: both are listed, and both invitations as used.
    for name in ("Laboratoire Pasteur", "Cabinet du Dr Martin"):
        assert "connected on" in before and name in before
        assert f"Used by {name}" in before
    assert 'id="invite-days"' in before and 'value="7"' in before, "valid for 7 days unless chosen"

    status, location, _ = await site.post("/connect", {"label": "Hôpital <b>Nord</b>", "days": "3"})
    assert status == 303 and location.startswith("/connect?shown=")
    body = await site.get(location)
    assert "Invitation made." in body
    code, url = shown_code(body), html.unescape(URL.search(body).group(1))  # type: ignore[union-attr]
    invitation = Invitation.parse(code)
    assert invitation.node == site.story.patient.did
    assert Invitation.parse(url) == invitation and url == invitation.url()
    assert 'data-copy="invitation-code"' in body, "the Copy button of static/app.js"
    # Its expiry in plain words, 3 days from now; the label is shown escaped, never as markup.
    assert invitation.expires - now() in range(3 * 86_400 - 60, 3 * 86_400 + 1)
    assert "It works once, until " in body and "(in 3 days)." in body
    assert "Hôpital &lt;b&gt;Nord&lt;/b&gt;" in body and "<b>Nord" not in body
    # The QR code: a PNG whose code reads back as the invitation's address, with an alt text.
    qr = QR.search(body)
    assert qr, "an <img> with a data: PNG and an alt text"
    assert html.unescape(qr.group(2)) == "QR code of the invitation for Hôpital <b>Nord</b>"
    assert decode_qr(base64.b64decode(qr.group(1))) == url

    clinic = await ServedNode.create(site.root / "north", role="clinic", name="Hôpital Nord")
    try:
        connection = await clinic.clinic.connect(code, now=now())
        assert connection.patient == site.story.patient.did
        after = await site.get("/connect")
        assert "Used by Hôpital Nord" in after and "Hôpital Nord, connected on" in after
        # Used once: the same code is refused the second time.
        with pytest.raises(RemoteProtocolError) as caught:
            await clinic.clinic.connect(code, now=now())
        assert caught.value.code.value == "replay"
    finally:
        await clinic.stop()


async def test_refusals_of_the_invitation_form(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    rows_before = len(await site.story.patient.h.store.invitations())
    status, _, body = await site.post("/connect", {"label": "Clinic", "days": "7"}, csrf=False)
    assert status == 403 and "This form has expired" in body
    for label, days in (("", "7"), ("   ", "7"), ("x" * 81, "7")):
        status, _, body = await site.post("/connect", {"label": label, "days": days})
        assert status == 400 and "Please say who the invitation is for" in body
    for days in ("0", "31", "seven", "-2", ""):
        status, _, body = await site.post("/connect", {"label": "Clinic", "days": days})
        assert status == 400 and "whole number from 1 to 30" in body
        assert 'value="Clinic"' in body, "what was typed is kept"
    assert len(await site.story.patient.h.store.invitations()) == rows_before, "nothing made"
    # An error of the node is a message on the page, never a traceback or a 500.

    async def refusing(**_: object) -> None:
        raise RemoteProtocolError(Code.TOO_MANY, "too many invitations")

    monkeypatch.setattr(site.story.patient.patient, "create_invitation", refusing)
    status, _, body = await site.post("/connect", {"label": "Clinic", "days": "7"})
    assert status < 500 and "Your node could not do this" in body and "Traceback" not in body


async def test_an_invitation_is_shown_only_to_the_session_that_made_it(site: Site) -> None:
    _, location, _ = await site.post("/connect", {"label": "Clinic", "days": "7"})
    assert CODE.search(await site.get(location))
    other = await signed_in_client(site.story)
    try:
        response = await other.get(location)
        body = await response.text()
        assert response.status == 200 and not CODE.search(body) and "can no longer be shown" in body
    finally:
        await other.close()
    body = await site.get("/connect?shown=" + "0" * 24)
    assert not CODE.search(body) and "can no longer be shown" in body


# --- my devices -------------------------------------------------------------------------------------


async def test_enrolling_a_device_gives_it_a_device_grant_and_cutting_it_off_revokes_it(site: Site) -> None:
    story = site.story
    patient = story.patient
    assert "No device is enrolled yet." in await site.get("/devices")

    # Step 1: an invitation, shown as a QR code and a code; the phone connects with the code.
    status, location, _ = await site.post("/devices/invite", {"label": "My phone", "days": "7"})
    assert status == 303 and location.startswith("/devices?shown=")
    body = await site.get(location)
    code = shown_code(body)
    qr = QR.search(body)
    assert qr and decode_qr(base64.b64decode(qr.group(1))) == Invitation.parse(code).url()
    phone = await ServedNode.create(site.root / "phone", role="clinic", name="Camille's phone")
    try:
        await phone.clinic.connect(code, now=now())

        # Step 2: the phone is among the connected nodes to pick; a box confirms it is the patient's own.
        body = await site.get("/devices")
        assert f'<option value="{phone.did}"' in body and "Camille&#39;s phone (invitation “My phone”" in body
        status, _, body = await site.post("/devices/enroll", {"device": phone.did})
        assert status == 400 and "Tick the box" in body
        status, _, body = await site.post(
            "/devices/enroll", {"device": "did:key:z6MkNotConnected", "mine": "yes"}
        )
        assert status == 400 and "Choose the device from the list" in body
        assert not [g for g in await patient.patient.all_grants() if "manage" in g.record.actions]
        status, location, _ = await site.post("/devices/enroll", {"device": phone.did, "mine": "yes"})
        assert (status, location) == (303, "/devices")

        # The same records as `fedrecord grant --to DID --device`.
        (device_grant,) = [g for g in await patient.patient.all_grants() if "manage" in g.record.actions]
        record = device_grant.record
        assert record.audience == phone.did
        assert sorted(record.actions) == ["delegate", "manage", "read"] and record.purpose == "device"
        assert record.scope.past and record.scope.future
        assert (record.scope.ids, record.scope.categories, record.scope.labels, record.scope.since) == (
            None,
            None,
            None,
            None,
        )
        assert record.exp - record.iat == 90 * 86_400
        body = await site.get("/devices")
        assert "Camille&#39;s phone is now your device, until" in body
        assert "Cut off Camille&#39;s phone" in body and ">Enrolled<" in body
        # Enrolled once: no longer offered in step 2 (the clinics still are, behind the box to tick).
        assert f'<option value="{phone.did}"' not in body
        status, _, body = await site.post("/devices/enroll", {"device": phone.did, "mine": "yes"})
        assert status == 400

        # The phone reads the whole record, and shares lab results with the lab for the patient.
        await phone.clinic.poll(patient.did, now=now())
        listing = await phone.clinic.listing(patient.did, now=now())
        assert {item["doc"] for item in listing} == set(story.docs.values())
        child = await phone.clinic.delegate(
            patient.did, to=story.lab.did, to_endpoint=story.lab.url, categories=("lab",), days=30, now=now()
        )
        assert child.record.parent == device_grant.id
        assert await story.lab.clinic.fetch(patient.did, story.docs["cbc"], now=now())

        # Lost: cut it off. Its grant is revoked, and the grant it gave the lab lapses with it ([API-47]).
        (revoke,) = [f for f in forms_of(body, "/devices") if f.action == "/devices/revoke"]
        assert "it shared with others stops working at once" in body
        status, location, _ = await site.post("/devices/revoke", {"grant": revoke.fields["grant"]})
        assert (status, location) == (303, "/devices")
        revoked = {r.record.grant for r in await patient.h.store.records(Revocation)}
        assert device_grant.id in revoked
        assert device_grant.id not in {g.id for g in await patient.patient.live_grants(now=now())}
        body = await site.get("/devices")
        assert "Camille&#39;s phone is cut off." in body and ">Cut off<" in body
        assert not [f for f in forms_of(body, "/devices") if f.action == "/devices/revoke"]
        for reader, doc in ((story.lab, story.docs["cbc"]), (phone, story.docs["xray"])):
            with pytest.raises(RemoteProtocolError) as caught:
                await reader.clinic.fetch(patient.did, doc, now=now())
            assert caught.value.code.value == "revoked"

        # Refusals: cut off twice, an unknown grant, a grant that is not a device's, no token.
        status, _, body = await site.post("/devices/revoke", {"grant": revoke.fields["grant"]})
        assert status == 409 and "already cut off" in body
        for grant in ("00" * 32, "not hex", story.gp_grant.id.hex()):
            status, _, body = await site.post("/devices/revoke", {"grant": grant})
            assert status == 404 and "not in your list" in body
        assert story.gp_grant.id not in {r.record.grant for r in await patient.h.store.records(Revocation)}
        status, _, _ = await site.post("/devices/revoke", {"grant": revoke.fields["grant"]}, csrf=False)
        assert status == 403
        # A cut-off device may be enrolled again (found after all): it is offered in step 2.
        assert f'<option value="{phone.did}"' in await site.get("/devices")
    finally:
        await phone.stop()


async def test_device_invitation_refusals(site: Site) -> None:
    status, _, body = await site.post("/devices/invite", {"label": "", "days": "7"})
    assert status == 400 and "Please say who the invitation is for" in body
    status, _, body = await site.post("/devices/invite", {"label": "Phone", "days": "90"})
    assert status == 400 and "whole number from 1 to 30" in body
    status, _, _ = await site.post("/devices/invite", {"label": "Phone", "days": "7"}, csrf=False)
    assert status == 403
    status, _, _ = await site.post("/devices/enroll", {"device": "", "mine": "yes"})
    assert status == 400


# --- both languages, every control labelled --------------------------------------------------------------


async def test_both_pages_are_complete_in_french_and_english(site: Site) -> None:
    _, connect_shown, _ = await site.post("/connect", {"label": "Clinique", "days": "7"})
    _, device_shown, _ = await site.post("/devices/invite", {"label": "Téléphone", "days": "7"})
    keys = [k for k in i18n.catalog() if k.split(".")[0] in ("connect", "devices", "invitation")]
    for language in ("en", "fr"):
        for path in ("/connect", connect_shown, "/devices", device_shown):
            body = await site.get(path, language=language)
            assert f'<html lang="{language}">' in body
            left = [k for k in keys if k in re.sub(r"<[^>]+>", " ", body)]
            assert not left, f"untranslated keys on {path} ({language}): {left}"
            # Every input and select has a label (or is hidden).
            for name in re.findall(r"<(?:input|select)\b([^>]*)>", body):
                if 'type="hidden"' in name:
                    continue
                found = re.search(r'id="([^"]+)"', name)
                assert found and f'for="{found.group(1)}"' in body, name
    french = html.unescape(await site.get(connect_shown, language="fr"))
    assert "Connecter un cabinet" in french and "Elle ne sert qu'une fois" in french
    assert "Code QR de l'invitation pour Clinique" in french
    for english, french_text in i18n.catalog().values():
        assert english and french_text
