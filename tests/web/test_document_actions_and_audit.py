"""The document page's labels, hiding and deletion (US-6, US-7), and "who looked" (US-8), over real nodes.

Each test plays the story of :func:`tests.node_helpers.build_story` (a patient,
a GP and a lab over loopback HTTP) and drives the patient's page in process
with aiohttp's test client, as a browser would: GET a page, POST its form with
the session's CSRF token, follow the redirect, read the notice.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from nacl.pwhash import argon2id

from fedrecord.node import patient as patient_module
from fedrecord.node.patient import AUDIT_BROKEN_KEY, AUDIT_VERIFIED_KEY, PatientNode
from fedrecord.web import i18n
from fedrecord.web.app import make_web_app
from fedrecord.web.auth import set_password
from fedrecord.web.pages import audit
from fedrecord.web.pages.common import LABELS

from ..node_helpers import Story, build_story, now, stored_stream

PASSWORD = "correct horse battery staple"
WEB_KDF = (argon2id.OPSLIMIT_INTERACTIVE, argon2id.MEMLIMIT_INTERACTIVE)
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Site:
    story: Story
    client: TestClient
    csrf: str

    @property
    def patient(self) -> PatientNode:
        return self.story.patient.patient

    async def get(self, path: str, *, language: str = "en", status: int = 200) -> str:
        answer = await self.client.get(path, headers={"Accept-Language": language})
        text = await answer.text()
        assert answer.status == status, (path, answer.status, text[:2000])
        return text

    async def post(
        self, path: str, data: dict[str, str | list[str]] | None = None, *, csrf: bool = True
    ) -> tuple[int, str, str]:
        """POST a form; (status, where it redirected, the page after the redirect)."""
        fields: list[tuple[str, str]] = [("csrf", self.csrf)] if csrf else []
        for name, value in (data or {}).items():
            fields.extend((name, v) for v in (value if isinstance(value, list) else [value]))
        answer = await self.client.post(path, data=fields, allow_redirects=False)
        if answer.status != 303:
            return answer.status, "", await answer.text()
        location = answer.headers["Location"]
        return 303, location, await self.get(location)

    async def labels(self, doc: bytes) -> list[str]:
        return next(d["labels"] for d in await self.patient.documents() if d["doc"] == doc)


@asynccontextmanager
async def signed_in_site(tmp_path: Path) -> AsyncIterator[Site]:
    """The story's nodes and the patient's web page on a test server, the patient signed in."""
    story = await build_story(tmp_path)
    try:
        set_password(story.patient.h.path, PASSWORD, limits=WEB_KDF)
        app = make_web_app(story.patient.h, story.patient.patient)
        async with TestClient(TestServer(app)) as client:
            signed = await client.post("/signin", data={"password": PASSWORD}, allow_redirects=False)
            assert signed.status == 303
            page = await (await client.get("/record")).text()
            match = CSRF.search(page)
            assert match is not None
            yield Site(story, client, match.group(1))
    finally:
        await story.close()


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with signed_in_site(tmp_path) as signed_in:
        yield signed_in


def no_missing_texts(page: str) -> None:
    """Every text of these pages went through the catalogue (a missing key renders as itself)."""
    assert not re.search(
        r"\b(actions|delete|deleted|audit)\.[a-z.]+\b", re.sub(r'(href|action)="[^"]*"', "", page)
    )


async def gp_reads(story: Story, doc: bytes, times: int = 1) -> None:
    for _ in range(times):
        await story.gp.clinic.fetch(story.patient.did, doc, now=now())


# --- the document page --------------------------------------------------------------------------------


@pytest.mark.parametrize("language", ["en", "fr"])
async def test_the_document_page_offers_labels_hiding_and_deletion(site: Site, language: str) -> None:
    doc = site.story.docs["lithium"]
    page = await site.get(f"/record/{doc.hex()}", language=language)
    index = i18n.LANGUAGES.index(language)
    for code, names in LABELS.items():
        box = re.search(
            rf'<input type="checkbox" id="label-{code}" name="label" value="{code}"( checked)?>', page
        )
        assert box is not None, code
        assert bool(box.group(1)) == (code == "PSY"), code  # the lab labelled it mental health
        assert f'<label for="label-{code}">{names[index]}</label>' in page
    assert f'action="/record/{doc.hex()}/labels"' in page and f'action="/record/{doc.hex()}/hide"' in page
    assert f'href="/record/{doc.hex()}/delete"' in page and f'href="/audit?doc={doc.hex()}"' in page
    assert page.count(f'name="csrf" value="{site.csrf}"') >= 3
    if language == "en":
        assert "no clinic can see it" in page and "You still see it in your record" in page
    else:
        assert "aucun cabinet ne peut le voir" in page
    no_missing_texts(page)


async def test_labels_are_added_and_removed(site: Site) -> None:
    doc = site.story.docs["cbc"]
    await site.patient.label(doc, ["R"])  # a label this page does not know: kept as it is
    status, location, page = await site.post(f"/record/{doc.hex()}/labels", {"label": ["PSY", "HIV"]})
    assert (status, location) == (303, f"/record/{doc.hex()}")
    assert await site.labels(doc) == ["HIV", "PSY", "R"]
    assert "The labels of “Complete blood count” are saved." in page
    assert re.search(r'value="HIV" checked', page) and re.search(r'value="PSY" checked', page)
    # The GP's grant hides PSY privately: a document labelled so leaves its listing.
    await site.story.gp.clinic.poll(site.story.patient.did, now=now())
    assert doc not in {
        i["doc"] for i in await site.story.gp.clinic.listing(site.story.patient.did, now=now())
    }

    _, _, page = await site.post(f"/record/{doc.hex()}/labels", {"label": ["HIV"]})
    assert await site.labels(doc) == ["HIV", "R"]
    assert doc in {i["doc"] for i in await site.story.gp.clinic.listing(site.story.patient.did, now=now())}

    _, _, page = await site.post(f"/record/{doc.hex()}/labels", {"label": ["HIV"]})
    assert "were already these: nothing changed" in page

    _, _, page = await site.post(f"/record/{doc.hex()}/labels", {})
    assert await site.labels(doc) == ["R"]


async def test_label_refusals_change_nothing(site: Site) -> None:
    doc = site.story.docs["cbc"]
    _, location, page = await site.post(f"/record/{doc.hex()}/labels", {"label": ["PSY", "<script>"]})
    assert location == f"/record/{doc.hex()}"
    assert "That label is not one this page knows. Nothing was changed." in page
    assert await site.labels(doc) == []
    status, _, page = await site.post(f"/record/{doc.hex()}/labels", {"label": "PSY"}, csrf=False)
    assert status == 403 and "This form has expired" in page
    assert await site.labels(doc) == []
    for bad in ("00" * 32, "not-a-document"):
        status, _, page = await site.post(f"/record/{bad}/labels", {"label": "PSY"})
        assert status == 404 and "This document is not in your record." in page


async def test_hiding_keeps_a_document_from_every_clinic_and_showing_brings_it_back(site: Site) -> None:
    story, doc = site.story, site.story.docs["cbc"]

    async def gp_sees() -> bool:
        return doc in {i["doc"] for i in await story.gp.clinic.listing(story.patient.did, now=now())}

    assert await gp_sees()
    status, location, page = await site.post(f"/record/{doc.hex()}/hide", {"hidden": "1"})
    assert (status, location) == (303, f"/record/{doc.hex()}")
    assert "is hidden: no clinic sees it any more" in page
    assert "This document is hidden: no clinic sees it. You still do." in page and "Show it again" in page
    assert next(d for d in await site.patient.documents() if d["doc"] == doc)["hidden"]
    assert not await gp_sees()
    assert "(hidden)" in await site.get("/record")  # still in the patient's own record

    _, _, page = await site.post(f"/record/{doc.hex()}/hide", {"hidden": "0"})
    assert "is shown again" in page and "Hide from every clinic" in page
    assert await gp_sees()

    status, _, _ = await site.post(f"/record/{doc.hex()}/hide", {"hidden": "1"}, csrf=False)
    assert status == 403 and await gp_sees()
    status, _, page = await site.post(f"/record/{'11' * 32}/hide", {"hidden": "1"})
    assert status == 404 and "Traceback" not in page


# --- deletion -----------------------------------------------------------------------------------------


async def test_deletion_is_confirmed_then_lists_each_clinics_attestation(site: Site) -> None:
    story, doc = site.story, site.story.docs["cbc"]
    await gp_reads(story, doc)  # the GP holds a copy through the patient
    assert await story.gp.h.store.held_copy(doc) is not None

    page = await site.get(f"/record/{doc.hex()}/delete")
    assert "Delete “Complete blood count”?" in page
    assert "destroyed on your node" in page and "destroys its copy and its key" in page
    assert "signed confirmation" in page and "This cannot be undone." in page
    assert "keeps its own copy" in page
    assert f'action="/record/{doc.hex()}/delete"' in page and 'name="confirm" value="yes"' in page
    no_missing_texts(page)
    french = await site.get(f"/record/{doc.hex()}/delete", language="fr")
    assert "C&#39;est définitif" in french
    no_missing_texts(french)

    # Not confirmed, or without the form's token: nothing is deleted.
    _, location, page = await site.post(f"/record/{doc.hex()}/delete", {})
    assert location == f"/record/{doc.hex()}/delete" and "Nothing was deleted" in page
    status, _, _ = await site.post(f"/record/{doc.hex()}/delete", {"confirm": "yes"}, csrf=False)
    assert status == 403
    assert doc in {d["doc"] for d in await site.patient.documents()}

    status, location, page = await site.post(f"/record/{doc.hex()}/delete", {"confirm": "yes"})
    assert (status, location) == (303, f"/deleted/{doc.hex()}")
    assert "“Complete blood count” is deleted from your record and destroyed on your node." in page
    assert doc not in {d["doc"] for d in await site.patient.documents()}
    assert await stored_stream(story.patient, doc) is None
    # Both connected clinics are sent the tombstone; neither has answered yet.
    assert page.count("Not answered yet") == 2
    assert "Cabinet du Dr Martin" in page and "Laboratoire Pasteur" in page
    assert "2 clinics have not answered yet" in page and f'href="/deleted/{doc.hex()}"' in page
    no_missing_texts(page)

    # The GP learns of the deletion, destroys its copy and attests; the page, reloaded, says so.
    await story.gp.clinic.poll(story.patient.did, now=now())
    await story.gp.clinic.flush_outbox()
    assert await story.gp.h.store.held_copy(doc) is None
    page = await site.get(f"/deleted/{doc.hex()}")
    assert page.count("Not answered yet") == 1 and "1 clinic has not answered yet" in page
    gp_row = re.search(
        r"<th scope=\"row\">Cabinet du Dr Martin</th>\s*<td>([^<]*)</td>\s*<td>([^<]*)</td>", page
    )
    assert gp_row is not None and gp_row.group(1) == "Destroyed its copy and key (signed confirmation)"
    assert re.fullmatch(r"\d{1,2} [A-Z][a-z]+ \d{4}, \d\d:\d\d UTC", gp_row.group(2))

    # The lab wrote it: it keeps its own copy, and says until when.
    await story.lab.clinic.poll(story.patient.did, now=now())
    await story.lab.clinic.flush_outbox()
    page = await site.get(f"/deleted/{doc.hex()}")
    assert "Not answered yet" not in page and "Every clinic has answered." in page
    assert "Keeps its own copy, as the document&#39;s author, until" in page
    assert "author&#39;s legal duty to keep its medical record" in page
    french = await site.get(f"/deleted/{doc.hex()}", language="fr")
    assert "A détruit sa copie et sa clé" in french and "Tous les cabinets ont répondu." in french
    no_missing_texts(french)

    # The document is gone; a second click lands on the answers; the page stays reachable by its id.
    await site.get(f"/record/{doc.hex()}", status=404)
    await site.get(f"/record/{doc.hex()}/delete", status=404)
    _, location, _ = await site.post(f"/record/{doc.hex()}/delete", {"confirm": "yes"})
    assert location == f"/deleted/{doc.hex()}"
    status, _, page = await site.post(f"/record/{doc.hex()}/labels", {"label": "PSY"})
    assert status == 404 and "Traceback" not in page


async def test_the_deleted_page_knows_only_deleted_documents(site: Site) -> None:
    alive = site.story.docs["xray"]
    page = await site.get(f"/deleted/{alive.hex()}", status=404)
    assert "No deletion of this document is known to your node." in page
    await site.get("/deleted/nothing", status=404)
    status, _, page = await site.post(f"/record/{'22' * 32}/delete", {"confirm": "yes"})
    assert status == 404 and "This document is not in your record." in page


# --- who looked -----------------------------------------------------------------------------------------


def rows_of(page: str) -> list[str]:
    body = page.split("<tbody>", 1)[1].split("</tbody>", 1)[0] if "<tbody>" in page else ""
    return re.findall(r"<tr[^>]*>.*?</tr>", body, re.S)


def seqs_of(page: str) -> list[int]:
    return [int(s) for s in re.findall(r"<td>#(\d+)", page)]


async def test_who_looked_lists_reads_readably_and_says_the_chain_verified(site: Site) -> None:
    story = site.story
    page = await site.get("/audit")
    assert "Nobody has read your documents yet" in page and not rows_of(page)
    await gp_reads(story, story.docs["cbc"], times=2)
    page = await site.get("/audit")
    rows = rows_of(page)
    assert len(rows) == 2 and seqs_of(page) == [2, 1]  # newest first
    for row in rows:
        assert "Cabinet du Dr Martin" in row and "Complete blood count" in row and "<td>care</td>" in row
        assert re.search(r"<td>\d{1,2} [A-Z][a-z]+ \d{4}, \d\d:\d\d UTC</td>", row)
    assert (
        'class="notice chain-ok" role="status"' in page
        and "The log is intact as far as checked: each of its 2 entries was checked once," in page
    )
    no_missing_texts(page)
    french = await site.get("/audit", language="fr")
    assert (
        "Le journal est intact pour ce qui a été vérifié : chacune de ses 2 entrées a été vérifiée" in french
        and "<td>soins</td>" in french
    )
    no_missing_texts(french)

    # Deleted, the document's reads stay in the log, named as a deleted document.
    await site.post(f"/record/{story.docs['cbc'].hex()}/delete", {"confirm": "yes"})
    page = await site.get("/audit")
    assert all("a deleted document" in row and "Complete blood count" not in row for row in rows_of(page))
    assert "intact as far as checked: each of its 2 entries" in page


async def test_who_looked_filters_and_pages_in_the_database(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    story = site.story
    monkeypatch.setattr(audit, "PAGE_SIZE", 2)
    await gp_reads(story, story.docs["cbc"], times=5)
    page = await site.get("/audit")
    assert seqs_of(page) == [5, 4] and "Older entries" in page and "Newer entries" not in page
    older = re.search(r'<a href="(/audit\?before=4)">Older entries</a>', page)
    assert older is not None
    page = await site.get(older.group(1))
    assert seqs_of(page) == [3, 2] and "Newer entries" in page and "Older entries" in page
    page = await site.get("/audit?before=2")
    assert seqs_of(page) == [1] and "Older entries" not in page
    newer = re.search(r'<a href="([^"]+)">Newer entries</a>', page)
    assert newer is not None and newer.group(1) == "/audit?after=1"
    page = await site.get(newer.group(1))
    assert seqs_of(page) == [3, 2]
    assert seqs_of(await site.get("/audit?after=4")) == [5]
    assert seqs_of(await site.get("/audit?after=99")) == [5, 4]  # past the newest: the newest page

    # By reader: the select lists who read, by name.
    assert f'<option value="{story.gp.did}">Cabinet du Dr Martin</option>' in page
    assert seqs_of(await site.get(f"/audit?reader={story.gp.did}")) == [5, 4]
    filtered = await site.get(f"/audit?reader={story.lab.did}")
    assert not seqs_of(filtered) and "No read matches these filters." in filtered
    # By document: the links keep the filter.
    by_doc = await site.get(f"/audit?doc={story.docs['cbc'].hex()}&before=5")
    assert seqs_of(by_doc) == [4, 3] and "Only reads of: Complete blood count" in by_doc
    assert f'href="/audit?doc={story.docs["cbc"].hex()}&amp;before=3"' in by_doc
    assert not seqs_of(await site.get(f"/audit?doc={story.docs['xray'].hex()}"))
    assert "That document link is not valid" in await site.get("/audit?doc=zz")
    # By date (UTC days, both included).
    today = time.strftime("%Y-%m-%d", time.gmtime())
    tomorrow = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86_400))
    yesterday = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86_400))
    assert seqs_of(await site.get(f"/audit?from={today}&to={today}")) == [5, 4]
    assert not seqs_of(await site.get(f"/audit?from={tomorrow}"))
    assert not seqs_of(await site.get(f"/audit?to={yesterday}"))
    page = await site.get("/audit?from=12/03/2026")
    assert "A date was not understood" in page and seqs_of(page) == [5, 4]
    assert seqs_of(await site.get("/audit?before=x&after=-3")) == [5, 4]


async def test_the_chain_is_verified_incrementally(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    story = site.story
    checked: list[int] = []
    original = PatientNode._audit_entry_problem

    def counting(self: PatientNode, row, prev_hash: bytes):  # type: ignore[no-untyped-def]
        checked.append(row.seq)
        return original(self, row, prev_hash)

    monkeypatch.setattr(PatientNode, "_audit_entry_problem", counting)
    await gp_reads(story, story.docs["cbc"], times=3)
    await site.get("/audit")
    assert checked == [1, 2, 3]
    mark = await story.patient.h.store.meta_value(AUDIT_VERIFIED_KEY)
    assert mark is not None and int.from_bytes(mark[:8], "big") == 3
    checked.clear()
    await site.get("/audit")
    await site.get("/audit?before=3")
    assert checked == []  # nothing new: nothing verified again
    await gp_reads(story, story.docs["cbc"])
    page = await site.get("/audit")
    assert checked == [4] and "each of its 4 entries was checked once" in page
    # The whole-log check agrees, and shares the per-entry check.
    checked.clear()
    assert await site.patient.verify_audit() == (True, 4, "the audit chain verifies")
    assert checked == [1, 2, 3, 4]
    # What the whole-log check (``fedrecord audit --verify``) finds is what the page starts from.
    await story.patient.patient.forget_audit_verification()
    assert await site.patient.verify_audit() == (True, 4, "the audit chain verifies")
    checked.clear()
    assert "each of its 4 entries was checked once" in await site.get("/audit")
    assert checked == []


async def test_a_long_backlog_is_verified_a_budget_at_a_time(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    story = site.story
    await gp_reads(story, story.docs["cbc"], times=3)
    standing = await site.patient.verify_audit_since_last(budget=0)
    assert (standing.verified, standing.total, standing.complete) == (0, 3, False)
    # A page load spends its budget, then the check goes on in the background; a reload shows where it is.
    monkeypatch.setattr(audit, "PAGE_BUDGET", 0)
    page = await site.get("/audit")
    assert "Checking the log: 0 of 3 entries checked so far, all intact." in page
    assert page.count("(not checked)") == 3
    for _ in range(100):
        page = await site.get("/audit")
        if "each of its 3 entries was checked once" in page:
            break
        await asyncio.sleep(0.05)
    assert "each of its 3 entries was checked once" in page and "(not checked)" not in page


def tamper(story: Story, sql: str, *params: object) -> None:
    """Edit the patient's SQLite file directly, as someone with the disk would."""
    connection = sqlite3.connect(story.patient.h.path / "node.db")
    try:
        with connection:
            connection.execute(sql, params)
    finally:
        connection.close()


