"""The scheduler's pages in Chromium against ``rtops run`` (the development resources: room
ctsim1, three therapists, a urologist). A scheduler signs in, adds a routine request with the
form, books it with one click on the queue, finds it marked on the CT simulator's week, moves
it and cancels it there (reasons asked), each checked through the REST API. Every page is
scanned with axe-core (no serious or critical violation).

It measures what the issue asks: the clicks and seconds a routine booking takes (entering the
request, then booking it from the queue), printed as ``routine booking: ...`` and kept in the
test's tmp dir (``booking-effort.json``). Screenshots go to the tmp dir; with
``RTOPS_UPDATE_SCREENSHOTS=1`` to ``docs/screenshots/scheduler-{queue,calendar}.png``."""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime
from datetime import time as dt_time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from shared.calendar import clinic_calendar
from shared.settings import RtopsSettings
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


def later_noon(booked: datetime) -> str:
    """Noon after ``booked``, the earliest free slot, itself after now: its own day's noon
    if that is later, else the next business day's (a run after noon, clinic time, would
    otherwise move it into the past), as the page's datetime-local input takes it."""
    calendar = clinic_calendar(RtopsSettings())
    day = calendar.local_date(booked)
    if datetime.combine(day, dt_time(12), calendar.zone) <= booked:
        day = calendar.next_business_day(day)
    return f"{day.isoformat()}T12:00"


def test_a_scheduler_books_moves_and_cancels(tmp_path: Path, isolation: dict[str, str]) -> None:
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
        base = f"http://127.0.0.1:{suite.env['RTOPS_SCHEDULER_HTTP_PORT']}"
        wait_for(lambda: _ready(base), timeout=60, interval=0.2, message=f"{base}/readyz")
        api = suite.token("scheduler", "sam.scheduler")
        # A request already waiting, blocked by its contrast consent.
        blocked = httpx.post(
            f"{base}/v1/simulation-requests",
            json={
                "patient_id": "SIM-900",
                "patient_name": "Phantom^Abdomen",
                "referring_physician": "Referrer^Rita",
                "treating_physician": "Oncologist^Olga",
                "site": "pancreas",
                "urgency": "urgent",
                "requirements": {"iv_contrast": True, "immobilization": ["vacuum_bag"]},
            },
            headers=api,
            timeout=10,
        )
        assert blocked.status_code == 201, blocked.text
        with sync_playwright() as p:
            browser = launch(p)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.set_default_timeout(10_000)
                sign_in(page, base, "Sam Scheduler", "scheduler", "/ui/queue")
                expect(page.locator("nav.services a[aria-current=true]")).to_have_text("Simulation")
                row = page.locator("tr[data-status=blocked]")
                expect(row).to_contain_text("IV contrast consent not recorded")
                expect(row.locator("button.book")).to_be_disabled()
                scan(page)

                # Entering a routine request: typing the order's fields, one click to add it.
                clicks = 0
                entered = time.perf_counter()
                form = page.locator("form.new-request")
                form.locator("input[name=patient_id]").fill("SIM-901")
                form.locator("input[name=patient_name]").fill("Phantom^Breast")
                form.locator("input[name=referring_physician]").fill("Referrer^Rita")
                form.locator("input[name=treating_physician]").fill("Oncologist^Olga")
                form.locator("input[name=site]").fill("breast")
                form.locator("label", has_text="breast board").locator("input").check()
                clicks += 1
                form.locator("button[type=submit]").click()
                clicks += 1
                row = page.locator("tr[data-status=ready]")
                expect(row).to_contain_text("SIM-901")
                entering_s = time.perf_counter() - entered
                screenshot(page, "scheduler-queue.png")

                # Booking it: one click on the queue, the week calendar shows it.
                started = time.perf_counter()
                row.locator("button.book").click()
                booking_clicks = 1
                booked = page.locator("article.booking.just-booked")
                expect(booked).to_contain_text("Breast Phantom")
                booking_s = time.perf_counter() - started
                expect(page.locator("h1")).to_contain_text("CT simulator 1, week")
                scan(page)
                screenshot(page, "scheduler-calendar.png")
                effort = {
                    "enter_request": {
                        "clicks": clicks,
                        "fields_typed": 5,
                        "seconds": round(entering_s, 2),
                    },
                    "book_from_queue": {"clicks": booking_clicks, "seconds": round(booking_s, 2)},
                }
                (tmp_path / "booking-effort.json").write_text(json.dumps(effort))
                print(f"routine booking: {json.dumps(effort)}")

                booking_id = booked.get_attribute("data-booking")
                request = httpx.get(
                    f"{base}/v1/bookings/{booking_id}", headers=api, timeout=5
                ).json()
                assert request["status"] == "booked" and request["devices"] == ["breast_board"]

                # Move it to noon (a reason is asked), then cancel.
                booked.locator("summary").click()
                move = booked.locator("form").first
                move.locator("input[name=reason]").fill("patient asked for later")
                move.locator("input[name=start]").fill(
                    later_noon(datetime.fromisoformat(request["simulation"]["start"]))
                )
                move.locator("button[type=submit]").click()
                moved = page.locator("article.booking.just-booked")
                expect(moved).to_contain_text("12:00")
                moved_id = moved.get_attribute("data-booking")
                assert moved_id != booking_id
                old = httpx.get(f"{base}/v1/bookings/{booking_id}", headers=api, timeout=5).json()
                assert (old["status"], old["reason"]) == ("cancelled", "patient asked for later")

                moved.locator("summary").click()
                cancel = moved.locator("form").nth(1)
                cancel.locator("input[name=reason]").fill("declined treatment")
                cancel.locator("button[type=submit]").click()
                expect(page.locator(f"article[data-booking='{moved_id}']")).to_have_count(0)
                gone = httpx.get(f"{base}/v1/bookings/{moved_id}", headers=api, timeout=5).json()
                assert (gone["status"], gone["reason"]) == ("cancelled", "declined treatment")
            finally:
                browser.close()
    assert not found, "\n".join(found)
