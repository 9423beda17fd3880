"""The QA tracker's report pages over httpx: a fraction's detail, the weekly compliance report
(and its CSV) and the 12-week trend.

The clock is Monday 2026-11-23 12:00 New York, so the last full week is 2026-W47 and the trend
covers W36 to W47. Besides ``test_qa_pages``'s patients (Olga's QA-001 on TrueBeam1: fractions
on Thursday and Friday of W47, the Friday one 7 mm off; Paul's QA-002 today), Pat's QA-003 was
treated on TrueBeam2 around the end of daylight saving time (Sunday 2026-11-01 02:00): Sunday
23:30 EST (04:30 UTC, Monday) is still W44, Monday 00:30 and 08:00 are W45.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

from services.qa_tracker import domain
from services.qa_tracker.app import SERVICE, TABLES, api_app
from services.qa_tracker.policy import load_policy
from services.qa_tracker.report import CSV_COLUMNS
from services.qa_tracker.service import NewReview, QaService
from services.qa_tracker.settings import QaSettings
from shared.auth import Principal, issue_dev_token
from shared.runtime import Runtime
from tests.events import imaging_event, plan_event, record_event, registration_event
from tests.qa_tracker.test_api import admit, ids, treat
from tests.support import REPO
from tests.test_suite_run import running_suite
from tests.ui.test_browser import CHROMIUM, NY, seed
from tests.ui.test_qa_pages import OLGA, audit_rows, sign_in, two_physicians

PAT = "Physician^Pat"
Db = tuple[QaSettings, sessionmaker[Session]]


@pytest.fixture
def app(qa_db: Db, service: QaService) -> FastAPI:
    settings, factory = qa_db
    two_physicians(service)
    admit(service, "QA-003", PAT)
    treat(service, 1, "2026-11-01", "23:30", pid="QA-003", machine="TrueBeam2")
    treat(service, 2, "2026-11-02", "00:30", pid="QA-003", machine="TrueBeam2")
    treat(service, 3, "2026-11-02", "08:00", pid="QA-003", machine="TrueBeam2")
    return api_app(settings, factory, service)


def bearer(qa_db: Db, role: str = "physicist") -> dict[str, str]:
    token = issue_dev_token(qa_db[0], user="Physicist^Phil", roles=[role])
    return {"Authorization": f"Bearer {token}"}


def cells(html: str, table_id: str) -> list[list[list[str]]]:
    """A table's body cells as words (tags dropped), row by row."""
    table = re.search(rf'<table[^>]*id="{table_id}".*?<tbody>(.*?)</tbody>', html, re.S)
    assert table, html
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table.group(1), re.S)
    return [
        [re.sub(r"<[^>]+>", " ", c).split() for c in re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)]
        for r in rows
    ]


@pytest.mark.parametrize(
    "path", ["/ui/fractions/1", "/ui/compliance", "/ui/compliance.csv", "/ui/trend"]
)
async def test_billing_gets_a_403_page(client: httpx.AsyncClient, path: str) -> None:
    await sign_in(client, "Biller^Bob", "billing")
    answer = await client.get(path)
    assert answer.status_code == 403
    assert answer.headers["content-type"].startswith("text/html")
    assert "billing" in answer.text


async def test_the_pages_are_in_the_navigation_and_the_worklist_links_the_detail(
    client: httpx.AsyncClient, qa_db: Db
) -> None:
    await sign_in(client, OLGA)
    page = await client.get("/ui/worklist")
    for href in ('href="/ui/worklist"', 'href="/ui/compliance"', 'href="/ui/trend"'):
        assert href in page.text
    fid = ids(qa_db[1])[("QA-001", 2)]
    assert f'href="/ui/fractions/{fid}"' in page.text


async def test_a_fraction_shows_imaging_shifts_against_tolerance_and_reviews(
    client: httpx.AsyncClient, qa_db: Db
) -> None:
    fid = ids(qa_db[1])[("QA-001", 2)]
    csrf = await sign_in(client, OLGA)
    posted = await client.post(
        f"/ui/worklist/{fid}/review",
        data={
            "csrf_token": csrf,
            "decision": "approved",
            "override_reason": "Bony anatomy matched, soft tissue fine",
            "comment": "ok",
        },
    )
    assert posted.status_code == 200, posted.text
    page = await client.get(f"/ui/fractions/{fid}")
    assert page.status_code == 200, page.text
    html = page.text
    assert "Olga Oncologist" in html and "QA-001" in html and "TrueBeam1" in html
    assert "9.9.QA-001.2026-11-20.08:00" in html  # the CBCT series
    assert '<span class="over" title="x">x +7.0</span>' in html
    assert '<span class="" title="y">y +0.0</span>' in html
    assert "tolerance ±5 mm" in html
    assert "approved" in html and "Bony anatomy matched, soft tissue fine" in html
    assert "required, documented" in html
    assert ("read", OLGA, f"/ui/fractions/{fid}", "QA-001") in audit_rows(qa_db[1])


