"""Accessibility in Debian's Chromium: axe-core on every page in both languages, and the keyboard.

axe-core (pinned in tests/web/package.json, ``npm ci --prefix tests/web``) is
evaluated in each page through the DevTools protocol, so the page's CSP (no
inline script) stays on.  A page passes when axe finds no violation of impact
"serious" or "critical"; every violation found is printed either way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ..node_helpers import now
from .conftest import LiveStory, new_context, sign_in

LANGUAGES = ("en", "fr")
BLOCKING = ("serious", "critical")


@pytest.fixture(scope="module")
def scene(live: LiveStory, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Something on every page: a deposit waiting, a document read by the GP (so audited), one deleted
    and attested by both clinics."""

    async def play() -> dict[str, bytes]:
        lab, gp, patient = live.lab.clinic, live.gp.clinic, live.patient.patient
        waiting = await lab.deposit(
            live.patient.did, b"TSH 2.1 mIU/L\n", title="Thyroid panel", category="lab", doc_type="lab-result",
            labels=("REPRO",), now=now(),
        )
        gone = await lab.deposit(
            live.patient.did, b"Glucose 5.1 mmol/L\n", title="Fasting glucose", category="lab",
            doc_type="lab-result", now=now(),
        )
        assert await lab.flush_outbox(now=now()) == (2, 0)
        await patient.accept(gone, now=now())
        await gp.poll(live.patient.did, now=now())
        await gp.fetch(live.patient.did, live.story.docs["cbc"], now=now())
        await gp.fetch(live.patient.did, gone, now=now())
        await patient.delete(gone, now=now())
        for clinic in (gp, lab):
            await clinic.poll(live.patient.did, now=now())
            await clinic.flush_outbox(now=now())
        return {"waiting": waiting, "deleted": gone, "document": live.story.docs["lithium"]}

    return live.run(play())


def make_invitation(form_path: str, field: str) -> Callable[[Any, str], None]:
    def open_page(page: Any, url: str) -> None:
        page.goto(f"{url}{form_path}")
        page.fill(field, "Dr Bernard")
        with page.expect_navigation():
            page.locator(f"form:has({field}) button[type=submit]").click()

    return open_page


def pages(scene: dict[str, bytes]) -> dict[str, Callable[[Any, str], None] | str]:
    return {
        "record": "/record",
        "record-filtered": "/record?q=zzz",
        "document": f"/record/{scene['document'].hex()}",
        "delete-confirmation": f"/record/{scene['document'].hex()}/delete",
        "deleted-attestations": f"/deleted/{scene['deleted'].hex()}",
        "inbox": "/inbox",
        "sharing": "/sharing",
        "audit": "/audit",
        "connect": "/connect",
        "connect-invitation": make_invitation("/connect", "#invite-label"),
        "devices": "/devices",
        "devices-invitation": make_invitation("/devices", "#device-label"),
        "not-found": "/record/" + "00" * 32,
    }


PAGE_NAMES = (
    "record", "record-filtered", "document", "delete-confirmation", "deleted-attestations", "inbox", "sharing",
    "audit", "connect", "connect-invitation", "devices", "devices-invitation", "not-found",
)


@pytest.fixture(scope="module")
def tabs(browser: Any, live: LiveStory, scene: dict[str, bytes]) -> Iterator[dict[str, Any]]:
    """A signed-in page per language, the language chosen with the page's cookie."""
    contexts, opened = [], {}
    for language in LANGUAGES:
        context = new_context(browser, live.url, language=language)
        contexts.append(context)
        tab = context.new_page()
        sign_in(tab, live.url)
        opened[language] = tab
    yield opened
    for context in contexts:
        context.close()


def axe_violations(page: Any, axe_source: str) -> list[dict[str, Any]]:
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(axe_source)
    result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return list(result["violations"])


def report(name: str, language: str, violations: list[dict[str, Any]]) -> str:
    lines = [f"axe on {name} ({language}): {len(violations)} violations"]
    for v in violations:
        lines.append(f"  [{v['impact']}] {v['id']}: {v['help']} ({v['helpUrl']})")
        for node in v["nodes"][:5]:
            lines.append(f"      {node['target']}: {node['failureSummary']!r}".replace("\n", " "))
            lines.append(f"      {node['html'][:200]}")
    return "\n".join(lines)


def check(page: Any, name: str, language: str, axe_source: str) -> None:
    assert page.locator("html").get_attribute("lang") == language
    violations = axe_violations(page, axe_source)
    text = report(name, language, violations)
    print(text)
    blocking = [v for v in violations if v["impact"] in BLOCKING]
    assert not blocking, text
    # Both languages complete: no text catalog key shown as itself (e.g. "inbox.accept").
    body = page.locator("body").inner_text()
    keys = re.findall(r"\b[a-z]+(?:\.[a-z_]+){1,3}\b", body)
    assert not [k for k in keys if not re.match(r"^(did|www|[a-z]+\.(example|org|com|fr))", k)], keys


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("name", PAGE_NAMES)
def test_axe_finds_no_serious_violation(
    tabs: dict[str, Any], live: LiveStory, scene: dict[str, bytes], axe_source: str, name: str, language: str
):
    page = tabs[language]
    target = pages(scene)[name]
    if isinstance(target, str):
        page.goto(f"{live.url}{target}")
    else:
        target(page, live.url)
    check(page, name, language, axe_source)


