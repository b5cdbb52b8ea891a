"""The inbox and sharing pages, and the sentences that say each grant (US-3 to US-6, US-9).

The sentence builder is pure and checked word for word in both languages.
The pages run in-process with aiohttp's TestClient over real nodes
(:func:`tests.node_helpers.build_story`: a patient, a GP and a lab, lab
results accepted, the GP granted lab results with PSY and SEX privately
hidden): each action through its form, then what the nodes did, and each
refusal (a friendly notice, nothing changed).
"""

from __future__ import annotations

import calendar
import datetime
import hashlib
import html
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from nacl.pwhash import argon2id

from fedrecord.core import (
    Code,
    Grant,
    PrivateRestriction,
    RemoteProtocolError,
    Revocation,
    Scope,
    SigningIdentity,
)
from fedrecord.core.errors import FedrecordError
from fedrecord.node.patient import distinct_labels
from fedrecord.web import i18n
from fedrecord.web.app import make_web_app
from fedrecord.web.auth import set_password
from fedrecord.web.pages.common import CATEGORIES, LABELS
from fedrecord.web.sentences import (
    CATEGORY_PHRASES,
    Hidden,
    Vocabulary,
    ended_sentence,
    grant_details,
    grant_sentence,
    grant_summary,
    hidden_from,
    long_date,
)

from ..node_helpers import ServedNode, Story, build_story, enroll_device, stored_stream
from .forms import csrf_of, forms_of

PASSWORD = "correct horse battery staple"
GP = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
LAB = "did:key:z6MkpTHR8VNsBxYAAWHut2Geadd9jSwuBV8xRoAnwWsdvktH"
T = calendar.timegm((2026, 9, 1, 10, 0, 0))  # 1 September 2026, 10:00 UTC
VOCABULARY = Vocabulary(labels=LABELS, categories=CATEGORIES, titles={b"\x01" * 32: "Blood count"})


def a_grant(**changes: object) -> Grant:
    fields: dict[str, object] = {
        "audience": GP,
        "scope": Scope(categories=("lab",), past=True, future=True),
        "actions": ("read",),
        "purpose": "treatment",
        "iat": T,
        "nbf": T,
        "exp": calendar.timegm((2027, 3, 12, 10, 0, 0)),
        "nonce": bytes(16),
    }
    fields.update(changes)
    return Grant(**fields)  # type: ignore[arg-type]


NOTHING_HIDDEN = Hidden()


def say(grant: Grant, language: str, hidden: Hidden = NOTHING_HIDDEN) -> str:
    return grant_sentence(
        grant, name="Dr Martin's practice", hidden=hidden, language=language, vocabulary=VOCABULARY
    )


# --- the sentences ------------------------------------------------------------------------------


def test_a_grant_with_private_restrictions_in_one_sentence() -> None:
    hidden = Hidden(labels=("PSY", "SEX"))
    assert say(a_grant(), "en", hidden) == (
        "Dr Martin's practice can read your lab results until 12 March 2027, except mental health and sexual health."
    )
    assert say(a_grant(), "fr", hidden) == (
        "Dr Martin's practice peut lire vos résultats d'analyses jusqu'au 12 mars 2027, "
        "sauf santé mentale et santé sexuelle."
    )