async def test_an_unknown_fraction_is_a_404_page(client: httpx.AsyncClient) -> None:
    await sign_in(client, OLGA)
    answer = await client.get("/ui/fractions/9999")
    assert answer.status_code == 404
    assert answer.headers["content-type"].startswith("text/html")
    assert "There is no fraction 9999" in answer.text


async def test_compliance_shows_the_apis_numbers_for_the_last_full_week(
    client: httpx.AsyncClient, qa_db: Db
) -> None:
    api = (await client.get("/v1/compliance/weekly?week=2026-W47", headers=bearer(qa_db))).json()
    await sign_in(client, "Physicist^Phil", "physicist")
    page = await client.get("/ui/compliance")  # the default: the last full week, W47
    assert page.status_code == 200, page.text
    html = page.text
    assert "week 2026-W47" in html
    assert 'href="?week=2026-W46"' in html and 'href="?week=2026-W48"' in html
    assert 'href="/ui/compliance.csv?week=2026-W47"' in html
    assert "<svg" in html  # the chart by machine
    columns = CSV_COLUMNS  # the report's columns, backdated reviews and their % included

    def shown(value: object) -> list[str]:
        return [] if value is None else [str(value)]

    assert cells(html, "total") == [[["All", "machines"], *(shown(api[c]) for c in columns)]]
    assert cells(html, "by-machine") == [
        [[name], *(shown(t[c]) for c in columns)] for name, t in api["by_machine"].items()
    ]
    assert api["imaged_fractions"] == 2 and api["overdue"] == 2
    assert [r[0] for r in cells(html, "by-physician")] == [["Olga", "Oncologist"]]
    assert ("read", "Physicist^Phil", "/ui/compliance", None) in audit_rows(qa_db[1])


async def test_compliance_of_another_week_and_its_csv_match_the_api(
    client: httpx.AsyncClient, qa_db: Db
) -> None:
    api = await client.get(
        "/v1/compliance/weekly?week=2026-W45",
        headers={**bearer(qa_db), "Accept": "text/csv"},
    )
    await sign_in(client, OLGA)
    page = await client.get("/ui/compliance?week=2026-W45")
    assert page.status_code == 200
    assert cells(page.text, "by-machine")[0][:2] == [["TrueBeam2"], ["2"]]
    download = await client.get("/ui/compliance.csv?week=2026-W45")
    assert download.status_code == 200
    assert download.headers["content-type"].startswith("text/csv")
    assert download.headers["content-disposition"] == 'attachment; filename="2026-W45.csv"'
    assert download.text == api.text
    rows = list(csv.reader(io.StringIO(download.text)))
    assert rows[1][:4] == ["2026-W45", "total", "", "2"]
    audit = audit_rows(qa_db[1])
    assert ("read", OLGA, "/ui/compliance.csv?week=2026-W45", None) in audit


async def test_the_trend_groups_by_clinic_week_across_the_dst_change(
    client: httpx.AsyncClient, qa_db: Db
) -> None:
    await sign_in(client, OLGA)
    page = await client.get("/ui/trend")
    assert page.status_code == 200, page.text
    html = page.text
    weeks = re.findall(r'<th><a href="/ui/compliance\?week=(\d{4}-W\d{2})">', html)
    assert weeks == [f"2026-W{n}" for n in range(36, 48)]
    # Two SVG line charts; TrueBeam2's consecutive weeks W44 and W45 are joined by a line.
    assert html.count("<svg") == 2 and "<polyline" in html

    def by_week(table_id: str) -> dict[str, list[list[str]]]:
        return {" ".join(r[0]): r[1:] for r in cells(html, table_id)}

    total = by_week("trend-total")["All"]
    counts = dict(zip(weeks, total, strict=True))
    # Sunday 23:30 EST is 04:30 UTC on Monday: still W44 in the clinic's zone.
    assert counts["2026-W44"] == ["0.0%", "of", "1"]
    assert counts["2026-W45"] == ["0.0%", "of", "2"]
    assert counts["2026-W47"] == ["0.0%", "of", "2"]
    assert counts["2026-W46"] == ["\u2013"]  # an en dash: no fractions
    machines = by_week("trend-by-machine")
    assert set(machines) == {"TrueBeam1", "TrueBeam2"}
    assert dict(zip(weeks, machines["TrueBeam2"], strict=True))["2026-W44"][-1] == "1"
    physicians = by_week("trend-by-physician")
    assert set(physicians) == {"Olga Oncologist", "Pat Physician"}
    assert ("read", OLGA, "/ui/trend", None) in audit_rows(qa_db[1])