async def test_a_tampered_entry_is_reported_on_the_page_with_its_number(site: Site) -> None:
    story = site.story
    await gp_reads(story, story.docs["cbc"], times=3)
    tamper(story, "UPDATE audit SET at = at - 3600 WHERE seq = 2")  # someone moves a read an hour back
    page = await site.get("/audit")
    assert 'class="error chain-broken" role="alert"' in page
    assert "Entry number 2 does not check out (it does not follow on from the entry before it)" in page
    assert "chain-ok" not in page
    assert re.search(r"<td>#2 <strong>\(not checked\)</strong>", page)
    assert re.search(r"<td>#3 <strong>\(not checked\)</strong>", page)
    assert re.search(r"<td>#1</td>", page)
    french = await site.get("/audit", language="fr")
    assert "L&#39;entrée numéro 2 n&#39;est pas valide" in french
    no_missing_texts(french)
    # The failure is remembered: putting the row back does not make it disappear by itself.
    tamper(story, "UPDATE audit SET at = at + 3600 WHERE seq = 2")
    assert await story.patient.h.store.meta_value(AUDIT_BROKEN_KEY) is not None
    assert "Entry number 2 does not check out" in await site.get("/audit")
    # Checked again from the first entry (the repaired log verifies).
    status, location, page = await site.post("/audit/verify")
    assert (status, location) == (303, "/audit")
    assert (
        "The whole log is checked again from its first entry." in page
        and "each of its 3 entries was checked once" in page
    )


