"""Every staff page scanned with axe-core (``tests/ui/vendor/axe.min.js``) in Chromium against
``rtops run``, signed in with a role that may see it: no violation of impact "serious" or
"critical" is allowed (the failure message lists them all, with the elements).

The QA pages as a physician (the worklist with its review forms), the 403 page as a physician
on the SCP's arrivals, the SCP's pages as a therapist with an object received and a refused
association on them, and the sign-in page before signing in.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests import dicom_factories as f
from tests.support import pynetdicom_store
from tests.test_suite_run import Suite, running_suite
from tests.ui.test_browser import CHROMIUM, OLGA, seed

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Playwright

AXE = Path(__file__).with_name("vendor") / "axe.min.js"
BLOCKING = {"serious", "critical"}

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}"),
]


def launch(p: Playwright) -> Browser:
    """Headless Debian Chromium, as the other browser tests start it."""
    return p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])


def sign_in(page: Page, base: str, name: str, role: str, next_path: str) -> None:
    """The development sign-in form, then the page it leads to."""
    from playwright.sync_api import expect

    page.goto(f"{base}/ui/sign-in?next={next_path.replace('/', '%2F')}")
    page.fill("input[name=name]", name)
    page.select_option("select[name=role]", role)
    page.click("button[type=submit]:has-text('Sign in')")
    expect(page).to_have_url(f"{base}{next_path}")


def send_and_refuse(suite: Suite, tmp_path: Path) -> None:
    """Two treatment records from TRUEBEAM1 and a sim CT slice from CTSIM1, then an
    association refused for a mis-cased calling AE title (Truebeam1)."""
    records = [
        f.write(f.treatment_record(plan_uid="1.2.3", fraction_number=n), tmp_path / f"rec{n}.dcm")
        for n in (1, 2)
    ]
    assert pynetdicom_store(suite.dicom_port, records) == [0, 0]
    ct = f.write_series(f.sim_ct_series(n_slices=1), tmp_path / "ct")
    assert pynetdicom_store(suite.dicom_port, ct, calling="CTSIM1") == [0]
    with pytest.raises(ConnectionRefusedError):
        pynetdicom_store(suite.dicom_port, records, calling="Truebeam1")


def serious_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's violations of impact serious or critical on the page as it is now."""
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("axe.run()")
    return [v for v in result["violations"] if v["impact"] in BLOCKING]


def describe(url: str, violations: list[dict[str, Any]]) -> str:
    lines = []
    for v in violations:
        lines.append(f"{url}: [{v['impact']}] {v['id']}: {v['help']} ({v['helpUrl']})")
        for node in v["nodes"]:
            lines.append(f"    {node['target']}: {node['failureSummary']!r}")
    return "\n".join(lines)


def test_no_page_has_serious_accessibility_violations(
    tmp_path: Path, isolation: dict[str, str]
) -> None:
    from playwright.sync_api import expect, sync_playwright

    with running_suite(tmp_path, isolation) as suite:
        seed(suite, tmp_path, isolation)
        send_and_refuse(suite, tmp_path)
        reader = suite.token("physician", "e2e")
        listed = httpx.get(f"{suite.qa_http}/v1/fractions?patient_id=QA-002", headers=reader)
        fid = listed.json()["items"][0]["id"]
        found: list[str] = []

        def scan(page: Page, selector: str) -> None:
            expect(page.locator(selector).first).to_be_visible()
            violations = serious_violations(page)
            if violations:
                found.append(describe(page.url, violations))

        with sync_playwright() as p:
            browser = launch(p)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 720})
                page.set_default_timeout(10_000)
                page.goto(f"{suite.qa_http}/ui/sign-in")
                scan(page, "input[name=name]")

                sign_in(page, suite.qa_http, OLGA, "physician", "/ui/worklist")
                scan(page, "[data-key-row]")
                for path, selector in (
                    (f"/ui/fractions/{fid}", "table.registrations"),
                    ("/ui/compliance", "main h1"),
                    ("/ui/trend", "main h1"),
                    ("/ui/patients/QA-002", "table.timeline"),
                    ("/ui/patients", "input[name=patient_id]"),
                ):
                    page.goto(f"{suite.qa_http}{path}")
                    scan(page, selector)

                answer = page.goto(f"{suite.scp_http}/ui/arrivals")  # the cookie is the host's
                assert answer is not None and answer.status == 403
                scan(page, "main h1:has-text('Not allowed')")

                sign_in(page, suite.scp_http, "Therapist^Tess", "therapist", "/ui/arrivals")
                scan(page, "table.objects")
                page.goto(f"{suite.scp_http}/ui/devices")
                scan(page, "main table")
                page.goto(f"{suite.scp_http}/ui/problems")
                scan(page, "main h1")
            finally:
                browser.close()

        assert not found, "\n".join(found)
