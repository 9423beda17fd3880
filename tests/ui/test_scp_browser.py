"""The SCP's pages in Chromium against ``rtops run``, after real DICOM traffic: two treatment
records from TRUEBEAM1 and a CT slice from CTSIM1 through the SCP (pynetdicom), and an
association refused for a mis-cased calling AE title (Truebeam1). A therapist signs in and
sees TRUEBEAM1's last-sent time on the devices page, narrows the arrivals to TRUEBEAM1 with the
filter form, and finds the refusal with its case hint on the problems page.

Screenshots go to the test's tmp dir; with ``RTOPS_UPDATE_SCREENSHOTS=1`` to
``docs/screenshots/scp-{arrivals,devices,problems}.png``.
"""

from __future__ import annotations

import os
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support import REPO
from tests.test_suite_run import running_suite
from tests.ui.test_accessibility import launch, send_and_refuse, sign_in
from tests.ui.test_browser import CHROMIUM

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}"),
]


def test_a_therapist_follows_a_linacs_objects_and_its_refusal(
    tmp_path: Path, isolation: dict[str, str]
) -> None:
    from playwright.sync_api import Page, expect, sync_playwright

    def screenshot(page: Page, name: str, *, full_page: bool = True) -> None:
        shot = tmp_path / name
        page.screenshot(path=str(shot), full_page=full_page)
        if os.environ.get("RTOPS_UPDATE_SCREENSHOTS") == "1":
            dest = REPO / "docs" / "screenshots" / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, dest)

    with running_suite(tmp_path, isolation) as suite:
        before = datetime.now(UTC)
        send_and_refuse(suite, tmp_path)
        base = suite.scp_http
        with sync_playwright() as p:
            browser = launch(p)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 720})
                page.set_default_timeout(10_000)
                sign_in(page, base, "Therapist^Tess", "therapist", "/ui/devices")

                # Devices: TRUEBEAM1 sent a moment ago (two today); TPS1 never did.
                linac = page.locator("tr[data-device=TRUEBEAM1]")
                last_sent = linac.locator("time").get_attribute("datetime")
                assert last_sent is not None
                sent_at = datetime.fromisoformat(last_sent)
                assert before - timedelta(seconds=1) <= sent_at <= datetime.now(UTC)
                expect(linac.locator("td").nth(5)).to_have_text("2")
                expect(page.locator("tr[data-device=TPS1]")).to_contain_text("never sent")
                screenshot(page, "scp-devices.png")

                # Arrivals: all three objects, then the device filter narrows to the linac's.
                page.goto(f"{base}/ui/arrivals")
                objects = page.locator("table.objects tbody tr")
                expect(objects).to_have_count(3)
                page.select_option("select[name=device]", "TRUEBEAM1")
                page.click("button[type=submit]:has-text('Show')")
                expect(page).to_have_url(
                    f"{base}/ui/arrivals?device=TRUEBEAM1&kind=&patient=&from=&to="
                )
                expect(objects).to_have_count(2)
                for cell in objects.locator("td:nth-child(2)").all():
                    expect(cell).to_have_text("TRUEBEAM1")
                expect(page.locator("select[name=device]")).to_have_value("TRUEBEAM1")
                screenshot(page, "scp-arrivals.png")

                # Problems: the mis-cased AE title's refusal, with the hint.
                page.goto(f"{base}/ui/problems")
                # A regular expression: has_text's plain strings ignore case.
                rows = page.locator("table.problems tbody tr")
                refusal = rows.filter(has_text=re.compile(r"\bTruebeam1\b"))
                expect(refusal).to_have_count(1)
                expect(refusal).to_contain_text("association refused")
                expect(refusal).to_contain_text("did you mean TRUEBEAM1?")
                # The window only: pynetdicom's 120 proposed contexts make long reasons below.
                screenshot(page, "scp-problems.png", full_page=False)
            finally:
                browser.close()