async def test_tampering_with_verified_entries_is_found(site: Site) -> None:
    story = site.story
    await gp_reads(story, story.docs["cbc"], times=3)
    assert "each of its 3 entries was checked once" in await site.get("/audit")
    # The entry verified last is looked at again on every load: a changed or removed one shows at once.
    original = await story.patient.h.store.audit_entry_hash(3)
    tamper(story, "UPDATE audit SET entry_hash = zeroblob(32) WHERE seq = 3")
    page = await site.get("/audit")
    assert "Entry number 3 does not check out (it changed or disappeared since it was last checked)" in page
    tamper(story, "UPDATE audit SET entry_hash = ? WHERE seq = 3", original)
    _, _, page = await site.post("/audit/verify")
    assert "each of its 3 entries was checked once" in page
    # An older entry edited after it verified (here the reader it lists, which is not who signed): a
    # page load checks only what is new, the whole-log check finds it.
    tamper(story, "UPDATE audit SET reader = ? WHERE seq = 1", story.lab.did)
    assert "each of its 3 entries was checked once" in await site.get("/audit")
    _, _, page = await site.post("/audit/verify")
    assert "Entry number 1 does not check out (what it shows is not what the reader signed)" in page
    assert (await site.patient.verify_audit())[2] == "entry 1: the entry differs from its receipt"
    assert "Entry number 1 does not check out" in await site.get("/audit")
    # Removing the newest entries is seen too: the entry verified last has disappeared.
    tamper(story, "UPDATE audit SET reader = ? WHERE seq = 1", story.gp.did)
    await site.post("/audit/verify")
    tamper(story, "DELETE FROM audit WHERE seq = 3")
    assert "Entry number 3 does not check out" in await site.get("/audit")


