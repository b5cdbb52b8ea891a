"""Issue 6's acceptance stories, driven in Debian's Chromium against real nodes.

The patient uses the web page in a real browser; the clinics act through the
real ``fedrecord`` CLI run as subprocesses on their own homes (while their
nodes serve, as in ``make demo``).  Elements are found by their accessible
role and name, which also proves those names exist.

(a) a deposit from a clinic node appears in the inbox and is accepted in the page;
(b) a grant made in the page lets the clinic's CLI read;
(c) that read shows under "who looked";
(d) revoking in the page makes the clinic's next read fail;
(e) deleting in the page removes the document from the clinic's node, and the page shows its attestation.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fedrecord.core import Scope

from ..node_helpers import DAY, now
from .conftest import LiveStory

GP_NAME = "Cabinet du Dr Martin"
LAB_NAME = "Laboratoire Pasteur"


def deposit_by_cli(live: LiveStory, tmp_path: Path, title: str, content: bytes, category: str = "lab") -> bytes:
    """The lab deposits a document with ``fedrecord deposit``; its id."""
    file = tmp_path / f"{category}-{len(title)}.txt"
    file.write_bytes(content)
    answer = live.cli(
        live.lab, "deposit", str(file), "--patient", live.patient.did, "--title", title, "--category", category
    )
    assert answer["delivered"] is True
    return bytes.fromhex(answer["doc"]) if isinstance(answer["doc"], str) else answer["doc"]


def gp_reads(live: LiveStory, doc: bytes, *, expect_error: bool = False) -> Any:
    """The GP reads ``doc`` from the patient with ``fedrecord get --patient``."""
    out = str(live.root / f"read-{doc.hex()[:16]}")  # --json output carries no document: it goes to a file
    return live.cli(live.gp, "get", doc.hex(), "--patient", live.patient.did, "--out", out, expect_error=expect_error)


def accept_by_api(live: LiveStory, doc: bytes) -> None:
    live.run(live.patient.patient.accept(doc, now=now()))


def go(page: Any, name: str) -> None:
    """Follow a link of the main menu."""
    page.get_by_role("navigation", name="Main menu").get_by_role("link", name=name, exact=True).click()


def submit(page: Any, button: Any) -> None:
    """Click a form's button and wait for the page the post is answered with (often the same URL)."""
    with page.expect_navigation():
        button.click()


def notice(page: Any) -> str:
    return " ".join(page.get_by_role("status").all_inner_texts())


# --- (a) ----------------------------------------------------------------------------------------


def test_a_deposit_appears_in_the_inbox_and_is_accepted_in_the_page(page: Any, live: LiveStory, tmp_path: Path):
    doc = deposit_by_cli(live, tmp_path, "Vitamin D level", b"25-OH vitamin D 31 ng/mL\n")
    go(page, "Inbox")
    page.wait_for_url(re.compile("/inbox$"))
    deposit = page.get_by_role("region", name="Vitamin D level")
    assert deposit.is_visible()
    assert LAB_NAME in deposit.inner_text(), "who sent it"
    # The GP's grant covers future lab results: the page says who would see it once accepted.
    assert GP_NAME in deposit.inner_text(), "which grants would see it"
    deposit.get_by_role("checkbox", name="Genetic information").check()
    submit(page, deposit.get_by_role("button", name="Accept into my record"))
    assert page.url.endswith("/inbox")
    assert "Vitamin D level" in notice(page)
    assert page.get_by_role("region", name="Vitamin D level").count() == 0
    entry = next(d for d in live.run(live.patient.patient.documents()) if d["doc"] == doc)
    assert entry["labels"] == ["GDIS"]
    go(page, "My record")
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name="Vitamin D level"))
    assert "Genetic information" in row.inner_text() and LAB_NAME in row.inner_text()


# --- (b), (c), (d) ------------------------------------------------------------------------------


def give_access(page: Any, live: LiveStory, *, category: str) -> bytes:
    """Give the GP access to one category through the sharing form; the new grant's id."""
    before = {g.id for g in live.run(live.patient.patient.live_grants(now=now()))}
    go(page, "Sharing")
    form = page.get_by_role("form", name="Give access")
    form.get_by_label("A connected clinic").select_option(label=GP_NAME)
    form.get_by_role("checkbox", name=category, exact=True).check()
    submit(page, form.get_by_role("button", name="Give access"))
    assert page.url.endswith("/sharing")
    assert "Done." in notice(page), page.content()
    (grant,) = {g.id for g in live.run(live.patient.patient.live_grants(now=now()))} - before
    return grant


