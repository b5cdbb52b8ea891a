"""Screenshots of the patient's web page, in docs/screenshots/, from real nodes and Debian's Chromium.

Run from the repository root (after ``make test`` has installed the test extras):

    .venv/bin/python docs/make_screenshots.py

It plays the demo's story (a patient, a GP practice and a lab, each a real
node on loopback), adds a few more documents, a deposit waiting, a read by the
GP and a deletion both clinics attested, then opens each page in headless
Chromium (``/usr/bin/chromium``) and saves it whole.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.node_helpers import DAY, now  # noqa: E402
from tests.web.conftest import LiveStory, launched_browser, new_context, sign_in  # noqa: E402

OUT = ROOT / "docs" / "screenshots"


def populate(live: LiveStory) -> dict[str, bytes]:
    async def play() -> dict[str, bytes]:
        lab, gp, patient = live.lab.clinic, live.gp.clinic, live.patient.patient
        did = live.patient.did
        t = now()
        made = {}
        for key, author, title, category, labels, days_ago, content in (
            ("note", gp, "Consultation: persistent cough", "note", (), 40, b"Dry cough for 3 weeks. No fever.\n"),
            ("prescription", gp, "Prescription: amoxicillin", "prescription", (), 40, b"Amoxicillin 1 g x3/day, 7 days\n"),
            ("ferritin", lab, "Ferritin", "lab", (), 12, b"Ferritin 85 ng/mL\n"),
            ("hiv", lab, "HIV screening", "lab", ("HIV", "SEX"), 200, b"HIV 1/2 antibodies: negative\n"),
            ("glucose", lab, "Fasting glucose", "lab", (), 300, b"Glucose 5.1 mmol/L\n"),
        ):
            made[key] = await author.deposit(
                did, content, title=title, category=category, doc_type=category, labels=labels,
                date=t - days_ago * DAY, now=t,
            )
        made["waiting"] = await lab.deposit(
            did, b"TSH 2.1 mIU/L\n", title="Thyroid panel", category="lab", doc_type="lab-result",
            labels=("REPRO",), now=t,
        )
        await lab.flush_outbox(now=t)
        await gp.flush_outbox(now=t)
        for key in ("note", "prescription", "ferritin", "hiv", "glucose"):
            await patient.accept(made[key], now=t)
        await gp.poll(did, now=t)
        for key in ("ferritin", "glucose"):
            await gp.fetch(did, made[key], now=t)
        await gp.fetch(did, live.story.docs["cbc"], now=t)
        await patient.delete(made["glucose"], now=t)
        for clinic in (gp, lab):
            await clinic.poll(did, now=t)
            await clinic.flush_outbox(now=t)
        return made

    return live.run(play())


def shoot(page: Any, name: str) -> None:
    page.wait_for_load_state("load")
    page.screenshot(path=str(OUT / f"{name}.png"), full_page=True)
    print(f"docs/screenshots/{name}.png")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        live = LiveStory(Path(folder))
        try:
            made = populate(live)
            with launched_browser() as browser:
                for language in ("en", "fr"):
                    context = new_context(browser, live.url, language=language)
                    page = context.new_page()
                    suffix = "" if language == "en" else "-fr"
                    page.goto(f"{live.url}/signin")
                    shoot(page, f"signin{suffix}")
                    sign_in(page, live.url)
                    shoot(page, f"record{suffix}")
                    if language == "fr":
                        context.close()
                        continue
                    page.goto(f"{live.url}/record/{live.story.docs['lithium'].hex()}")
                    shoot(page, "document")
                    page.goto(f"{live.url}/inbox")
                    shoot(page, "inbox")
                    page.goto(f"{live.url}/sharing")
                    shoot(page, "sharing")
                    page.goto(f"{live.url}/audit")
                    shoot(page, "audit")
                    page.goto(f"{live.url}/connect")
                    page.fill("#invite-label", "Dr Bernard, cardiologue")
                    with page.expect_navigation():
                        page.locator("form:has(#invite-label) button[type=submit]").click()
                    shoot(page, "connect")
                    page.goto(f"{live.url}/devices")
                    shoot(page, "devices")
                    page.goto(f"{live.url}/record/{made['ferritin'].hex()}/delete")
                    shoot(page, "delete-confirmation")
                    page.goto(f"{live.url}/deleted/{made['glucose'].hex()}")
                    shoot(page, "deleted-attestations")
                    context.close()
        finally:
            live.close()


if __name__ == "__main__":
    main()