async def test_a_log_cut_short_below_a_checkpoint_is_found_on_every_load(site: Site) -> None:
    story = site.story
    await gp_reads(story, story.docs["cbc"], times=3)
    assert "each of its 3 entries was checked once" in await site.get("/audit")
    # Two more reads, vouched for by a device's checkpoint of entry 5, then removed with the entries they
    # follow: what is left still chains, and nothing new is there to check on this load.
    await gp_reads(story, story.docs["cbc"], times=2)
    checkpoint = await site.patient.checkpoint_audit(now=now())
    assert checkpoint is not None and checkpoint.record.seq == 5
    tamper(story, "DELETE FROM audit WHERE seq >= 4")
    page = await site.get("/audit")
    assert "chain-ok" not in page and 'class="error chain-broken" role="alert"' in page
    assert "Entry number 5 does not check out (it differs from the copy your devices vouched for)." in page
    # Only what was checked is said to be intact: entries 1 to 3, not an entry 4 that is gone.
    assert "3 entries were checked before it was found; from entry 4 on," in page
    assert "The entries before it are intact" not in page
    assert re.search(r"<td>#3</td>", page)
    assert (await site.patient.verify_audit())[2] == "entry 5: differs from its checkpoint"
    french = await site.get("/audit", language="fr")
    assert "L&#39;entrée numéro 5 n&#39;est pas valide" in french
    assert "3 entrées avaient été vérifiées avant de le constater ; à partir de l&#39;entrée 4," in french
    no_missing_texts(french)


