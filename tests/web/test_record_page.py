"""The record page: a large document is downloaded in pieces and never shown whole, the page number is
bounded, and the texts of the timeline (its count, its pagination's name).

A patient with a single document (over 1 MiB) deposited by a lab over loopback HTTP; the patient's
page in process, driven by aiohttp's test client.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from nacl.pwhash import argon2id

from fedrecord.node.patient import PatientNode
from fedrecord.web.app import make_web_app
from fedrecord.web.auth import set_password
from fedrecord.web.pages import record

from ..node_helpers import ServedNode, now

PASSWORD = "correct horse battery staple"
WEB_KDF = (argon2id.OPSLIMIT_INTERACTIVE, argon2id.MEMLIMIT_INTERACTIVE)
#: Text, valid UTF-8, a little over the inline limit (and many 64 KiB pieces).
LARGE = b"".join(b"line %07d of a long lab report\n" % i for i in range(40_000))


@dataclass
class Page:
    patient: ServedNode
    client: TestClient
    doc: bytes

    async def get(self, path: str, *, language: str = "en", status: int = 200) -> str:
        answer = await self.client.get(path, headers={"Accept-Language": language}, allow_redirects=False)
        text = await answer.text()
        assert answer.status == status, (path, answer.status, text[:2000])
        return text


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[Page]:
    assert len(LARGE) > record.INLINE_MAX
    patient = await ServedNode.create(tmp_path / "patient", role="patient", name="Camille")
    lab = await ServedNode.create(tmp_path / "lab", role="clinic", name="Laboratoire")
    try:
        invitation = await patient.patient.create_invitation(label="Laboratoire", now=now())
        await lab.clinic.connect(invitation.url(), now=now())
        doc = await lab.clinic.deposit(
            patient.did, LARGE, title="Long report", category="lab", doc_type="lab-result", now=now()
        )
        assert await lab.clinic.flush_outbox() == (1, 0)
        await patient.patient.accept(doc, now=now())
        set_password(patient.h.path, PASSWORD, limits=WEB_KDF)
        async with TestClient(TestServer(make_web_app(patient.h, patient.patient))) as client:
            signed = await client.post("/signin", data={"password": PASSWORD}, allow_redirects=False)
            assert signed.status == 303
            yield Page(patient, client, doc)
    finally:
        await lab.stop()
        await patient.stop()


async def test_a_large_document_is_not_shown_and_downloads_intact(page: Page, monkeypatch: pytest.MonkeyPatch):
    # Neither the page nor the download reads the document whole into memory.
    async def whole(self: PatientNode, doc: bytes) -> bytes:
        raise AssertionError("the document was read whole")

    monkeypatch.setattr(PatientNode, "read_own", whole)
    html = await page.get(f"/record/{page.doc.hex()}")
    assert "line 0000000" not in html and "<pre>" not in html
    assert "download it to open it" in html
    assert f'href="/record/{page.doc.hex()}?download=1"' in html

    pieces = []
    async with page.client.get(f"/record/{page.doc.hex()}?download=1") as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"] == "application/octet-stream"
        assert answer.headers["Content-Disposition"] == f'attachment; filename="{page.doc.hex()[:16]}.bin"'
        assert answer.headers["Transfer-Encoding"] == "chunked" and "Content-Length" not in answer.headers
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["Cache-Control"] == "no-store"
        assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
        async for piece in answer.content.iter_chunked(1 << 16):
            pieces.append(piece)
    assert b"".join(pieces) == LARGE
    assert len(pieces) > 1, "sent in pieces"


async def test_a_download_that_fails_to_decrypt_never_arrives_complete(page: Page):
    stored = page.patient.h.files.path_of(page.doc)
    ciphertext = bytearray(stored.read_bytes())
    ciphertext[-1] ^= 1  # the last chunk no longer authenticates: earlier pieces are already sent
    stored.write_bytes(bytes(ciphertext))
    with pytest.raises(aiohttp.ClientPayloadError):
        async with page.client.get(f"/record/{page.doc.hex()}?download=1") as answer:
            assert answer.status == 200
            await answer.read()


async def test_a_missing_document_file_gives_the_missing_page(page: Page):
    page.patient.h.files.path_of(page.doc).unlink()
    html = await page.get(f"/record/{page.doc.hex()}?download=1", status=404)
    assert "This document is not in your record." in html


@pytest.mark.parametrize("number", ["99999999999999999999999999", str(2**63), "-5", "x", "9" * 5000])
async def test_any_page_number_gives_a_page(page: Page, number: str):
    html = await page.get(f"/record?page={number}")
    assert "Pages of the record" in html


async def test_a_huge_page_number_is_bounded(page: Page):
    html = await page.get(f"/record?page={10**30}")
    assert f"page={record.MAX_PAGE - 1}" in html, "its previous page is the last one honoured"
    assert "Long report" not in html


@pytest.mark.parametrize(
    ("language", "count", "pages"),
    [("en", "1 of 1 document<", "Pages of the record"), ("fr", "1 sur 1 document<", "Pages du dossier")],
)
async def test_the_count_is_singular_and_the_pagination_has_its_own_name(
    page: Page, language: str, count: str, pages: str
):
    html = await page.get("/record", language=language)
    assert count in html
    assert re.search(rf'<nav aria-label="{pages}" class="pages">', html)
    html = await page.get("/record?q=nothing-matches", language=language)
    assert ("0 of 1 document<" if language == "en" else "0 sur 1 document<") in html