def seed_weeks(tmp_path: Path, isolation: dict[str, str]) -> None:
    """Pat's QA-003 on TrueBeam2: a fraction each weekday of the last 11 full weeks, reviewed
    on time (by noon) on a share that varies from week to week, so the trend has lines."""
    settings = QaSettings(
        var_dir=tmp_path / "var",
        database_url=os.environ.get("RTOPS_DATABASE_URL") or None,
        database_schema_prefix=isolation["database_schema_prefix"],
    )
    runtime = Runtime.create(SERVICE, settings, TABLES)
    # Each review is recorded when it is made (the service's clock at its reviewed_at), as a
    # physician documenting it at once does: none is backdated.
    moment = [datetime.now(NY)]
    service = QaService(
        factory=runtime.factory,
        policy=load_policy(None, zone="America/New_York"),
        clock=lambda: moment[0],
    )
    plan = "1.2.826.0.1.3680043.10.1.3"
    service.apply(plan_event(plan_uid=plan, pid="QA-003", physician=PAT))
    today = datetime.now(NY).date()
    monday = today - timedelta(days=today.weekday())
    number = 0
    for week in range(11, 0, -1):
        for weekday in range(5):
            day = (monday - timedelta(weeks=week, days=-weekday)).isoformat()
            number += 1
            series = f"9.9.QA-003.{day}"
            service.apply(imaging_event(series, day, "09:55", pid="QA-003", machine="TrueBeam2"))
            service.apply(
                registration_event(f"8.8.QA-003.{day}", series, day, "09:58", pid="QA-003")
            )
            service.apply(
                record_event(number, day, "10:00", pid="QA-003", plan_uid=plan, machine="TrueBeam2")
            )
            if (weekday + week) % 5 < 3 + week % 3:
                fid = ids(runtime.factory)[("QA-003", number)]
                moment[0] = datetime.fromisoformat(f"{day}T12:00").replace(tzinfo=NY)
                service.add_review(
                    fid,
                    NewReview(
                        decision=domain.Decision.APPROVED,
                        comment=None,
                        override_reason=None,
                        reviewed_at=moment[0],
                    ),
                    principal=Principal(PAT, frozenset({"physician"})),
                    resource="/seed",
                )
    runtime.close()


@pytest.mark.e2e
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}")
def test_the_report_pages_in_a_browser(tmp_path: Path, isolation: dict[str, str]) -> None:
    """Each report page opens in Chromium against ``rtops run`` (the browser test's seed);
    ``RTOPS_UPDATE_SCREENSHOTS=1`` saves them to ``docs/screenshots/``."""
    from playwright.sync_api import expect, sync_playwright

    with running_suite(tmp_path, isolation) as suite:
        seed(suite, tmp_path, isolation)
        seed_weeks(tmp_path, isolation)
        reader = suite.token("physician", "e2e")
        listed = httpx.get(f"{suite.qa_http}/v1/fractions?patient_id=QA-002", headers=reader)
        fid = listed.json()["items"][0]["id"]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 720})
                page.set_default_timeout(10_000)
                page.goto(f"{suite.qa_http}/ui/sign-in?next=%2Fui%2Ftrend")
                page.fill("input[name=name]", "Physicist^Phil")
                page.select_option("select[name=role]", "physicist")
                page.click("button[type=submit]:has-text('Sign in')")
                shots = {
                    "qa-trend.png": ("/ui/trend", "#trend-by-machine"),
                    "qa-compliance.png": ("/ui/compliance", "#by-machine"),
                    "qa-fraction.png": (f"/ui/fractions/{fid}", "table.registrations"),
                }
                for name, (path, selector) in shots.items():
                    page.goto(f"{suite.qa_http}{path}")
                    expect(page.locator(selector)).to_be_visible()
                    shot = tmp_path / name
                    page.screenshot(path=str(shot), full_page=True)
                    if os.environ.get("RTOPS_UPDATE_SCREENSHOTS") == "1":
                        shutil.copyfile(shot, REPO / "docs" / "screenshots" / name)
            finally:
                browser.close()


@pytest.mark.parametrize("week", ["2026-W60", "soon"])
async def test_a_week_that_is_not_one_is_a_422_page(client: httpx.AsyncClient, week: str) -> None:
    await sign_in(client, OLGA)
    for path in ("/ui/compliance", "/ui/compliance.csv"):
        answer = await client.get(path, params={"week": week})
        assert answer.status_code == 422
        assert answer.headers["content-type"].startswith("text/html")
        assert "is not an ISO week" in answer.text