async def test_an_older_entry_below_a_checkpoint_is_compared_on_every_load(site: Site) -> None:
    story = site.story
    await gp_reads(story, story.docs["cbc"], times=3)
    await site.patient.checkpoint_audit(now=now())  # of entry 3
    await gp_reads(story, story.docs["cbc"], times=2)
    assert "each of its 5 entries was checked once" in await site.get("/audit")
    # Entry 3 is no longer the newest: a load does not read it again, but compares it with its checkpoint.
    original = await story.patient.h.store.audit_entry_hash(3)
    tamper(story, "UPDATE audit SET entry_hash = zeroblob(32) WHERE seq = 3")
    page = await site.get("/audit")
    assert "Entry number 3 does not check out (it differs from the copy your devices vouched for)." in page
    assert "The entries before it are intact" in page
    assert re.search(r"<td>#2</td>", page) and re.search(r"<td>#4 <strong>\(not checked\)</strong>", page)
    # Remembered like the others, until the whole log is checked again.
    tamper(story, "UPDATE audit SET entry_hash = ? WHERE seq = 3", original)
    assert "Entry number 3 does not check out" in await site.get("/audit")
    _, _, page = await site.post("/audit/verify")
    assert "each of its 5 entries was checked once" in page


async def test_a_verification_under_way_does_not_undo_a_recheck(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    story = site.story
    store = story.patient.h.store
    await gp_reads(story, story.docs["cbc"], times=3)
    await site.get("/audit")
    await gp_reads(story, story.docs["cbc"], times=2)
    tamper(story, "UPDATE audit SET reader = ? WHERE seq = 1", story.lab.did)  # an entry already verified
    # The patient asks for the whole log to be checked again while a verification from entry 3 is under way.
    original = store.audit_chain

    async def rechecked_meanwhile(**kwargs):  # type: ignore[no-untyped-def]
        await site.patient.forget_audit_verification()
        return await original(**kwargs)

    monkeypatch.setattr(store, "audit_chain", rechecked_meanwhile)
    standing = await site.patient.verify_audit_since_last()
    monkeypatch.setattr(store, "audit_chain", original)
    assert standing.complete  # entries 4 and 5 do follow on from entry 3...
    assert await store.meta_value(AUDIT_VERIFIED_KEY) is None  # ...but its mark is not written back
    page = await site.get("/audit")
    assert "Entry number 1 does not check out (what it shows is not what the reader signed)" in page


async def test_two_page_loads_at_once_start_one_background_verification(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    await gp_reads(site.story, site.story.docs["cbc"], times=3)
    # A slow disk: each load's walk (in a worker thread) outlasts its budget after one entry.
    original = PatientNode._check_audit_run

    def slow(self: PatientNode, rows, prev_hash: bytes):  # type: ignore[no-untyped-def]
        time.sleep(0.05)
        return original(self, rows, prev_hash)

    monkeypatch.setattr(PatientNode, "_check_audit_run", slow)
    monkeypatch.setattr(patient_module, "AUDIT_BATCH", 1)
    monkeypatch.setattr(audit, "PAGE_BUDGET", 0.01)
    started: list[int] = []
    done = asyncio.Event()

    async def verifying(patient: PatientNode) -> None:
        started.append(1)
        await done.wait()

    monkeypatch.setattr(audit, "_verify_the_rest", verifying)
    try:
        pages = await asyncio.gather(site.get("/audit"), site.get("/audit"))  # two tabs at once
        assert all("Checking the log: 1 of 3 entries checked so far" in page for page in pages)
        assert len(started) == 1
    finally:
        done.set()


async def test_the_audit_page_refuses_a_recheck_without_the_forms_token(site: Site) -> None:
    await gp_reads(site.story, site.story.docs["cbc"])
    await site.get("/audit")
    status, _, page = await site.post("/audit/verify", csrf=False)
    assert status == 403 and "This form has expired" in page
    assert await site.story.patient.h.store.meta_value(AUDIT_VERIFIED_KEY) is not None