def test_what_a_grant_covers() -> None:
    two = a_grant(scope=Scope(categories=("lab", "imaging"), labels=("HIV",), past=True, future=True))
    assert say(two, "en") == (
        "Dr Martin's practice can read your imaging and lab results with the label HIV until 12 March 2027."
    )
    assert say(two, "fr") == (
        "Dr Martin's practice peut lire votre imagerie et vos résultats d'analyses avec l'étiquette VIH "
        "jusqu'au 12 mars 2027."
    )
    whole = a_grant(scope=Scope(past=True, future=True, since=calendar.timegm((2025, 3, 1, 0, 0, 0))))
    assert say(whole, "en") == (
        "Dr Martin's practice can read your whole record (dated from 1 March 2025 on) until 12 March 2027."
    )
    assert say(whole, "fr") == (
        "Dr Martin's practice peut lire tout votre dossier (datant du 1er mars 2025 ou après) jusqu'au 12 mars 2027."
    )
    future = a_grant(scope=Scope(labels=("PSY",), future=True))
    assert say(future, "en") == (
        "Dr Martin's practice can read your documents with the label mental health "
        "(only documents added from 1 September 2026 on) until 12 March 2027."
    )
    assert say(future, "fr") == (
        "Dr Martin's practice peut lire vos documents avec l'étiquette santé mentale "
        "(seulement les documents ajoutés à partir du 1er septembre 2026) jusqu'au 12 mars 2027."
    )
    named = a_grant(scope=Scope(ids=(b"\x01" * 32,)))
    assert say(named, "en") == "Dr Martin's practice can read the document “Blood count” until 12 March 2027."
    assert (
        say(named, "fr")
        == "Dr Martin's practice peut lire le document « Blood count » jusqu'au 12 mars 2027."
    )
    unnamed = a_grant(scope=Scope(ids=(b"\x02" * 32, b"\x03" * 32), categories=("note",), past=True))
    assert say(unnamed, "en") == (
        "Dr Martin's practice can read your notes (only documents already in your record on 1 September 2026) "
        "and 2 chosen documents until 12 March 2027."
    )
    assert say(unnamed, "fr") == (
        "Dr Martin's practice peut lire vos comptes rendus (seulement les documents déjà dans votre dossier "
        "le 1er septembre 2026) et 2 documents choisis jusqu'au 12 mars 2027."
    )


def test_deposit_and_device_grants() -> None:
    deposit = a_grant(scope=Scope(), actions=("deposit",))
    assert say(deposit, "en") == "Dr Martin's practice can send documents to your inbox until 12 March 2027."
    assert say(deposit, "fr") == (
        "Dr Martin's practice peut déposer des documents dans votre boîte de réception jusqu'au 12 mars 2027."
    )
    device = a_grant(
        scope=Scope(past=True, future=True), actions=("delegate", "manage", "read"), purpose="device"
    )
    assert (
        say(device, "en") == "Dr Martin's practice can read and manage your whole record until 12 March 2027."
    )
    assert (
        say(device, "fr")
        == "Dr Martin's practice peut lire et gérer tout votre dossier jusqu'au 12 mars 2027."
    )


def test_everything_hidden_is_said() -> None:
    hidden = Hidden(labels=("HIV",), categories=("imaging",), documents=1)
    assert say(a_grant(), "en", hidden).endswith(", except HIV, imaging and 1 particular document.")
    assert say(a_grant(), "fr", hidden).endswith(", sauf VIH, imagerie et 1 document particulier.")
    many = Hidden(documents=3)
    assert say(a_grant(), "en", many).endswith(", except 3 particular documents.")
    assert say(a_grant(), "fr", many).endswith(", sauf 3 documents particuliers.")


def test_restrictions_that_apply_to_a_grant() -> None:
    grant = a_grant()
    mine, other = b"\xaa" * 32, b"\xbb" * 32
    restrictions = [
        PrivateRestriction(grants=(mine,), labels=("PSY",), iat=T),
        PrivateRestriction(audiences=(GP,), categories=("imaging",), iat=T),
        PrivateRestriction(audiences=(GP,), ids=(b"\x05" * 32,), iat=T),
        PrivateRestriction(grants=(other,), labels=("SEX",), iat=T),
        PrivateRestriction(audiences=(LAB,), labels=("HIV",), iat=T),
    ]
    assert hidden_from(mine, grant, restrictions) == Hidden(
        labels=("PSY",), categories=("imaging",), documents=1
    )
    assert not hidden_from(other, a_grant(audience=LAB), [])
    # A grant a device gave: what is hidden from the device grant above it, or from the device, is hidden
    # from it too (7.7).
    given, phone = b"\xcc" * 32, "did:key:z6MkphoneXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2do"
    device = (other, a_grant(audience=phone))
    assert hidden_from(given, a_grant(audience=LAB), restrictions, above=[device]) == Hidden(
        labels=("HIV", "SEX")
    )
    by_node = [PrivateRestriction(audiences=(phone,), labels=("GDIS",), iat=T)]
    assert hidden_from(given, a_grant(audience=LAB), by_node, above=[device]) == Hidden(labels=("GDIS",))