@pytest.mark.parametrize("language", LANGUAGES)
def test_axe_on_sign_in(browser: Any, live: LiveStory, axe_source: str, language: str):
    context = new_context(browser, live.url, language=language)
    try:
        page = context.new_page()
        page.goto(f"{live.url}/signin")
        check(page, "sign-in", language, axe_source)
        page.locator("#password").fill("not the password")
        page.locator("form.stack button[type=submit]").click()
        page.wait_for_load_state("load")
        check(page, "sign-in with an error", language, axe_source)
    finally:
        context.close()


# --- the keyboard -----------------------------------------------------------------------------


def tab_to(page: Any, selector: str, *, limit: int = 80) -> int:
    """Press Tab until the focused element matches ``selector``; how many presses it took."""
    for presses in range(1, limit + 1):
        page.keyboard.press("Tab")
        if page.evaluate("(s) => document.activeElement && document.activeElement.matches(s)", selector):
            return presses
    raise AssertionError(f"{selector} is not reachable with Tab in {limit} presses")


def test_axe_sees_what_it_should(browser: Any, axe_source: str):
    """A control: on a page with an unlabelled field and grey on white text, axe reports both."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_content(
            '<html lang="en"><head><title>t</title></head><body><main><h1>t</h1>'
            '<input type="text"><p style="color:#ccc;background:#fff">faint</p></main></body></html>'
        )
        found = {v["id"]: v["impact"] for v in axe_violations(page, axe_source)}
        assert found.get("label") == "critical" and found.get("color-contrast") == "serious", found
    finally:
        context.close()


def test_sign_in_and_language_with_the_keyboard_only(browser: Any, live: LiveStory):
    context = new_context(browser, live.url)
    try:
        page = context.new_page()
        page.goto(f"{live.url}/signin")
        # The password field has the focus on arrival (autofocus); Tab then reaches the button.
        assert page.evaluate("document.activeElement.id") == "password"
        page.keyboard.type("correct horse battery staple")
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.textContent") == "Sign in"
        with page.expect_navigation():
            page.keyboard.press("Enter")
        assert page.url.endswith("/record")
        # On a page, the first Tab reaches the skip link; Enter on it moves to the content.
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.textContent") == "Skip to the content"
        page.keyboard.press("Enter")
        assert page.url.endswith("#content")
        # Then the search field, typed into, and Enter searches.
        tab_to(page, "#q")
        page.keyboard.type("blood")
        with page.expect_navigation():
            page.keyboard.press("Enter")
        assert "q=blood" in page.url
        assert page.get_by_role("link", name="Complete blood count").is_visible()
        # The language switch: a select and a button, with the keyboard.
        tab_to(page, "#lang-switch")
        page.keyboard.press("ArrowDown")  # English -> Français
        tab_to(page, "form[action='/language'] button")
        with page.expect_navigation():
            page.keyboard.press("Space")
        assert page.locator("html").get_attribute("lang") == "fr"
        assert page.get_by_role("heading", level=1).inner_text() == "Mon dossier"
    finally:
        context.close()


def test_accepting_a_deposit_with_the_keyboard_only(browser: Any, live: LiveStory, tmp_path: Path):
    doc = live.run(
        live.lab.clinic.deposit(
            live.patient.did, b"Vitamin B12 410 pg/mL\n", title="Vitamin B12", category="lab",
            doc_type="lab-result", now=now(),
        )
    )
    live.run(live.lab.clinic.flush_outbox(now=now()))
    context = new_context(browser, live.url, language="en")
    try:
        page = context.new_page()
        sign_in(page, live.url)
        page.goto(f"{live.url}/inbox")
        key = doc.hex()
        # A label box: Space ticks it.
        tab_to(page, f"#label-{key}-SUD")
        page.keyboard.press("Space")
        assert page.locator(f"#label-{key}-SUD").is_checked()
        tab_to(page, f"form[action='/inbox/{key}/accept'] button")
        with page.expect_navigation():
            page.keyboard.press("Enter")
        entry = next(d for d in live.run(live.patient.patient.documents()) if d["doc"] == doc)
        assert entry["labels"] == ["SUD"]
        # Every control on the page can be reached: nothing focusable is skipped by Tab (no tabindex > 0).
        assert page.locator("[tabindex]:not([tabindex='0']):not([tabindex='-1'])").count() == 0
        # The focus is visible: the focused button has an outline or a box shadow.
        page.locator("body").focus()
        tab_to(page, "nav a")
        style = json.loads(
            page.evaluate(
                "JSON.stringify((({outlineStyle, outlineWidth, boxShadow}) => ({outlineStyle, outlineWidth, boxShadow}))"
                "(getComputedStyle(document.activeElement)))"
            )
        )
        assert style["outlineStyle"] != "none" or style["boxShadow"] != "none", style
    finally:
        context.close()
