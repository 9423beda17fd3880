"""Production sign-in in a real browser: ``rtops run`` configured for an OIDC provider (the
test provider of ``tests/oidc_provider.py``, on real HTTP, with its own sign-in form). A
physician signs in at the provider, lands on her own worklist (her DICOM name from the ID
token's claim), approves a fraction with the keyboard, is refused the SCP's device pages
(one sign-in serves both services: same host, same session key) and signs out of both.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.oidc_provider import AUDIENCE, CLIENT_ID, Provider, RunningProvider
from tests.test_suite_run import running_suite
from tests.ui.test_accessibility import launch
from tests.ui.test_browser import CHROMIUM, OLGA, seed

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}"),
]


@pytest.fixture
def provider() -> Iterator[Provider]:
    running = RunningProvider(
        Provider(users={"olga": {"roles": ["physician"], "dicom_names": [OLGA]}})
    )
    yield running.provider
    running.stop()


def test_a_physician_signs_in_at_the_provider_and_reviews(
    tmp_path: Path, isolation: dict[str, str], provider: Provider
) -> None:
    from playwright.sync_api import expect, sync_playwright

    env = {
        "RTOPS_OIDC_ISSUER": provider.url,
        "RTOPS_OIDC_JWKS_URL": f"{provider.url}/jwks",
        "RTOPS_OIDC_CLIENT_ID": CLIENT_ID,
        "RTOPS_UI_SESSION_KEY": "browser-test-session-key-" + "s" * 24,
    }
    with running_suite(tmp_path, isolation, **env) as suite:
        seed(suite, tmp_path, isolation)
        api = {
            "Authorization": "Bearer "
            + provider.sign({"sub": "it", "aud": AUDIENCE, "roles": ["admin"]})
        }
        listed = httpx.get(f"{suite.qa_http}/v1/fractions?patient_id=QA-001", headers=api)
        target = next(f for f in listed.json()["items"] if f["fraction_number"] == 1)

        with sync_playwright() as p:
            browser = launch(p)
            try:
                page = browser.new_page(viewport={"width": 1440, "height": 700})
                page.set_default_timeout(10_000)
                page.goto(f"{suite.qa_http}/ui/worklist")
                expect(page).to_have_title("Hospital sign-in")  # at the provider
                page.select_option("select[name=user]", "olga")
                page.click("button:has-text('Sign in')")
                expect(page).to_have_url(f"{suite.qa_http}/ui/worklist")
                expect(page.locator(".who")).to_contain_text("olga")
                expect(page.locator("main")).to_contain_text("Olga Oncologist")  # her names

                row = page.locator(f"#fraction-{target['id']}")
                expect(row).to_have_attribute("aria-selected", "true")
                page.keyboard.press("a")
                expect(row.locator(".status.approved")).to_be_visible()

                refused = page.goto(f"{suite.scp_http}/ui/arrivals")
                assert refused is not None and refused.status == 403

                page.goto(f"{suite.qa_http}/ui/worklist")
                page.click("header button:has-text('Sign out')")
                expect(page).to_have_url(f"{suite.qa_http}/ui/signed-out")
                gone = page.goto(f"{suite.qa_http}/ui/worklist")
                assert gone is not None
                expect(page).to_have_title("Hospital sign-in")  # asked to sign in again
            finally:
                browser.close()

        detail = httpx.get(f"{suite.qa_http}/v1/fractions/{target['id']}", headers=api).json()
        assert [(r["decision"], r["physician"]) for r in detail["reviews"]] == [("approved", OLGA)]