def test_a_grant_made_in_the_page_lets_the_clinic_read_and_it_shows_under_who_looked(page: Any, live: LiveStory):
    xray = live.story.docs["xray"]  # an imaging report: outside the GP's grant of lab results
    assert "not-found" in gp_reads(live, xray, expect_error=True)
    grant = give_access(page, live, category="Imaging")
    sentence = page.get_by_role("listitem").filter(has=page.locator(f"form[action='/sharing/{grant.hex()}/revoke']"))
    assert GP_NAME in sentence.inner_text() and "imaging" in sentence.inner_text().lower()
    # (b) The GP's CLI reads the X-ray report.
    read = live.cli(live.gp, "get", xray.hex(), "--patient", live.patient.did, "--out", str(live.root / "xray.txt"))
    assert read["size"] > 0 and (live.root / "xray.txt").read_bytes() == b"No focal consolidation.\n"
    # (c) The read is under "who looked", and the chain verified.
    go(page, "Who looked")
    page.wait_for_url(re.compile("/audit"))
    looked = page.get_by_role("row").filter(has_text="Chest X-ray report").filter(has_text=GP_NAME)
    assert looked.count() >= 1, page.content()
    assert re.search("verified|intact", page.get_by_role("status").first.inner_text(), re.I)


def test_revoking_in_the_page_makes_the_clinics_next_read_fail(page: Any, live: LiveStory):
    cbc = live.story.docs["cbc"]
    grant = give_access(page, live, category="Reports")
    report = gp_reads(live, cbc)
    assert report["size"] > 0, "the GP reads the blood count under its grant of lab results"
    # Revoke every access the GP has, one button at a time, as the patient would.
    grants = [
        g
        for g in live.run(live.patient.patient.live_grants(now=now()))
        if g.record.audience == live.gp.did and "read" in g.record.actions
    ]
    assert grant in {g.id for g in grants} and len(grants) >= 2
    for g in grants:
        item = page.get_by_role("listitem").filter(has=page.locator(f"form[action='/sharing/{g.id.hex()}/revoke']"))
        submit(page, item.get_by_role("button", name="Revoke this access"))
        assert page.url.endswith("/sharing")
        assert notice(page), "the page says what revoking did"
        assert page.locator(f"form[action='/sharing/{g.id.hex()}/revoke']").count() == 0
    error = gp_reads(live, cbc, expect_error=True)
    assert "revoked" in error or "not-found" in error, error
    # Give the GP its lab results back for the next story (as build_story did).
    live.run(
        live.patient.patient.grant(
            audience=live.gp.did,
            scope=Scope(categories=("lab",), since=now() - 365 * DAY, past=True, future=True),
            actions=("read",),
            purpose="treatment",
            days=90,
            now=now(),
        )
    )


# --- (e) ----------------------------------------------------------------------------------------


def test_deleting_in_the_page_removes_the_clinics_copy_and_shows_its_attestation(
    page: Any, live: LiveStory, tmp_path: Path
):
    doc = deposit_by_cli(live, tmp_path, "Ferritin", b"Ferritin 85 ng/mL\n")
    accept_by_api(live, doc)
    assert gp_reads(live, doc)["size"] > 0
    held = {bytes.fromhex(d["doc"]) if isinstance(d["doc"], str) else d["doc"] for d in live.cli(live.gp, "ls")}
    assert doc in held, "the GP holds a copy"

    go(page, "My record")
    page.get_by_role("link", name="Ferritin").click()
    page.get_by_role("link", name="Delete this document…").click()
    assert page.get_by_role("heading", level=1).inner_text() == "Delete “Ferritin”?"
    assert page.get_by_role("heading", name="What deleting means").is_visible()
    submit(page, page.get_by_role("button", name="Delete for good"))
    assert page.url.endswith(f"/deleted/{doc.hex()}")
    answers = page.get_by_role("table")
    assert "Not answered yet" in answers.get_by_role("row").filter(has_text=GP_NAME).inner_text()

    # The clinics learn of the deletion at their next poll, destroy their copies and attest.
    live.cli(live.gp, "poll")
    live.cli(live.lab, "poll")
    held = {bytes.fromhex(d["doc"]) if isinstance(d["doc"], str) else d["doc"] for d in live.cli(live.gp, "ls")}
    assert doc not in held, "the GP's copy is gone"
    assert "not-found" in gp_reads(live, doc, expect_error=True), "and it can no longer be fetched"

    page.reload()
    gp_row = page.get_by_role("table").get_by_role("row").filter(has_text=GP_NAME)
    assert "Destroyed its copy and key (signed confirmation)" in gp_row.inner_text()
    lab_row = page.get_by_role("table").get_by_role("row").filter(has_text=LAB_NAME)
    assert "Keeps its own copy" in lab_row.inner_text() or "Destroyed" in lab_row.inner_text()
    assert "Every clinic has answered." in notice(page)
    go(page, "My record")
    assert page.get_by_role("link", name="Ferritin").count() == 0
