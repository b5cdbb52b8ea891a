"""The web page's defences, against real nodes and the page served on its own loopback port.

A form post without the CSRF token (or from another origin), a request
without a session, a session cookie from another node, repeated wrong
passwords, HTML and script in a document title or a clinic's name, the
cookie's flags, sign-out, the lock after inactivity, the end of sessions at a password
change and after their lifetime, and the loopback default.
Most tests speak HTTP with aiohttp's client; the injected title is also
opened in Chromium, where no dialog may open and no element may appear.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from yarl import URL

from fedrecord.core import Scope
from fedrecord.node.home import NodeConfig
from fedrecord.node.runner import _start_web_page
from fedrecord.web import auth
from fedrecord.web.auth import COOKIE, Sessions, set_password

from ..node_helpers import DAY, ServedNode, now, snapshot
from .conftest import PASSWORD, WEB_KDF, LiveStory, launched_browser, new_context, sign_in
from .forms import csrf_of, forms_of, links_of

PAGES = ("/record", "/inbox", "/sharing", "/audit", "/connect", "/devices")
#: A title, a clinic name and a label that would run script, add elements or break attributes if not escaped.
EVIL = "<script>alert('title')</script><img src=x onerror=\"alert('img')\">\"'><b id=injected>&amp;"
EVIL_NAME = "<img src=y onerror=alert('name')><b id=injected-name>Clinique</b>"


@contextlib.asynccontextmanager
async def client(url: str, *, password: str | None = PASSWORD) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client of the page at ``url`` (cookies kept), signed in unless ``password`` is None."""
    jar = aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1
    async with aiohttp.ClientSession(base_url=url, cookie_jar=jar) as session:
        if password is not None:
            async with session.post("/signin", data={"password": password}, allow_redirects=False) as answer:
                assert answer.status == 303, await answer.text()
                assert answer.headers["Location"] == "/record"
        yield session


async def get(session: aiohttp.ClientSession, path: str) -> tuple[int, str, str]:
    async with session.get(path, allow_redirects=False) as answer:
        return answer.status, answer.headers.get("Location", ""), await answer.text()


async def post(session: aiohttp.ClientSession, path: str, data: dict[str, str], **kw: Any) -> tuple[int, str, str]:
    async with session.post(path, data=data, allow_redirects=False, **kw) as answer:
        return answer.status, answer.headers.get("Location", ""), await answer.text()


def cookie_of(session: aiohttp.ClientSession) -> str:
    return next(c.value for c in session.cookie_jar if c.key == COOKIE)


# --- the injected title and clinic name --------------------------------------------------------


@dataclass
class Evil:
    clinic: ServedNode
    pending: bytes
    accepted: bytes


@pytest.fixture(scope="module")
def evil(live: LiveStory) -> Evil:
    """A clinic named with HTML connects and deposits two documents titled with HTML and script: one
    waits in the inbox, one is accepted, granted to that clinic (who then reads it) and labelled."""

    async def play() -> Evil:
        clinic = await ServedNode.create(live.root / "evil", role="clinic", name=EVIL_NAME)
        live.extra_nodes.append(clinic)
        patient = live.patient.patient
        invitation = await patient.create_invitation(label=EVIL_NAME, now=now())
        await clinic.clinic.connect(invitation.url(), now=now())
        accepted = await clinic.clinic.deposit(
            live.patient.did, b"<script>alert('content')</script>", title=EVIL, category="note",
            doc_type="note", labels=("PSY",), now=now(),
        )
        pending = await clinic.clinic.deposit(
            live.patient.did, b"<b>waiting</b>", title=EVIL, category="note", doc_type="note", now=now()
        )
        assert await clinic.clinic.flush_outbox(now=now()) == (2, 0)
        await patient.accept(accepted, now=now())
        await patient.grant(
            audience=clinic.did,
            scope=Scope(categories=("note",), since=now() - DAY, past=True, future=False),
            actions=("read",),
            purpose="treatment",
            days=30,
            now=now(),
        )
        await clinic.clinic.poll(live.patient.did, now=now())
        assert await clinic.clinic.fetch(live.patient.did, accepted, now=now()) == b"<script>alert('content')</script>"
        return Evil(clinic, pending, accepted)

    return live.run(play())


