"""One end-to-end run in a real browser: headless Chromium (Debian's, /usr/bin/chromium) via
Playwright against ``rtops run``. A physician signs in, approves the most overdue fraction from
the worklist with the keyboard, and the REST API shows it reviewed; on the worklist's second
page the keys work the same.

The QA tracker's database is seeded in-process through its service (the running suite reads
the same database). The screenshot goes to the test's tmp dir; with
``RTOPS_UPDATE_SCREENSHOTS=1`` to ``docs/screenshots/qa-worklist.png``.
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

from services.qa_tracker.app import SERVICE, TABLES
from services.qa_tracker.policy import load_policy
from services.qa_tracker.service import QaService
from services.qa_tracker.settings import QaSettings
from shared.runtime import Runtime
from tests.events import imaging_event, plan_event, record_event, registration_event
from tests.support import REPO
from tests.test_suite_run import Suite, running_suite

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = "/usr/bin/chromium"
OLGA = "Oncologist^Olga"
NY = ZoneInfo("America/New_York")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}"),
]


def weekday_before(day: date, days: int) -> date:
    out = day - timedelta(days=days)
    while out.weekday() >= 5:
        out -= timedelta(days=1)
    return out


def seed(suite: Suite, tmp_path: Path, isolation: dict[str, str]) -> None:
    """Olga's two patients: QA-001 treated ten days ago and the next weekday (both overdue),
    QA-002 five days ago with a 6.5 mm shift (an override to acknowledge)."""
    settings = QaSettings(
        var_dir=tmp_path / "var",
        database_url=os.environ.get("RTOPS_DATABASE_URL") or None,
        database_schema_prefix=isolation["database_schema_prefix"],
    )
    runtime = Runtime.create(SERVICE, settings, TABLES)
    service = QaService(factory=runtime.factory, policy=load_policy(None, zone="America/New_York"))
    today = datetime.now(NY).date()
    first = weekday_before(today, 10)
    second = first + timedelta(days=1 if first.weekday() < 4 else 3)
    courses = [
        (
            "QA-001",
            "1.2.826.0.1.3680043.10.1.1",
            [(1, first, (1.0, -2.0, 0.5)), (2, second, (2.5, 1.0, -0.5))],
        ),
        ("QA-002", "1.2.826.0.1.3680043.10.1.2", [(1, weekday_before(today, 5), (6.5, 0.5, 1.0))]),
    ]
    for pid, plan_uid, fractions in courses:
        service.apply(plan_event(plan_uid=plan_uid, pid=pid, physician=OLGA))
        for number, day, shift in fractions:
            d = day.isoformat()
            series = f"9.9.{pid}.{d}"
            service.apply(imaging_event(series, d, "07:55", pid=pid))
            service.apply(
                registration_event(f"8.8.{pid}.{d}", series, d, "07:58", pid=pid, shift_mm=shift)
            )
            service.apply(record_event(number, d, "08:00", pid=pid, plan_uid=plan_uid))
    runtime.close()


def shoot(page: Page, tmp_path: Path, name: str) -> None:
    """A full-page screenshot into the test's tmp dir; with RTOPS_UPDATE_SCREENSHOTS=1 into
    docs/screenshots/ as well."""
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("RTOPS_UPDATE_SCREENSHOTS") == "1":
        dest = REPO / "docs" / "screenshots" / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, dest)


def test_a_physician_approves_an_overdue_fraction_with_the_keyboard(
    tmp_path: Path, isolation: dict[str, str]
) -> None:
    from playwright.sync_api import expect, sync_playwright

    with running_suite(tmp_path, isolation) as suite:
        seed(suite, tmp_path, isolation)
        reader = suite.token("physician", "e2e")
        listed = httpx.get(f"{suite.qa_http}/v1/fractions?patient_id=QA-001", headers=reader)
        by_number = {f["fraction_number"]: f for f in listed.json()["items"]}
        target = by_number[1]
        assert target["review_status"] == "overdue"

        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                ],
            )
            try:
                page = browser.new_page(viewport={"width": 1440, "height": 560})
                page.set_default_timeout(10_000)
                page.goto(f"{suite.qa_http}/ui/worklist")
                expect(page).to_have_url(f"{suite.qa_http}/ui/sign-in?next=%2Fui%2Fworklist")
                page.fill("input[name=name]", OLGA)
                page.select_option("select[name=role]", "physician")
                page.click("button[type=submit]:has-text('Sign in')")
                expect(page).to_have_url(f"{suite.qa_http}/ui/worklist")

                row = page.locator(f"#fraction-{target['id']}")
                expect(row).to_have_attribute("aria-selected", "true")  # most overdue first
                page.keyboard.press("j")
                expect(row).to_have_attribute("aria-selected", "false")
                page.keyboard.press("k")
                expect(row).to_have_attribute("aria-selected", "true")
                page.keyboard.press("a")
                expect(row.locator(".status.approved")).to_be_visible()
                # The next open row is selected for the next key.
                expect(page.locator("[data-key-row][aria-selected=true]")).not_to_have_id(
                    f"fraction-{target['id']}"
                )

                shoot(page, tmp_path, "qa-worklist.png")
                # A tablet held upright (iPad Air, 820 x 1180): the page fits its width.
                page.set_viewport_size({"width": 820, "height": 1180})
                shoot(page, tmp_path, "qa-worklist-tablet.png")
                width = page.evaluate("document.documentElement.scrollWidth")
                assert width <= 820, f"the worklist is {width} px wide on a tablet"
                page.set_viewport_size({"width": 1440, "height": 560})

                # One row a page: "Next page" opens QA-002's (the override to acknowledge),
                # selected for the keys like the first page's.
                page.goto(f"{suite.qa_http}/ui/worklist?limit=1")
                expect(page.locator("[data-key-row]")).to_have_count(1)
                page.click("a[rel=next]")
                expect(page).to_have_url(re.compile(r"[?&]cursor="))
                second = page.locator("[data-key-row]")
                expect(second).to_have_count(1)
                expect(second).to_have_attribute("aria-selected", "true")
                expect(second).to_contain_text("QA-002")
                page.fill("input[name=override_reason]", "known setup")
                page.keyboard.press("Escape")
                page.keyboard.press("a")
                expect(second.locator(".status.approved")).to_be_visible()

                # The patient's timeline from the row's patient link: the review just made,
                # read back through the QA API; the SCP's device index is not a physician's.
                page.goto(f"{suite.qa_http}/ui/worklist?scope=all")
                page.click("a[href='/ui/patients/QA-001']")
                expect(page).to_have_url(f"{suite.qa_http}/ui/patients/QA-001")
                expect(page.locator("table.timeline").first).to_contain_text("approved")
                forbidden = page.locator("li.source.forbidden", has_text="DICOM arrivals")
                expect(forbidden).to_be_visible()
                shoot(page, tmp_path, "qa-timeline.png")
            finally:
                browser.close()

        detail = httpx.get(f"{suite.qa_http}/v1/fractions/{target['id']}", headers=reader).json()
        assert detail["review_status"] == "reviewed_late"
        assert [(r["decision"], r["physician"]) for r in detail["reviews"]] == [("approved", OLGA)]