def test_short_form_details_and_ended_grants() -> None:
    grant = a_grant(actions=("delegate", "read"))
    assert (
        grant_summary(grant, name="Dr X", language="en", vocabulary=VOCABULARY)
        == "Dr X (lab results until 12 March 2027)"
    )
    assert grant_summary(grant, name="Dr X", language="fr", vocabulary=VOCABULARY) == (
        "Dr X (résultats d'analyses jusqu'au 12 mars 2027)"
    )
    whole = a_grant(scope=Scope(past=True, future=True))
    assert (
        grant_summary(whole, name="Dr X", language="en", vocabulary=VOCABULARY)
        == "Dr X (whole record until 12 March 2027)"
    )
    assert grant_details(grant, language="en") == (
        "Purpose: care. This access may be passed on, narrower, to another clinic."
    )
    assert grant_details(a_grant(purpose="research"), language="fr") == (
        "Finalité : recherche. Cet accès ne peut pas être transmis."
    )
    assert ended_sentence(grant, name="Dr X", revoked=True, language="en", vocabulary=VOCABULARY) == (
        "Dr X could read your lab results until 12 March 2027; you revoked this access."
    )
    assert ended_sentence(grant, name="Dr X", revoked=False, language="fr", vocabulary=VOCABULARY) == (
        "Dr X pouvait lire vos résultats d'analyses jusqu'au 12 mars 2027 ; cet accès a expiré."
    )


def test_dates_in_words_and_every_category_phrased() -> None:
    assert long_date(calendar.timegm((2027, 3, 1, 23, 59, 0)), "en") == "1 March 2027"
    assert long_date(calendar.timegm((2027, 3, 1, 23, 59, 0)), "fr") == "1er mars 2027"
    assert long_date(calendar.timegm((2027, 8, 15, 0, 0, 0)), "fr") == "15 août 2027"
    assert set(CATEGORIES) <= set(CATEGORY_PHRASES)
    odd = a_grant(scope=Scope(categories=("dental",), past=True, future=True))
    assert "your documents of type “dental”" in say(odd, "en")
    assert "vos documents de type « dental »" in say(odd, "fr")


# --- the pages, over real nodes -----------------------------------------------------------------


@dataclass
class Page:
    story: Story
    client: TestClient  # type: ignore[type-arg]

    @property
    def patient(self):  # type: ignore[no-untyped-def]
        return self.story.patient.patient

    async def get(self, path: str, language: str = "en") -> str:
        answer = await self.client.get(path, headers={"Accept-Language": language})
        assert answer.status == 200, await answer.text()
        return await answer.text()

    async def post(
        self, path: str, data: dict[str, object] | list[tuple[str, str]], *, csrf: bool = True
    ) -> str:
        """Post a form as the page would (with its CSRF token): the answer must redirect; the next page's text."""
        fields = list(data.items()) if isinstance(data, dict) else list(data)
        if csrf:
            fields.append(("csrf", csrf_of(await self.get("/record"))))
        answer = await self.client.post(path, data=fields, allow_redirects=False)
        assert answer.status == 303, (answer.status, await answer.text())
        return await self.get(answer.headers["Location"])


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[Page]:
    story = await build_story(tmp_path)
    try:
        home = story.patient.h
        set_password(
            home.path, PASSWORD, limits=(argon2id.OPSLIMIT_INTERACTIVE, argon2id.MEMLIMIT_INTERACTIVE)
        )
        async with TestClient(TestServer(make_web_app(home, story.patient.patient))) as client:
            answer = await client.post("/signin", data={"password": PASSWORD}, allow_redirects=False)
            assert answer.status == 303
            yield Page(story, client)
    finally:
        await story.close()