async def test_html_in_titles_and_names_is_escaped_in_every_page(live: LiveStory, evil: Evil):
    async with client(live.url) as session:
        pages = [*PAGES, f"/record/{evil.accepted.hex()}"]
        status, _, html = await get(session, f"/record/{evil.accepted.hex()}")
        assert status == 200
        # Every page the document's page links to about it (its delete confirmation, labels, ...).
        pages += sorted({link for link in links_of(html) if evil.accepted.hex() in link and "download" not in link})
        seen = 0
        for path in pages:
            status, _, html = await get(session, path)
            assert status == 200, (path, status)
            assert "<script>alert" not in html and "<img src=x" not in html and "<img src=y" not in html, path
            assert "<b id=injected" not in html, path
            seen += html.count("&lt;script&gt;alert(") + html.count("&lt;img src=y")
        assert seen >= 4, "the escaped title and name appear in the inbox, the record, the document and audit"
        status, _, html = await get(session, "/inbox")
        assert "&lt;script&gt;alert(&#39;title&#39;)&lt;/script&gt;" in html
        assert "&lt;img src=y onerror=alert(&#39;name&#39;)&gt;" in html


def test_html_in_titles_runs_nothing_in_chromium(live: LiveStory, evil: Evil):
    with launched_browser() as browser:
        html_runs_nothing(browser, live, evil)


def html_runs_nothing(browser: Any, live: LiveStory, evil: Evil) -> None:
    context = new_context(browser, live.url, language="en")
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    try:
        sign_in(page, live.url)
        paths = [*PAGES, f"/record/{evil.accepted.hex()}"]
        for path in paths:
            page.goto(f"{live.url}{path}")
            page.wait_for_load_state("load")
            assert page.locator("#injected, #injected-name").count() == 0, path
            assert page.locator("img[src=x], img[src=y]").count() == 0, path
            assert page.locator("script:not([src='/static/app.js'])").count() == 0, path
        page.goto(f"{live.url}/inbox")
        assert page.get_by_text(EVIL, exact=False).first.is_visible(), "the title is shown as text"
        page.goto(f"{live.url}/record/{evil.accepted.hex()}")
        assert page.get_by_role("heading", level=1).inner_text() == EVIL
        assert dialogs == []
    finally:
        context.close()


# --- sessions -----------------------------------------------------------------------------------


async def test_without_a_session_pages_lead_to_sign_in_and_posts_are_refused(live: LiveStory):
    doc = next(iter(live.story.docs.values()))
    async with client(live.url) as signed:  # the forms a signed-in patient sees, to post them without a session
        forms = []
        for path in PAGES:
            forms += [f for f in forms_of((await get(signed, path))[2], path) if f.method == "post"]
    before = live.run(snapshot(live.patient))
    async with client(live.url, password=None) as anonymous:
        for path in [*PAGES, f"/record/{doc.hex()}", f"/record/{doc.hex()}?download=1", "/"]:
            status, location, _ = await get(anonymous, path)
            assert status == 303 and location in ("/signin", "/record"), (path, status, location)
        assert (await get(anonymous, "/signin"))[0] == 200
        posted = 0
        for form in forms:
            if form.action in ("/language", "/signin"):
                continue
            status, _, html = await post(anonymous, form.action, form.fields)
            assert status == 401, (form.action, status)
            assert "Sign in" in html or "signed out" in html
            posted += 1
        assert posted >= 1
    after = live.run(snapshot(live.patient))
    assert after == before, "a post without a session changed the node"


async def test_a_post_without_the_csrf_token_changes_nothing(live: LiveStory):
    async with client(live.url) as session:
        forms = []
        for path in PAGES:
            status, _, html = await get(session, path)
            forms += [f for f in forms_of(html, path) if f.method == "post" and "csrf" in f.fields]
        assert any(f.action == "/signout" for f in forms)
        before = live.run(snapshot(live.patient))
        refused = set()
        for form in forms:
            fields = {k: v for k, v in form.fields.items() if k != "csrf"}
            status, _, html = await post(session, form.action, fields)
            assert status == 403, (form.action, status)
            assert "This form has expired" in html
            status, _, _ = await post(session, form.action, {**fields, "csrf": "x" * 43})
            assert status == 403, (form.action, status)
            refused.add(form.action)
        # The right token from another origin (a page elsewhere posting into this one) is refused too.
        status, _, _ = await post(
            session, "/signout", {"csrf": forms[0].fields["csrf"]}, headers={"Origin": "http://evil.example"}
        )
        assert status == 403
        assert live.run(snapshot(live.patient)) == before, "a refused post changed the node"
        assert (await get(session, "/record"))[0] == 200, "the session survived the refused sign-out"
        print("refused without a token:", sorted(refused))


