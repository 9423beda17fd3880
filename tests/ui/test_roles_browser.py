"""Every role signs in through the browser against ``rtops run`` and opens every staff page of
both services: each page answers 200 to the roles that may see it and the 403 page to the
others (what the API's role groups say, ``shared.auth``)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from shared.auth import CLINICAL_STAFF, DEVICE_OPERATIONS
from shared.settings import ROLES
from tests.test_suite_run import running_suite
from tests.ui.test_accessibility import launch
from tests.ui.test_browser import CHROMIUM, seed

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}"),
]


def test_each_role_sees_its_pages_and_gets_403_elsewhere(
    tmp_path: Path, isolation: dict[str, str]
) -> None:
    from playwright.sync_api import sync_playwright

    with running_suite(tmp_path, isolation) as suite:
        seed(suite, tmp_path, isolation)
        reader = suite.token("admin", "e2e")
        listed = httpx.get(f"{suite.qa_http}/v1/fractions?patient_id=QA-001", headers=reader)
        fid = listed.json()["items"][0]["id"]
        pages = {
            suite.qa_http: {
                "/ui/worklist": CLINICAL_STAFF,
                f"/ui/fractions/{fid}": CLINICAL_STAFF,
                "/ui/compliance": CLINICAL_STAFF,
                "/ui/trend": CLINICAL_STAFF,
                "/ui/patients/QA-001": ROLES,
            },
            suite.scp_http: {
                "/ui/arrivals": DEVICE_OPERATIONS,
                "/ui/devices": DEVICE_OPERATIONS,
                "/ui/problems": DEVICE_OPERATIONS,
            },
        }
        seen: dict[tuple[str, str], int] = {}
        with sync_playwright() as p:
            browser = launch(p)
            try:
                for role in ROLES:
                    context = browser.new_context()
                    page = context.new_page()
                    page.set_default_timeout(10_000)
                    page.goto(f"{suite.qa_http}/ui/sign-in")
                    page.fill("input[name=name]", f"Tester^{role.title()}")
                    page.select_option("select[name=role]", role)
                    page.click("button[type=submit]:has-text('Sign in')")
                    page.wait_for_load_state()
                    for base, paths in pages.items():  # the cookie is the host's, any port
                        for path in paths:
                            answer = page.goto(base + path)
                            assert answer is not None
                            seen[(role, path)] = answer.status
                    context.close()
            finally:
                browser.close()
    expected = {
        (role, path): 200 if role in allowed else 403
        for role in ROLES
        for paths in pages.values()
        for path, allowed in paths.items()
    }
    assert seen == expected