def now() -> int:
    return int(time.time())


async def deposit(page: Page, title: str, *, category: str = "lab", labels: tuple[str, ...] = ()) -> bytes:
    lab = page.story.lab.clinic
    doc = await lab.deposit(
        page.story.patient.did, title.encode() + b"\n", title=title, category=category,
        doc_type="report", labels=labels, now=now(),
    )  # fmt: skip
    assert await lab.flush_outbox() == (1, 0)
    return doc


def text_of(page_html: str) -> str:
    """The page's visible words, tags dropped and entities decoded."""
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page_html)))


def untranslated(page_html: str) -> list[str]:
    return [
        key
        for key in i18n.catalog()
        if re.search(rf"(?<![\w.]){re.escape(key)}(?![\w.])", text_of(page_html))
    ]


async def test_the_inbox_says_who_sent_what_and_who_would_see_it(page: Page) -> None:
    doc = await deposit(page, "Thyroid <b>TSH</b>", labels=("GDIS",))
    english = await page.get("/inbox")
    words = text_of(english)
    assert "Thyroid <b>TSH</b>" in words and "<b>TSH</b>" not in english  # escaped, never markup
    assert "From Laboratoire Pasteur" in words
    assert "Type Lab results" in words
    assert "Labels Genetic information" in words
    exp = page.story.gp_grant.record.exp
    assert f"Cabinet du Dr Martin (lab results until {long_date(exp, 'en')})" in words
    assert "Laboratoire Pasteur will be told you refused it" in words
    # One accept and one reject form for the deposit, both with the CSRF token; its labels are not offered again.
    actions = {f.action for f in forms_of(english) if f.method == "post"}
    assert {f"/inbox/{doc.hex()}/accept", f"/inbox/{doc.hex()}/reject"} <= actions
    assert f'id="label-{doc.hex()}-PSY"' in english and f'id="label-{doc.hex()}-GDIS"' not in english
    french = text_of(await page.get("/inbox", "fr"))
    assert f"Cabinet du Dr Martin (résultats d'analyses jusqu'au {long_date(exp, 'fr')})" in french
    assert "De Laboratoire Pasteur" in french and "Informations génétiques" in french
    assert not untranslated(english) and not untranslated(await page.get("/inbox", "fr"))


async def test_an_empty_inbox(page: Page) -> None:
    assert "Nothing is waiting in your inbox." in text_of(await page.get("/inbox"))
    assert "Rien n'attend dans votre boîte de réception." in text_of(await page.get("/inbox", "fr"))


async def test_accepting_with_a_label_keeps_it_from_the_gp(page: Page) -> None:
    plain = await deposit(page, "Ferritin")
    private = await deposit(page, "Sertraline level")
    after = text_of(await page.post(f"/inbox/{plain.hex()}/accept", {}))
    assert (
        "“Ferritin” joined your record. It can be read by: Cabinet du Dr Martin (lab results until" in after
    )
    after = text_of(await page.post(f"/inbox/{private.hex()}/accept", [("label", "PSY"), ("label", "SUD")]))
    assert "“Sertraline level” joined your record. Only you can read it." in after
    assert "Nothing is waiting in your inbox." in after
    record = {d["doc"]: d for d in await page.patient.documents()}
    assert record[private]["labels"] == ["PSY", "SUD"]
    assert record[plain]["labels"] == []
    # What the GP's node can list now: the blood count and the ferritin, not the PSY-labelled document.
    gp = page.story.gp.clinic
    await gp.poll(page.story.patient.did, now=now())
    listed = {item["doc"] for item in await gp.listing(page.story.patient.did, now=now())}
    assert plain in listed and private not in listed


