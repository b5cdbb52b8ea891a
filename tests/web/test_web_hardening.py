"""Defences added after a review of the page: hostile times from peers, redirects, cross-site posts.

In-process (aiohttp's TestClient) over real nodes from
:func:`tests.node_helpers.build_story`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from nacl.pwhash import argon2id

from fedrecord.web.app import local_path, make_web_app
from fedrecord.web.auth import MAX_FAILURES, set_password
from fedrecord.web.sentences import iso_day, long_date

from ..node_helpers import Story, build_story, now

ASYNC = pytest.mark.asyncio(loop_scope="module")

PASSWORD = "correct horse battery staple"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def story(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Story]:
    built = await build_story(tmp_path_factory.mktemp("hardening"))
    set_password(
        built.patient.h.path, PASSWORD, limits=(argon2id.OPSLIMIT_INTERACTIVE, argon2id.MEMLIMIT_INTERACTIVE)
    )
    yield built
    await built.close()


async def page_client(story: Story) -> TestClient:  # type: ignore[type-arg]
    client = TestClient(TestServer(make_web_app(story.patient.h, story.patient.patient)))
    await client.start_server()
    return client


@ASYNC
async def test_a_document_dated_past_any_calendar_leaves_every_page_readable(story: Story, tmp_path: Path) -> None:
    """A clinic may sign any uint64 as a date: the pages show "?" for it rather than fail."""
    client = await page_client(story)
    try:
        answer = await client.post("/signin", data={"password": PASSWORD}, allow_redirects=False)
        assert answer.status == 303
        doc = await story.lab.clinic.deposit(
            story.patient.did, b"odd", title="Odd date", category="lab", doc_type="lab-result",
            date=2**62, now=now(),
        )  # fmt: skip
        await story.lab.clinic.flush_outbox()
        assert (await client.get("/inbox")).status == 200
        await story.patient.patient.accept(doc, now=now())
        for path in ("/record", f"/record/{doc.hex()}", "/sharing", f"/record/{doc.hex()}/delete"):
            answer = await client.get(path)
            assert answer.status == 200, path
        assert "Odd date" in await (await client.get("/record")).text()
    finally:
        await client.close()


def test_times_out_of_range_read_as_unknown() -> None:
    assert iso_day(2**62) == "?" and long_date(2**62, "fr") == "?"
    assert iso_day(0) == "" and iso_day(86_400) == "1970-01-02"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/connect?shown=abc", "/connect?shown=abc"),
        ("/record", "/record"),
        ("//evil.example", "/record"),
        ("/\t/evil.example", "/record"),
        ("/\\evil.example", "/record"),
        ("https://evil.example/", "/record"),
        ("", "/record"),
    ],
)
def test_the_language_switch_goes_back_only_to_this_page(target: str, expected: str) -> None:
    assert local_path(target) == expected


@ASYNC
async def test_the_language_switch_keeps_the_query_and_refuses_other_hosts(story: Story) -> None:
    client = await page_client(story)
    try:
        answer = await client.post(
            "/language", data={"lang": "fr", "back": "/\t/evil.example"}, allow_redirects=False
        )
        assert answer.headers["Location"] == "/record"
        answer = await client.post(
            "/language", data={"lang": "fr", "back": "/record?page=2"}, allow_redirects=False
        )
        assert answer.headers["Location"] == "/record?page=2"
    finally:
        await client.close()


@ASYNC
async def test_another_site_can_neither_post_nor_lock_the_patient_out(story: Story) -> None:
    """Posts from another origin are refused before they count as sign-in attempts."""
    client = await page_client(story)
    try:
        for _ in range(MAX_FAILURES + 2):
            answer = await client.post(
                "/signin",
                data={"password": "guess from another site"},
                headers={"Origin": "https://evil.example"},
                allow_redirects=False,
            )
            assert answer.status == 403
        answer = await client.post(
            "/language", data={"lang": "fr"}, headers={"Sec-Fetch-Site": "cross-site"}, allow_redirects=False
        )
        assert answer.status == 403
        answer = await client.post("/signin", data={"password": PASSWORD}, allow_redirects=False)
        assert answer.status == 303, "the patient is not locked out by another site's posts"
    finally:
        await client.close()


@ASYNC
@pytest.mark.parametrize(
    ("content_type", "data"),
    [
        ("multipart/form-data", b"password=x"),  # no boundary
        ("multipart/form-data; boundary=zz", b"--zz\r\nbroken"),  # a part without its headers
        ("application/x-www-form-urlencoded; charset=bogus", b"password=x"),  # an unknown charset
    ],
)
async def test_a_form_that_does_not_parse_is_refused_not_an_error(
    story: Story, content_type: str, data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Signed in or not, a post whose body is no readable form gets 400 and a page, never a 500."""
    client = await page_client(story)
    try:
        answer = await client.post("/signin", data=data, headers={"Content-Type": content_type})
        assert answer.status == 400
        assert "could not be read" in await answer.text()
        signed_in = await client.post("/signin", data={"password": PASSWORD}, allow_redirects=False)
        assert signed_in.status == 303
        for path in ("/language", "/audit/verify"):  # open, and behind the session and its CSRF token
            answer = await client.post(path, data=data, headers={"Content-Type": content_type})
            assert answer.status == 400, path
        assert (await client.get("/record")).status == 200, "the session is still good"
    finally:
        await client.close()
    assert "Traceback" not in caplog.text and "Error handling request" not in caplog.text


@ASYNC
async def test_an_audit_position_past_any_entry_shows_the_log(story: Story) -> None:
    """``before``/``after`` beyond SQLite's integers read as no position, as a negative one does."""
    client = await page_client(story)
    try:
        await client.post("/signin", data={"password": PASSWORD}, allow_redirects=False)
        for query in ("before=99999999999999999999", "after=99999999999999999999", "before=9223372036854775808"):
            answer = await client.get(f"/audit?{query}")
            assert answer.status == 200, query
    finally:
        await client.close()


@ASYNC
async def test_a_rebound_host_name_is_refused_before_sign_in(story: Story) -> None:
    """DNS rebinding: another site's name pointed at 127.0.0.1, with Origin to match; refused, attempts not counted."""
    client = await page_client(story)
    try:
        port = client.port
        for host in (f"attacker.example:{port}", "attacker.example", f"127.0.0.1.nip.io:{port}", "[::1"):
            answer = await client.post(
                "/signin",
                data={"password": "a guess"},
                headers={"Host": host, "Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"},
            )
            assert answer.status == 421, host
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "127.0.0.1:9000"):  # a tunnel's port
            answer = await client.get("/signin", headers={"Host": host})
            assert answer.status == 200, host
        # None of the refused posts was counted against the patient's own next attempt.
        answer = await client.post("/signin", data={"password": PASSWORD}, allow_redirects=False)
        assert answer.status == 303
    finally:
        await client.close()
