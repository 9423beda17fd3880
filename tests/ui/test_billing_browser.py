"""Billing's pages in Chromium against ``rtops run``. The billing database of the running
suite is seeded in-process through ``BillingService`` (as ``tests/ui/test_browser.py`` seeds
the QA tracker's): a course of eight sessions from three weeks ago, the last one's IGRT review
pending (its 77387-26 on hold). A billing clerk signs in, finds the held charge's reason,
uploads a claim CSV and finds its deleted code among the discrepancies, opens the course's
charge timeline from the charges and closes the course there (checked through the REST API).
Every page is scanned with axe-core (no serious or critical violation).

Screenshots go to the test's tmp dir; with ``RTOPS_UPDATE_SCREENSHOTS=1`` to
``docs/screenshots/billing-{charges,discrepancies,course}.png``.
"""

from __future__ import annotations

import os
import re
import shutil
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import httpx
import pytest

from services.billing.app import SERVICE, TABLES, build_service
from services.billing.settings import BillingSettings
from shared.runtime import Runtime
from tests.billing.events import (
    assessed_event,
    billing_plan_event,
    note_event,
    treatment,
    weekdays,
)
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

NY = ZoneInfo("America/New_York")
PID = "BILL-001"
PLAN = "1.2.826.0.1.3680043.10.7.1"
COURSE = f"course:{PLAN}"


def seed(tmp_path: Path, isolation: dict[str, str]) -> list[date]:
    """Eight weekday sessions from the Monday three weeks back; reviews on time but the last
    one's (pending); the first week's management note. The session days."""
    settings = BillingSettings(
        var_dir=tmp_path / "var",
        database_url=os.environ.get("RTOPS_DATABASE_URL") or None,
        database_schema_prefix=isolation["database_schema_prefix"],
    )
    runtime = Runtime.create(SERVICE, settings, TABLES)
    service = build_service(settings, runtime)
    today = datetime.now(NY).date()
    monday = today - timedelta(days=today.weekday() + 21)
    days = weekdays(8, monday)
    service.apply_batch(
        [
            billing_plan_event(plan_uid=PLAN, approved=monday - timedelta(days=7)),
            *treatment(8, start=monday, plan_uid=PLAN),
            *[assessed_event(i + 1, d, plan_uid=PLAN) for i, d in enumerate(days[:7])],
            assessed_event(8, days[7], status="pending", plan_uid=PLAN),
            note_event(monday, course_id=COURSE),
        ]
    )
    runtime.close()
    return days


def claim_csv(days: list[date]) -> str:
    """The first week as a claim: deliveries and guidance claimed, 77427 with two units, and
    the 2025 code 77385 for the first session (deleted from 2026)."""
    lines = ["claim_id,patient_id,service_date,cpt,modifiers,units"]
    for day in days[:5]:
        lines.append(f"CLM-1,{PID},{day},77407,,1")
        lines.append(f"CLM-1,{PID},{day},77387,26,1")
    lines.append(f"CLM-1,{PID},{days[4]},77427,,2")
    lines.append(f"CLM-1,{PID},{days[0]},77385,,1")
    return "\r\n".join(lines) + "\r\n"


def test_a_billing_clerk_works_holds_claims_and_a_course(
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
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, dest)

    with running_suite(tmp_path, isolation) as suite:
        base = f"http://127.0.0.1:{suite.env['RTOPS_BILLING_HTTP_PORT']}"
        wait_for(lambda: _ready(base), timeout=60, interval=0.2, message=f"{base}/readyz")
        days = seed(tmp_path, isolation)
        claims = tmp_path / "claims-week1.csv"
        claims.write_text(claim_csv(days))
        with sync_playwright() as p:
            browser = launch(p)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.set_default_timeout(10_000)
                sign_in(page, base, "Bea Billing", "billing", "/ui/charges")

                # The suite's switcher lists billing (it has pages) and marks it.
                services = page.locator("nav.services")
                expect(services.locator("a[aria-current=true]")).to_have_text("Billing")
                expect(services.locator("a", has_text="IGRT review")).to_have_count(1)

                # Charges: the held one with its reason, counted by reason above.
                expect(page.locator("section.holds")).to_contain_text("IGRT review pending")
                held = page.locator("tr[data-status=hold]")
                expect(held).to_have_count(1)
                expect(held.locator(".code")).to_have_text("77387-26")
                expect(held).to_contain_text("IGRT review pending")
                held.locator("details.evidence summary").click()
                expect(held.locator("ul.evidence")).to_contain_text(
                    "IGRT review of fraction 8: pending"
                )
                scan(page)
                screenshot(page, "billing-charges.png")
                # The status filter: the clerk's hold list.
                page.select_option("select[name=status]", "hold")
                page.click("button[type=submit]:has-text('Show')")
                expect(page).to_have_url(re.compile(r"status=hold"))
                expect(page.locator("table.charges tbody tr")).to_have_count(1)

                # Discrepancies: upload the claim file, find the deleted code.
                page.click("nav[aria-label=Pages] a:has-text('Discrepancies')")
                expect(page).to_have_url(f"{base}/ui/discrepancies")
                page.set_input_files("input[name=file]", str(claims))
                page.click("button[type=submit]:has-text('Upload')")
                expect(page).to_have_url(re.compile(r"/ui/discrepancies\?imported=\d+"))
                expect(page.locator("p.notice")).to_contain_text("imported as csv: 12 claim lines")
                deleted = page.locator("tr[data-kind=deleted_code]")
                expect(deleted).to_have_count(1)
                expect(deleted).to_contain_text("77385")
                excess = page.locator("tr[data-kind=excess_units]")
                expect(excess).to_contain_text("77427")
                # The claim's week as the period: what it left out of that week is missing.
                page.fill("input[name=from]", days[0].isoformat())
                page.fill("input[name=to]", days[4].isoformat())
                page.click("form.filters button[type=submit]")
                expect(page.locator("tr[data-kind=deleted_code]")).to_have_count(1)
                scan(page)
                screenshot(page, "billing-discrepancies.png")
                # Uploading it again says it is a duplicate.
                page.set_input_files("input[name=file]", str(claims))
                page.click("button[type=submit]:has-text('Upload')")
                expect(page.locator(".upload-result")).to_contain_text("is a duplicate")

                # The course's charge timeline from the charges; close the course there.
                page.goto(f"{base}/ui/charges?status=hold")
                page.click("table.charges tbody tr a:has-text('PROST')")
                expect(page).to_have_url(re.compile(r"/ui/courses/course%3A"))
                expect(page.locator("tr.session")).to_have_count(8)
                page.fill("input[name=reason]", "treatment stopped early")
                page.click("button[type=submit]:has-text('Close course')")
                expect(page.locator("p.notice")).to_contain_text("Course closed on")
                expect(page.locator("tr[data-closure=staff]")).to_contain_text("closed by staff")
                expect(page.locator("h1 + .status")).to_have_text("closed")
                scan(page)
                screenshot(page, "billing-course.png")
            finally:
                browser.close()

        api = httpx.get(f"{base}/v1/courses/{COURSE}", headers=suite.token("billing", "e2e")).json()
        assert api["status"] == "closed"
        assert [c["reason"] for c in api["closures"]] == ["staff"]
    assert not found, "\n".join(found)