async def test_rejecting_destroys_and_tells_the_sender(page: Page) -> None:
    doc = await deposit(page, "Wrong patient's result")
    after = text_of(await page.post(f"/inbox/{doc.hex()}/reject", {}))
    assert (
        "“Wrong patient's result” was rejected: it is destroyed on your node, and Laboratoire Pasteur will be told."
        in after
    )
    assert await page.patient.inbox() == []
    assert doc not in {d["doc"] for d in await page.patient.documents()}
    assert await stored_stream(page.story.patient, doc) is None
    assert await page.patient.store.decided(doc)
    told = [(row.kind, row.target) for row in await page.patient.store.outbox_items()]
    assert ("decision", page.story.lab.did) in told
    # Rejected again, or accepted after: it is gone, said plainly.
    again = text_of(await page.post(f"/inbox/{doc.hex()}/reject", {}))
    assert "This document is no longer in your inbox" in again
    again = text_of(await page.post(f"/inbox/{doc.hex()}/accept", {}))
    assert "This document is no longer in your inbox" in again


async def test_inbox_refusals(page: Page) -> None:
    doc = await deposit(page, "Vitamin D")
    # A label this page does not offer: nothing accepted.
    refused = text_of(await page.post(f"/inbox/{doc.hex()}/accept", {"label": "<script>"}))
    assert "That label is not one this page knows. Nothing was changed." in refused
    assert [item.doc for item in await page.patient.inbox()] == [doc]
    # Not a document id; an id that is not in the inbox.
    for bad in ("nothex", "00" * 32, doc.hex()[:-2]):
        assert "This document is no longer in your inbox" in text_of(
            await page.post(f"/inbox/{bad}/accept", {})
        )
        assert "This document is no longer in your inbox" in text_of(
            await page.post(f"/inbox/{bad}/reject", {})
        )
    # Without the CSRF token: refused, nothing done.
    for action in ("accept", "reject"):
        answer = await page.client.post(f"/inbox/{doc.hex()}/{action}", data={}, allow_redirects=False)
        assert answer.status == 403
    assert [item.doc for item in await page.patient.inbox()] == [doc]