async def test_a_session_cookie_from_another_node_opens_nothing(live: LiveStory):
    other = live.new_patient("other-patient")
    other_url = live.serve_page(other)
    async with client(other_url) as there:
        status, _, html = await get(there, "/record")
        assert status == 200
        foreign_cookie, foreign_csrf = cookie_of(there), csrf_of(html)
    before = live.run(snapshot(live.patient))
    async with client(live.url, password=None) as here:
        here.cookie_jar.update_cookies({COOKIE: foreign_cookie}, URL(live.url))
        for path in PAGES:
            status, location, _ = await get(here, path)
            assert (status, location) == (303, "/signin?ended=1"), path
        status, _, _ = await post(here, "/signout", {"csrf": foreign_csrf})
        assert status == 401
    assert live.run(snapshot(live.patient)) == before


async def test_cookie_is_http_only_and_same_site_strict(live: LiveStory):
    async with (
        aiohttp.ClientSession(base_url=live.url) as session,
        session.post("/signin", data={"password": PASSWORD}, allow_redirects=False) as answer,
    ):
        assert answer.status == 303
        cookies = answer.headers.getall("Set-Cookie")
    (session_cookie,) = [c for c in cookies if c.startswith(f"{COOKIE}=")]
    attributes = {part.strip().split("=")[0].lower(): part.strip() for part in session_cookie.split(";")[1:]}
    assert "httponly" in attributes
    assert attributes["samesite"].lower() == "samesite=strict"
    assert attributes["path"] == "Path=/"
    assert "domain" not in attributes and "expires" not in attributes and "max-age" not in attributes


async def test_signing_in_again_gives_a_new_session(live: LiveStory):
    async with client(live.url) as session:
        first = cookie_of(session)
        async with session.post("/signin", data={"password": PASSWORD}, allow_redirects=False) as answer:
            # Signed in already: the form is not shown, a new sign-in still replaces the token.
            assert answer.status == 303
        second = cookie_of(session)
        assert second != first
    async with client(live.url, password=None) as stale:
        stale.cookie_jar.update_cookies({COOKIE: first}, URL(live.url))
        assert (await get(stale, "/record"))[:2] == (303, "/signin?ended=1")


async def test_sign_out_ends_the_session(live: LiveStory):
    async with client(live.url) as session:
        status, _, html = await get(session, "/record")
        token = cookie_of(session)
        status, location, _ = await post(session, "/signout", {"csrf": csrf_of(html)})
        assert (status, location) == (303, "/signin")
        assert all(c.key != COOKIE or not c.value for c in session.cookie_jar), "the cookie is deleted"
    async with client(live.url, password=None) as replay:  # the old cookie, kept by an attacker
        replay.cookie_jar.update_cookies({COOKIE: token}, URL(live.url))
        assert (await get(replay, "/record"))[:2] == (303, "/signin?ended=1")


async def test_the_session_ends_after_inactivity(live: LiveStory):
    url = live.serve_page(live.patient, Sessions(idle_seconds=1.0))
    async with client(url) as session:
        assert (await get(session, "/record"))[0] == 200
        await asyncio.sleep(0.6)
        assert (await get(session, "/record"))[0] == 200, "activity keeps the session open"
        await asyncio.sleep(0.6)
        assert (await get(session, "/inbox"))[0] == 200
        await asyncio.sleep(1.3)
        status, location, _ = await get(session, "/record")
        assert (status, location) == (303, "/signin?ended=1")
        status, _, html = await get(session, location)
        assert status == 200 and "after 15 minutes without activity" in html
        assert (await get(session, "/record"))[0] == 303, "the ended session stays ended"


