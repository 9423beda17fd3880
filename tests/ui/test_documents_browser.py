"""The documents service's pages in Chromium against ``rtops run``. The documents database of
the running suite is seeded in-process through ``DocumentsService`` (as billing's browser test
seeds billing's): version 1 of a plan, unapproved, treated on Monday (a draft letter, a flag),
and version 2 derived from it. A physicist finds what changed and files the physics plan QA
report from the version's checklist; a physician opens the letter beside its PDF and approves
it, and it is sent to the outbox folder (checked through the REST API). Every page is scanned
with axe-core (no serious or critical violation).

Screenshots go to the test's tmp dir; with ``RTOPS_UPDATE_SCREENSHOTS=1`` to
``docs/screenshots/documents-{plans,letters}.png``.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from services.documents.app import SERVICE, TABLES, build_service
from services.documents.settings import DocumentsSettings
from shared.runtime import Runtime
from tests.documents.conftest import make_pdf
from tests.documents.events import MONDAY, PID, at, fraction, plan
from tests.support import REPO, wait_for
from tests.test_suite_run import _ready, running_suite
from tests.ui.test_accessibility import describe, launch, serious_violations, sign_in
from tests.ui.test_browser import CHROMIUM

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}"),
]


def seed(tmp_path: Path, isolation: dict[str, str]) -> None:
    settings = DocumentsSettings(
        var_dir=tmp_path / "var",
        database_url=os.environ.get("RTOPS_DATABASE_URL") or None,
        database_schema_prefix=isolation["database_schema_prefix"],
    )
    runtime = Runtime.create(SERVICE, settings, TABLES)
    service = build_service(settings, runtime)
    service.apply_batch(
        [
            plan(1, approved=False),
            fraction(1, MONDAY),
            plan(
                2,
                fractions=25,
                dose_gy=62.5,
                refs=((1, "PREDECESSOR"),),
                received=at("2026-03-03", "17:00"),
            ),
        ]
    )
    runtime.close()


def test_a_physicist_files_a_report_and_a_physician_approves_the_letter(
    tmp_path: Path, isolation: dict[str, str]
) -> None:
    from playwright.sync_api import expect, sync_playwright

    found: list[str] = []

    def scan(page: Page) -> None:
        violations = serious_violations(page)
        if violations:
            found.append(describe(page.url, violations))

    def screenshot(page: Page, name: str) -> None:
        shot = tmp_path / name
        page.screenshot(path=str(shot), full_page=True)
        if os.environ.get("RTOPS_UPDATE_SCREENSHOTS") == "1":
            dest = REPO / "docs" / "screenshots" / name
            shutil.copyfile(shot, dest)

    report = tmp_path / "physics-plan-qa.pdf"
    report.write_bytes(make_pdf("Physics plan QA: passed"))
    with running_suite(tmp_path, isolation) as suite:
        base = f"http://127.0.0.1:{suite.env['RTOPS_DOCUMENTS_HTTP_PORT']}"
        wait_for(lambda: _ready(base), timeout=60, interval=0.2, message=f"{base}/readyz")
        seed(tmp_path, isolation)
        with sync_playwright() as p:
            browser = launch(p)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.set_default_timeout(10_000)
                sign_in(page, base, "Physicist^Pat", "physicist", "/ui/plans")
                services = page.locator("nav.services")
                expect(services.locator("a[aria-current=true]")).to_have_text("Documents")

                page.fill("input[name=patient]", PID)
                page.click("button[type=submit]:has-text('Show')")
                v1 = page.locator("section.version").nth(0)
                v2 = page.locator("section.version").nth(1)
                expect(v1.locator("h3")).to_contain_text("Version 1: PROST")
                expect(v1).to_contain_text("treated while not approved")
                expect(v2.locator("ul.changes")).to_contain_text("fractions: 28 -> 25")
                expect(v2.locator("li.missing", has_text="Physics plan QA report")).to_have_count(1)
                scan(page)

                v2.locator("select[name=doc_type]").select_option("physics_plan_qa")
                v2.locator("input[name=signed_by]").fill("Physicist^Pat")
                v2.locator("input[name=file]").set_input_files(str(report))
                v2.locator("button[type=submit]:has-text('File')").click()
                expect(page.locator("p.notice")).to_contain_text("Document filed")
                v2 = page.locator("section.version").nth(1)
                expect(v2.locator("li.present", has_text="Physics plan QA report")).to_have_count(1)
                scan(page)
                screenshot(page, "documents-plans.png")

                doctor = browser.new_page(viewport={"width": 1280, "height": 1000})
                doctor.set_default_timeout(10_000)
                sign_in(doctor, base, "Oncologist^Olga", "physician", "/ui/letters")
                expect(doctor.locator("table.worklist tbody tr")).to_have_count(1)
                expect(doctor.locator("section.card")).to_contain_text("Dr. Rita Referrer")
                expect(doctor.locator("iframe")).to_have_attribute(
                    "src", re.compile(r"/ui/letters/[0-9a-f-]{36}/pdf")
                )
                scan(doctor)
                screenshot(doctor, "documents-letters.png")
                doctor.click("button[type=submit]:has-text('Approve and send')")
                expect(doctor.locator("section.card .status")).to_have_text("sent")
                scan(doctor)
            finally:
                browser.close()

        letters = httpx.get(
            f"{base}/v1/letters",
            params={"patient_id": PID},
            headers=suite.token("physician", "e2e"),
        ).json()
        assert [(x["status"], x["transport"]) for x in letters] == [("sent", "outbox")]
        assert Path(letters[0]["sent_reference"]).read_bytes().startswith(b"%PDF")
    assert not found, "\n".join(found)