async def test_a_node_error_becomes_a_sentence(page: Page, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = await deposit(page, "Calcium")

    async def stale(*args: object, **kwargs: object) -> None:
        raise RemoteProtocolError(Code.STALE, "busy")

    monkeypatch.setattr(page.patient, "accept", stale)
    monkeypatch.setattr(page.patient, "revoke", stale)
    assert "Your node could not do this (stale). Nothing was changed." in text_of(
        await page.post(f"/inbox/{doc.hex()}/accept", {})
    )
    gp_grant = page.story.gp_grant.id.hex()
    answer = await page.client.post(
        f"/sharing/{gp_grant}/revoke",
        data={"csrf": csrf_of(await page.get("/record"))},
        allow_redirects=False,
    )
    assert answer.status == 303
    assert "Votre nœud n'a pas pu le faire (stale). Rien n'a été modifié." in text_of(
        await page.get("/sharing", "fr")
    )


async def test_sharing_says_who_can_see_what(page: Page) -> None:
    exp = page.story.gp_grant.record.exp
    since = page.story.gp_grant.record.scope.since
    assert since is not None
    english = await page.get("/sharing")
    words = text_of(english)
    assert (
        f"Cabinet du Dr Martin can read your lab results (dated from {long_date(since, 'en')} on) "
        f"until {long_date(exp, 'en')}, except mental health and sexual health."
    ) in words
    assert "Purpose: care. This access may be passed on, narrower, to another clinic." in words
    assert "If you revoke it, Cabinet du Dr Martin can no longer read these documents" in words
    assert "Laboratoire Pasteur can send documents to your inbox until" in words
    assert "Cabinet du Dr Martin can send documents to your inbox until" in words
    # The grant form: connected clinics by name, every category and label, a default date in 90 days.
    assert f'<option value="{page.story.gp.did}">Cabinet du Dr Martin</option>' in english
    assert f'<option value="{page.story.lab.did}">Laboratoire Pasteur</option>' in english
    default = (datetime.datetime.now(datetime.UTC).date() + datetime.timedelta(days=90)).isoformat()
    assert f'value="{default}"' in english
    for code in CATEGORIES:
        assert f'id="grant-category-{code}"' in english and f'<label for="grant-category-{code}">' in english
    for code in LABELS:
        assert f'<label for="grant-hide-{code}">' in english
    french = text_of(await page.get("/sharing", "fr"))
    assert (
        f"Cabinet du Dr Martin peut lire vos résultats d'analyses (datant du {long_date(since, 'fr')} ou après) "
        f"jusqu'au {long_date(exp, 'fr')}, sauf santé mentale et santé sexuelle."
    ) in french
    assert "Laboratoire Pasteur peut déposer des documents dans votre boîte de réception" in french
    assert not untranslated(english) and not untranslated(await page.get("/sharing", "fr"))
    # Every control has a label: each id'd input/select is named by a <label for>.
    for control in re.findall(r'<(?:input|select)[^>]*\bid="([^"]+)"', english):
        if control != "lang-switch":
            assert f'<label for="{control}">' in english, control


def grant_form(**changes: object) -> list[tuple[str, str]]:
    until = (datetime.datetime.now(datetime.UTC).date() + datetime.timedelta(days=30)).isoformat()
    fields: dict[str, object] = {"peer": "", "did": "", "since": "", "until": until, "purpose": "treatment"}
    fields.update(changes)
    pairs: list[tuple[str, str]] = []
    for key, value in fields.items():
        for one in value if isinstance(value, list | tuple) else [value]:
            pairs.append((key, str(one)))
    return pairs


async def test_granting_through_the_form_lets_the_clinic_read(page: Page) -> None:
    lab, patient = page.story.lab, page.story.patient
    before = {g.id for g in await page.patient.all_grants()}
    after = text_of(
        await page.post(
            "/sharing/grant",
            grant_form(
                peer=lab.did, category="imaging", purpose="research", delegate="1", hide=["PSY", "HIV"]
            ),
        )
    )
    issued = [g for g in await page.patient.all_grants() if g.id not in before]
    assert len(issued) == 1
    record = issued[0].record
    assert record.audience == lab.did
    assert record.scope == Scope(categories=("imaging",), past=True, future=True)
    assert set(record.actions) == {"delegate", "read"} and record.purpose == "research"
    until = datetime.datetime.now(datetime.UTC).date() + datetime.timedelta(days=30)
    assert datetime.datetime.fromtimestamp(record.exp, datetime.UTC).date() == until
    sentence = f"Laboratoire Pasteur can read your imaging until {long_date(record.exp, 'en')}, except mental health and HIV."
    assert f"Done. {sentence}" in after
    assert sentence in text_of(await page.get("/sharing"))
    restrictions = await page.patient.store.records(PrivateRestriction, signer=patient.did)
    assert any(
        r.record.grants == (issued[0].id,) and {"PSY", "HIV"} <= set(r.record.labels or ()) and set(distinct_labels(r.record.labels or ())) == {"PSY", "HIV"}
        for r in restrictions
    )
    # The lab's node can now list and read the X-ray report, and only it.
    await lab.clinic.poll(patient.did, now=now())
    listed = [item["doc"] for item in await lab.clinic.listing(patient.did, now=now())]
    assert listed == [page.story.docs["xray"]]
    assert (
        await lab.clinic.fetch(patient.did, page.story.docs["xray"], now=now())
        == b"No focal consolidation.\n"
    )


async def test_granting_chosen_documents_to_a_pasted_identifier(page: Page) -> None:
    stranger = SigningIdentity.from_seed(hashlib.sha256(b"a specialist").digest()).did
    cbc = page.story.docs["cbc"]
    listed = await page.get(f"/sharing?doc={cbc.hex()}")
    assert f'<option value="{cbc.hex()}" selected>' in listed
    before = {g.id for g in await page.patient.all_grants()}
    after = text_of(
        await page.post(
            "/sharing/grant",
            grant_form(peer=page.story.gp.did, did=f"  {stranger} ", doc=cbc.hex(), since="365"),
        )
    )
    issued = [g for g in await page.patient.all_grants() if g.id not in before]
    assert [g.record.audience for g in issued] == [stranger]  # the pasted identifier wins over the list
    assert issued[0].record.scope == Scope(ids=(cbc,))
    assert issued[0].record.actions == ("read",)
    assert "can read the document “Complete blood count” until" in after


async def test_grant_form_refusals(page: Page) -> None:
    gp, own = page.story.gp.did, page.story.patient.did
    today = datetime.datetime.now(datetime.UTC).date()
    cases = {
        "Choose a connected clinic, or paste a valid identifier": [
            grant_form(category="lab"),
            grant_form(did="did:key:zNotAKey", category="lab"),
            grant_form(did="<script>", category="lab"),
        ],
        "That identifier is your own node.": [grant_form(did=own, category="lab")],
        "Choose what it can read": [grant_form(peer=gp), grant_form(peer=gp, since="365")],
        "Choose an end date between tomorrow and five years from now.": [
            grant_form(peer=gp, category="lab", until=today.isoformat()),
            grant_form(peer=gp, category="lab", until=(today + datetime.timedelta(days=6 * 366)).isoformat()),
            grant_form(peer=gp, category="lab", until="next spring"),
        ],
        "One of the choices is not one this page offers.": [
            grant_form(peer=gp, category="dental"),
            grant_form(peer=gp, label="PSY<"),
            grant_form(peer=gp, category="lab", hide="XYZ"),
            grant_form(peer=gp, category="lab", purpose="marketing"),
            grant_form(peer=gp, category="lab", since="7"),
            grant_form(peer=gp, doc="00" * 32),
            grant_form(peer=gp, doc="zz"),
        ],
    }
    before = len(await page.patient.all_grants())
    for message, forms in cases.items():
        for form in forms:
            assert message in text_of(await page.post("/sharing/grant", form)), (message, form)
    assert len(await page.patient.all_grants()) == before
    answer = await page.client.post(
        "/sharing/grant", data=grant_form(peer=gp, whole="1"), allow_redirects=False
    )
    assert answer.status == 403
    assert len(await page.patient.all_grants()) == before


async def test_revoking_ends_the_clinic_reads(page: Page) -> None:
    gp, patient = page.story.gp, page.story.patient
    grant_id = page.story.gp_grant.id
    after = text_of(await page.post(f"/sharing/{grant_id.hex()}/revoke", {}))
    assert (
        "Revoked: Cabinet du Dr Martin can no longer read these documents, and its node is told to destroy its copies."
        in after
    )
    assert grant_id not in {g.id for g in await page.patient.live_grants(now=now())}
    assert "Accesses that have ended (1)" in after
    assert "Cabinet du Dr Martin could read your lab results" in after and "you revoked this access." in after
    assert "Nobody can read your record but you." in after
    # The GP's node no longer reads the blood count.
    with pytest.raises(FedrecordError):
        await gp.clinic.fetch(patient.did, page.story.docs["cbc"], now=now())
    # Revoked again, or an id that is no grant: nothing to do, said plainly.
    for target in (grant_id.hex(), "11" * 32, "nothex"):
        assert "This access has already ended. Nothing was changed." in text_of(
            await page.post(f"/sharing/{target}/revoke", {})
        )
    answer = await page.client.post(f"/sharing/{grant_id.hex()}/revoke", data={}, allow_redirects=False)
    assert answer.status == 403


async def test_what_a_device_gave_is_listed_hidden_from_and_revoked(page: Page, tmp_path: Path) -> None:
    """[API-48], 7.5: a grant the patient's phone gave the lab and pushed is on the sharing page, given by the
    phone; the inbox names the lab among who would see a new lab result; the page hides from it and
    revokes it, and the lab's reads end."""
    patient, lab = page.story.patient, page.story.lab
    phone = await ServedNode.create(tmp_path / "phone", role="clinic", name="Camille's phone")
    try:
        await enroll_device(patient, phone)
        await phone.clinic.poll(patient.did, now=now())
        child = await phone.clinic.delegate(
            patient.did, to=lab.did, to_endpoint=lab.url, categories=("lab",), days=30, now=now()
        )
        assert (await phone.clinic.sync(patient.did, now=now(), bodies=False)).records_pushed == 1
        words = text_of(await page.get("/sharing"))
        exp = child.record.exp
        assert (
            f"Laboratoire Pasteur can read your lab results until {long_date(exp, 'en')}. "
            "Given by your device Camille's phone."
        ) in words
        assert "Donné par votre appareil Camille's phone." in text_of(await page.get("/sharing", "fr"))
        doc = await deposit(page, "Ferritin")
        assert f"Laboratoire Pasteur (lab results until {long_date(exp, 'en')})" in text_of(await page.get("/inbox"))
        await page.patient.reject(doc, now=now())
        after = text_of(await page.post(f"/sharing/{child.id.hex()}/hide", [("hide", "HIV")]))
        assert f"Laboratoire Pasteur can read your lab results until {long_date(exp, 'en')}, except HIV." in after
        after = text_of(await page.post(f"/sharing/{child.id.hex()}/revoke", {}))
        assert "Revoked: Laboratoire Pasteur can no longer read these documents" in after
        with pytest.raises(RemoteProtocolError) as caught:
            await lab.clinic.fetch(patient.did, page.story.docs["cbc"], now=now())
        assert caught.value.code is Code.REVOKED
        # Ended now: revoked again, nothing changes.
        count = len(await patient.h.store.records(Revocation))
        assert "This access has already ended. Nothing was changed." in text_of(
            await page.post(f"/sharing/{child.id.hex()}/revoke", {})
        )
        assert len(await patient.h.store.records(Revocation)) == count
    finally:
        await phone.stop()


async def test_stopping_a_clinic_from_sending(page: Page) -> None:
    lab = page.story.lab
    deposit_grant = page.story.deposit_grants[lab.did]
    after = text_of(await page.post(f"/sharing/{deposit_grant.hex()}/revoke", {}))
    assert "Revoked: Laboratoire Pasteur can no longer send you documents." in after
    await lab.clinic.deposit(
        page.story.patient.did, b"late", title="Late result", category="lab", doc_type="report", now=now()
    )
    await lab.clinic.flush_outbox()
    assert await page.patient.inbox() == []


async def test_hiding_more_from_a_grant(page: Page) -> None:
    grant_id = page.story.gp_grant.id
    after = text_of(await page.post(f"/sharing/{grant_id.hex()}/hide", [("hide", "GDIS"), ("hide", "HIV")]))
    assert "except mental health, sexual health, HIV and genetic information." in after
    restrictions = await page.patient.store.records(PrivateRestriction, signer=page.story.patient.did)
    assert any(r.record.grants == (grant_id,) and distinct_labels(r.record.labels or ()) == ["GDIS", "HIV"] for r in restrictions)
    count = len(restrictions)
    for form, message in (
        ([], "Choose at least one label to hide."),
        ([("hide", "NOPE")], "One of the choices is not one this page offers."),
    ):
        assert message in text_of(await page.post(f"/sharing/{grant_id.hex()}/hide", form))
    deposit_grant = page.story.deposit_grants[page.story.lab.did]
    for target in (deposit_grant.hex(), "22" * 32):
        assert "This access has already ended." in text_of(
            await page.post(f"/sharing/{target}/hide", [("hide", "PSY")])
        )
    assert len(await page.patient.store.records(PrivateRestriction, signer=page.story.patient.did)) == count