async def test_wrong_passwords_are_rate_limited(live: LiveStory, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(auth, "WINDOW_SECONDS", 4)
    sessions = Sessions()
    url = live.serve_page(live.patient, sessions)
    async with client(url, password=None) as session:
        for attempt in range(auth.MAX_FAILURES):
            status, _, html = await post(session, "/signin", {"password": f"wrong password {attempt}"})
            assert status == 401 and "Wrong password." in html
        status, _, html = await post(session, "/signin", {"password": "wrong password again"})
        assert status == 429 and "Too many wrong passwords" in html
        status, _, html = await post(session, "/signin", {"password": PASSWORD})
        assert status == 429, "even the right password waits until the window has passed"
        assert not any(c.key == COOKIE for c in session.cookie_jar)
        assert (await get(session, "/record"))[0] == 303
        await asyncio.sleep(4.5)
        status, location, _ = await post(session, "/signin", {"password": PASSWORD})
        assert (status, location) == (303, "/record")
        assert (await get(session, "/record"))[0] == 200
    # The other sessions of the node were not affected: the limit is this page's and this address's.
    async with client(live.url) as unaffected:
        assert (await get(unaffected, "/record"))[0] == 200


async def test_answers_carry_a_strict_content_security_policy(live: LiveStory):
    async with client(live.url) as session:
        for path in (*PAGES, "/signin", "/no-such-page", "/record/nothing", "/"):
            async with session.get(path, allow_redirects=False) as answer:
                policy = answer.headers.get("Content-Security-Policy", f"none on {path} ({answer.status})")
                assert "default-src 'none'" in policy and "script-src 'self'" in policy
                assert "frame-ancestors 'none'" in policy
                assert answer.headers["X-Content-Type-Options"] == "nosniff"
                assert answer.headers["Cache-Control"] == "no-store", path
                # Not "no-referrer": Chromium would then send form posts with "Origin: null", refused.
                assert answer.headers["Referrer-Policy"] == "same-origin", path


def test_the_page_listens_on_loopback_unless_told_otherwise(live: LiveStory):
    assert NodeConfig(role="patient", name="x", endpoint="http://127.0.0.1:1").web_host == "127.0.0.1"
    assert NodeConfig.load(live.patient.path).web_host == "127.0.0.1", "fedrecord init writes loopback"
    node = live.new_patient("listening")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    node.h.config = dataclasses.replace(node.h.config, web_port=port)
    assert node.app is not None
    runner = live.run(_start_web_page(node.h, node.app))  # as `fedrecord serve` starts it
    assert runner is not None
    try:
        assert [tuple(address[:2]) for address in runner.addresses] == [("127.0.0.1", port)]
    finally:
        live.run(runner.cleanup())


def test_a_session_ends_when_the_password_is_set_again(tmp_path):
    set_password(tmp_path, PASSWORD, limits=WEB_KDF)
    sessions = Sessions(home=tmp_path)
    before = sessions.start(now=0.0)
    assert sessions.find(before.token, now=1.0) is before
    set_password(tmp_path, PASSWORD, limits=WEB_KDF)  # the same password again: a new salt, a new stamp
    assert sessions.find(before.token, now=2.0) is None
    after = sessions.start(now=3.0)
    assert sessions.find(after.token, now=4.0) is after
    assert sessions.find(before.token, now=4.0) is None, "the old session stays ended"
    auth.credential_path(tmp_path).unlink()
    assert sessions.find(after.token, now=5.0) is None, "no password set: no session"


def test_a_session_opened_under_a_given_stamp_ends_when_it_changes(tmp_path):
    set_password(tmp_path, PASSWORD, limits=WEB_KDF)
    stamp = auth.credential_stamp(tmp_path)
    assert stamp and stamp == auth.credential_stamp(tmp_path)
    sessions = Sessions()  # no home: the caller passes the stamps
    session = sessions.start(now=0.0, stamp=stamp)
    assert sessions.find(session.token, now=1.0, stamp=stamp) is session
    set_password(tmp_path, PASSWORD, limits=WEB_KDF)
    assert auth.credential_stamp(tmp_path) != stamp
    assert sessions.find(session.token, now=2.0, stamp=auth.credential_stamp(tmp_path)) is None


def test_a_session_in_use_ends_after_its_absolute_lifetime():
    assert auth.ABSOLUTE_SECONDS == 12 * 60 * 60
    sessions = Sessions(idle_seconds=10.0, absolute_seconds=30.0)
    session = sessions.start(now=100.0)
    for moment in range(105, 131, 5):  # used every 5 seconds: never idle
        assert sessions.find(session.token, now=float(moment)) is session, moment
    assert sessions.find(session.token, now=131.0) is None
    assert sessions.find(session.token, now=132.0) is None


def test_sessions_whose_browser_never_came_back_are_forgotten(tmp_path):
    # A sign-in a day for years, each browser closed without signing out (the cookie lives only
    # while the browser does): the node must not keep every one of them for as long as it runs.
    sessions = Sessions(idle_seconds=10.0, absolute_seconds=100.0)
    for day in range(1000):
        sessions.start(now=day * 20.0)
    assert len(sessions._open) == 1, "only the last sign-in can still be used"
    live = sessions.start(now=19_990.0)
    assert len(sessions._open) == 2 and sessions.find(live.token, now=19_995.0) is live
    # Opened under a credential set again since: ended too, and forgotten at the next sign-in.
    set_password(tmp_path, PASSWORD, limits=WEB_KDF)
    home_sessions = Sessions(home=tmp_path)
    before = home_sessions.start(now=0.0)
    set_password(tmp_path, PASSWORD, limits=WEB_KDF)
    after = home_sessions.start(now=1.0)
    assert len(home_sessions._open) == 1 and home_sessions.find(after.token, now=2.0) is after
    assert home_sessions.find(before.token, now=2.0) is None


def test_the_rate_limit_keeps_only_clients_with_recent_failures():
    sessions = Sessions()
    for i in range(1000):  # as many addresses asking, none failing: nothing to keep for them
        assert sessions.wait_seconds(f"2001:db8::{i:x}", now=0.0) == 0
    assert not sessions._failures
    for i in range(40):
        sessions.failed(f"2001:db8::{i:x}", now=float(i))
    assert len(sessions._failures) == 40
    assert sessions.wait_seconds("2001:db8::1", now=50.0) == 0
    # A window later, one more failure: the clients whose failures aged out are forgotten.
    sessions.failed("2001:db8::ffff", now=auth.WINDOW_SECONDS + 100.0)
    assert list(sessions._failures) == ["2001:db8::ffff"]
    for attempt in range(auth.MAX_FAILURES):
        sessions.failed("2001:db8::ffff", now=auth.WINDOW_SECONDS + 101.0 + attempt)
    assert sessions.wait_seconds("2001:db8::ffff", now=auth.WINDOW_SECONDS + 110.0) > 0, "still limited"


async def test_a_password_change_ends_the_sessions_open_in_the_browser(live: LiveStory):
    node = live.new_patient("password-change")
    url = live.serve_page(node)  # the page's own sessions, as `fedrecord serve` makes them
    async with client(url) as session:
        assert (await get(session, "/record"))[0] == 200
        set_password(node.h.path, "another long password", limits=WEB_KDF)  # `fedrecord web-password`
        assert (await get(session, "/record"))[:2] == (303, "/signin?ended=1")
        assert (await get(session, "/record"))[0] == 303, "the ended session stays ended"
        status, _, _ = await post(session, "/signin", {"password": PASSWORD})
        assert status == 401, "the old password no longer opens the page"
        status, location, _ = await post(session, "/signin", {"password": "another long password"})
        assert (status, location) == (303, "/record")
        assert (await get(session, "/record"))[0] == 200


async def test_a_session_in_use_ends_after_its_lifetime_over_http(live: LiveStory):
    url = live.serve_page(live.patient, Sessions(idle_seconds=60.0, absolute_seconds=2.0))
    async with client(url) as session:
        for _ in range(3):
            assert (await get(session, "/record"))[0] == 200
            await asyncio.sleep(0.4)
        await asyncio.sleep(1.0)  # 2.2 s after sign-in, 1 s after the last request
        assert (await get(session, "/record"))[:2] == (303, "/signin?ended=1")
