"""Fixtures of the web page's tests: real nodes, the page on its own loopback port, and Debian's Chromium.

:class:`LiveStory` plays :func:`tests.node_helpers.build_story` (a patient, a
GP and a lab: each its own home, SQLite file and loopback socket) in an event
loop running in a thread of its own, and serves the patient's web page beside
it on another loopback port, as ``fedrecord serve`` does.  The test thread is
then free for what a person and a clinic would do: a browser (Playwright's
synchronous API driving ``/usr/bin/chromium``), the real ``fedrecord`` CLI run
as a subprocess against a clinic's home, or an HTTP client.

Browser tests skip, with the reason, when Chromium, Playwright or axe-core is
missing; with ``FEDRECORD_REQUIRE_BROWSER=1`` (CI sets it) they fail instead.
axe-core is installed by ``npm ci --prefix tests/web`` (pinned in
``tests/web/package.json``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest
from aiohttp import web
from nacl.pwhash import argon2id

from fedrecord.web.app import make_web_app
from fedrecord.web.auth import Sessions, set_password

from ..node_helpers import PASSPHRASE, ServedNode, Story, build_story

T = TypeVar("T")

HERE = Path(__file__).parent
REPOSITORY = HERE.parent.parent
CHROMIUM = Path(os.environ.get("FEDRECORD_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
AXE_PLACES = (
    HERE / "node_modules" / "axe-core" / "axe.min.js",
    REPOSITORY / ".cache" / "web-tools" / "node_modules" / "axe-core" / "axe.min.js",
)
PASSWORD = "correct horse battery staple"
WEB_KDF = (argon2id.OPSLIMIT_INTERACTIVE, argon2id.MEMLIMIT_INTERACTIVE)


def unavailable(reason: str) -> NoReturn:
    """Skip with ``reason``; fail instead when the environment requires the browser tests (CI)."""
    if os.environ.get("FEDRECORD_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (FEDRECORD_REQUIRE_BROWSER=1: the browser tests must run)", pytrace=False)
    pytest.skip(reason)


# --- live nodes ---------------------------------------------------------------------------------


class LiveStory:
    """The story's nodes and the patient's web page, served by an event loop in a thread of its own."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="live-nodes", daemon=True)
        self.thread.start()
        self.runners: list[web.AppRunner] = []
        self.extra_nodes: list[ServedNode] = []
        self.story: Story = self.run(build_story(root))
        set_password(self.patient.h.path, PASSWORD, limits=WEB_KDF)
        self.sessions = Sessions()
        self.url = self.serve_page(self.patient, self.sessions)

    # The nodes of the story.
    @property
    def patient(self) -> ServedNode:
        return self.story.patient

    @property
    def gp(self) -> ServedNode:
        return self.story.gp

    @property
    def lab(self) -> ServedNode:
        return self.story.lab

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        """Run ``coroutine`` in the nodes' event loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def serve_page(self, node: ServedNode, sessions: Sessions | None = None) -> str:
        """Serve ``node``'s web page on a loopback port of its own; its URL."""

        async def start() -> str:
            runner = web.AppRunner(make_web_app(node.h, node.patient, sessions=sessions), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.runners.append(runner)
            return f"http://127.0.0.1:{runner.addresses[-1][1]}"

        return self.run(start())

    def new_patient(self, name: str) -> ServedNode:
        """Another patient node (its own home, database and socket), with the same web password."""
        node = self.run(ServedNode.create(self.root / name, role="patient", name=name))
        set_password(node.h.path, PASSWORD, limits=WEB_KDF)
        self.extra_nodes.append(node)
        return node

    def cli(self, node: ServedNode, *args: str, expect_error: bool = False) -> Any:
        """Run the real ``fedrecord --json`` CLI on ``node``'s home, as its operator would, while it serves.

        Returns the JSON it printed, or (``expect_error``) the error it printed on stderr.
        """
        env = {
            **os.environ,
            "FEDRECORD_HOME": str(node.path),
            "FEDRECORD_PASSPHRASE": PASSPHRASE.decode(),
            "FEDRECORD_KDF": "interactive",
        }
        done = subprocess.run(
            [sys.executable, "-m", "fedrecord", "--json", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if expect_error:
            assert done.returncode != 0, f"fedrecord {' '.join(args)} succeeded: {done.stdout}"
            return done.stderr
        assert done.returncode == 0, f"fedrecord {' '.join(args)}: {done.stderr or done.stdout}"
        return json.loads(done.stdout) if done.stdout.strip() else None

    def close(self) -> None:
        async def stop() -> None:
            for runner in reversed(self.runners):
                await runner.cleanup()
            for node in self.extra_nodes:
                await node.stop()
            await self.story.close()

        try:
            self.run(stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStory]:
    """One story per test module: the patient's page at ``live.url``, password :data:`PASSWORD`."""
    story = LiveStory(tmp_path_factory.mktemp("live"))
    try:
        yield story
    finally:
        story.close()


# --- the browser --------------------------------------------------------------------------------


@contextlib.contextmanager
def launched_browser() -> Iterator[Any]:
    """Debian's Chromium, headless, driven by Playwright's synchronous API.

    While it runs, the test thread counts as running an event loop (Playwright's own): async tests
    cannot run meanwhile, so a module with async tests launches it for one test only (this function)
    rather than through the module-scoped :func:`browser` fixture.
    """
    if not CHROMIUM.exists():
        unavailable(f"{CHROMIUM} is missing: apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("Playwright for Python is missing: pip install -e '.[test]'")
    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        playwright.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium per test module (for modules without async tests: see :func:`launched_browser`)."""
    with launched_browser() as chromium:
        yield chromium


@pytest.fixture(scope="session")
def axe_source() -> str:
    """axe-core's ``axe.min.js`` (``npm ci --prefix tests/web``)."""
    for place in AXE_PLACES:
        if place.exists():
            return place.read_text()
    unavailable("axe-core is missing: npm ci --prefix tests/web")


def new_context(browser: Any, live_url: str, *, language: str | None = None) -> Any:
    """A fresh browser profile (no cookies), optionally with the page's language already chosen."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-GB")
    context.set_default_timeout(15_000)
    if language is not None:
        context.add_cookies([{"name": "fr_lang", "value": language, "url": live_url}])
    return context


def sign_in(page: Any, live_url: str, password: str = PASSWORD) -> None:
    """Sign in through the form, as a person would: the field found by its label."""
    page.goto(f"{live_url}/signin")
    page.get_by_label(re.compile("^(Password|Mot de passe)$")).fill(password)
    page.get_by_role("button", name=re.compile("^(Sign in|Se connecter)$")).click()
    page.wait_for_url(re.compile(r"/record$"))


@pytest.fixture
def page(browser: Any, live: LiveStory) -> Iterator[Any]:
    """A page of a fresh browser profile, signed in to the patient's web page (English)."""
    context = new_context(browser, live.url, language="en")
    tab = context.new_page()
    try:
        sign_in(tab, live.url)
        yield tab
    finally:
        context.close()
