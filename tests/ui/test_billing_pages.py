"""Billing's staff pages over httpx against the real app (``background=False``): the charges
(holds with their reasons, readable evidence, filters, paging), the discrepancy report with
the claim upload, a course's charge timeline with its closing form; sign-in, roles, CSRF and
audit. Events go in through ``BillingService.apply_batch``; "now" is the test's clock.
The QA tracker's patient timeline shows billing's section (both apps in-process)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from services.billing import pages
from services.billing.app import api_app
from services.billing.service import BillingService
from services.billing.store import AuditLog, ChargeRow, ClaimFileRow, CourseClosure
from tests.billing.conftest import Db, billing_database, make_service
from tests.billing.events import (
    MONDAY,
    PID,
    assessed_event,
    billing_plan_event,
    note_event,
    treatment,
    weekdays,
)
from tests.events import PLAN_UID, Clock, at

COURSE = f"course:{PLAN_UID}"
OTHER = "BILL-002"
OTHER_PLAN = "1.2.826.0.1.3680043.10.1.2"
KEY = "billing-pages-test-key-" + "k" * 32


@pytest.fixture
def billing(base_settings: dict[str, object]) -> Iterator[Db]:
    with billing_database(base_settings) as (settings, factory):
        yield settings.model_copy(update={"dev_signing_key": KEY}), factory


@pytest.fixture
def billing_service(billing: Db) -> BillingService:
    """BILL-001: eight sessions of a 28-fraction course from Monday 2 March, reviews on time
    but the eighth's (pending: its 77387-26 on hold), the first week's management note.
    BILL-002: five sessions, all reviewed, its note."""
    settings, factory = billing
    service = make_service(settings, factory, Clock(at("2026-03-20", "12:00")))
    days = weekdays(8)
    service.apply_batch(
        [
            billing_plan_event(),
            *treatment(8),
            *[assessed_event(i + 1, d) for i, d in enumerate(days[:7])],
            assessed_event(8, days[7], status="pending"),
            note_event(MONDAY),
            billing_plan_event(plan_uid=OTHER_PLAN, pid=OTHER, label="BREAST"),
            *treatment(5, pid=OTHER, plan_uid=OTHER_PLAN),
            *[
                assessed_event(i + 1, d, pid=OTHER, plan_uid=OTHER_PLAN)
                for i, d in enumerate(days[:5])
            ],
            note_event(MONDAY, pid=OTHER, course_id=f"course:{OTHER_PLAN}"),
        ]
    )
    return service


@pytest.fixture
def app(billing: Db, billing_service: BillingService) -> FastAPI:
    settings, factory = billing
    return api_app(settings, factory, billing_service)


def token_in(html: str) -> str:
    return re.findall(r'name="csrf_token" value="([^"]+)"', html)[-1]


async def sign_in(
    client: httpx.AsyncClient, name: str = "Bea Billing", role: str = "billing"
) -> str:
    form = await client.get("/ui/sign-in")
    answer = await client.post(
        "/ui/sign-in",
        data={"name": name, "role": role, "csrf_token": token_in(form.text), "next": "/ui/"},
    )
    assert answer.status_code == 303, answer.text
    page = await client.get("/ui/charges")
    return token_in(page.text)


def audit_rows(factory: sessionmaker[Session]) -> list[tuple[str, str, str, str | None]]:
    with factory() as session:
        rows = session.scalars(select(AuditLog).order_by(AuditLog.id)).all()
        return [(r.action, r.user, r.resource, r.patient_id) for r in rows]


def charge_rows(html: str) -> list[str]:
    return re.findall(r'<tr data-charge="([^"]+)"', html)


def count(factory: sessionmaker[Session], model: Any) -> int:
    with factory() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


# ---------------------------------------------------------------- sign-in and roles


async def test_not_signed_in_redirects_and_a_physician_is_refused(
    client: httpx.AsyncClient,
) -> None:
    paths = ("/ui/charges", "/ui/discrepancies", f"/ui/courses/{COURSE}")
    for path in paths:
        answer = await client.get(path)
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/ui/sign-in?next=%2Fui%2F")
    await sign_in(client, "Oncologist^Olga", "physician")
    for path in paths:
        answer = await client.get(path)
        assert answer.status_code == 403
        assert "billing, admin" in answer.text and "physician" in answer.text
    home = await client.get("/ui/", follow_redirects=False)
    assert home.status_code == 303 and home.headers["location"] == "/ui/charges"


async def test_an_admin_reads_the_pages(client: httpx.AsyncClient) -> None:
    await sign_in(client, "Ada Admin", "admin")
    for path in ("/ui/charges", "/ui/discrepancies", f"/ui/courses/{COURSE}"):
        assert (await client.get(path)).status_code == 200, path


# ---------------------------------------------------------------- charges


async def test_charges_show_holds_with_reason_and_evidence_readably(
    client: httpx.AsyncClient, billing: Db
) -> None:
    await sign_in(client)
    page = await client.get("/ui/charges")
    assert page.status_code == 200
    html = page.text
    assert 'href="/ui/charges" aria-current="page"' in html and 'href="/ui/discrepancies"' in html
    assert re.search(r"<strong>1</strong> on hold · \d+ ready", html)
    # The hold, with what it means and what releases it, counted by reason above.
    held = re.search(r'<tr data-charge="([^"]+)" data-status="hold">(.*?)</tr>', html, re.S)
    assert held is not None
    assert "77387-26" in held.group(2) and 'data-hold-reason="review_pending"' in held.group(2)
    assert "IGRT review pending" in held.group(2) and "released by" in held.group(2)
    assert "On hold, by reason" in html
    # Evidence: the record and the review as people read them, with the event ids.
    assert "Treatment record: fraction 8, Wed 11 Mar 08:00 on TrueBeam1" in held.group(2)
    assert "IGRT review of fraction 8: pending" in held.group(2)
    assert re.search(r"<code title=\"event id\">[0-9a-f-]{36}</code>", held.group(2))
    assert "IGRT review of fraction 7: approved by Olga Oncologist" in html
    # Course links by the plan's label.
    assert f'href="/ui/courses/{COURSE.replace(":", "%3A")}"' in html and ">PROST</a>" in html
    # Newest date of service first.
    dates = re.findall(r'<time datetime="(\d{4}-\d\d-\d\d)">', html)
    assert dates == sorted(dates, reverse=True)


async def test_charge_filters_patient_status_and_clinic_dates(
    client: httpx.AsyncClient, billing: Db
) -> None:
    await sign_in(client)
    _, factory = billing
    with factory() as session:
        mine = session.scalars(
            select(ChargeRow.id).where(ChargeRow.patient_id == OTHER, ~ChargeRow.removed)
        ).all()
    by_patient = await client.get("/ui/charges", params={"patient": OTHER})
    assert sorted(charge_rows(by_patient.text)) == sorted(mine)
    holds = await client.get("/ui/charges", params={"status": "hold"})
    assert len(charge_rows(holds.text)) == 1 and "Charges on hold" in holds.text
    ready = await client.get("/ui/charges", params={"status": "ready", "patient": PID})
    assert 'data-status="hold"' not in ready.text and charge_rows(ready.text)
    # Clinic dates, both included: Wednesday 11 March alone.
    day = await client.get("/ui/charges", params={"from": "2026-03-11", "to": "2026-03-11"})
    assert set(re.findall(r'<time datetime="(\d{4}-\d\d-\d\d)">', day.text)) == {"2026-03-11"}
    assert len(charge_rows(day.text)) == 2  # BILL-001's delivery and guidance
    course = await client.get("/ui/charges", params={"course": f"course:{OTHER_PLAN}"})
    assert sorted(charge_rows(course.text)) == sorted(mine) and "BREAST" in course.text
    bad = await client.get("/ui/charges", params={"from": "last week", "status": "lost"})
    assert bad.status_code == 200
    assert "is not a date" in bad.text and "is not one of hold, ready" in bad.text


async def test_charges_page_on_newest_first_without_gap_or_repeat(
    client: httpx.AsyncClient, billing: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pages, "PAGE_SIZE", 7)
    await sign_in(client)
    seen: list[str] = []
    url: str | None = "/ui/charges"
    pages_read = 0
    while url:
        html = (await client.get(url)).text
        seen += charge_rows(html)
        pages_read += 1
        found = re.search(r'<a rel="next" href="([^"]+)"', html)
        url = "/ui/charges" + found.group(1).replace("&amp;", "&") if found else None
    _, factory = billing
    with factory() as session:
        expected = session.scalars(
            select(ChargeRow.id)
            .where(~ChargeRow.removed)
            .order_by(ChargeRow.service_date.desc(), ChargeRow.id.desc())
        ).all()
    assert seen == list(expected) and pages_read > 2
    forged = await client.get("/ui/charges", params={"cursor": "e30="})
    assert forged.status_code == 200 and "cursor is not one" in forged.text


async def test_every_page_read_is_audited_with_its_patients(
    client: httpx.AsyncClient, billing: Db
) -> None:
    await sign_in(client)
    await client.get("/ui/charges", params={"patient": OTHER})
    await client.get(f"/ui/courses/{COURSE}")
    await client.get("/ui/discrepancies", params={"patient": PID})
    rows = audit_rows(billing[1])
    assert ("read", "Bea Billing", f"/ui/charges?patient={OTHER}", OTHER) in rows
    assert not any(r[2] == f"/ui/charges?patient={OTHER}" and r[3] == PID for r in rows)
    assert ("read", "Bea Billing", "/ui/charges", PID) in rows  # the sign-in's landing page
    assert ("read", "Bea Billing", f"/ui/courses/{COURSE}", PID) in rows
    assert ("read", "Bea Billing", f"/ui/discrepancies?patient={PID}", PID) in rows


# ---------------------------------------------------------------- discrepancies and upload

GOOD_CSV = (
    "claim_id,patient_id,service_date,cpt,modifiers,units\r\n"
    f"C1,{PID},2026-03-02,77407,,1\r\n"
    f"C1,{PID},2026-03-02,77385,,1\r\n"
)


async def upload(
    client: httpx.AsyncClient, content: str, token: str | None, name: str = "claims.csv"
) -> httpx.Response:
    data = {"csrf_token": token} if token is not None else {}
    return await client.post(
        "/ui/discrepancies/claims",
        data=data,
        files={"file": (name, content.encode(), "text/csv")},
    )


async def test_an_uploaded_claim_file_joins_the_report(
    client: httpx.AsyncClient, billing: Db
) -> None:
    token = await sign_in(client)
    before = (await client.get("/ui/discrepancies", params={"patient": PID})).text
    assert "None yet" in before and 'data-kind="deleted_code"' not in before
    answer = await upload(client, GOOD_CSV, token)
    assert answer.status_code == 303
    assert re.fullmatch(r"/ui/discrepancies\?imported=\d+", answer.headers["location"])
    page = await client.get(answer.headers["location"])
    html = page.text
    assert "imported as csv: 2 claim lines" in html and "claims.csv" in html
    deleted = re.search(r'<tr data-kind="deleted_code">(.*?)</tr>', html, re.S)
    assert deleted is not None
    assert "77385" in deleted.group(1) and "Mon 02 Mar 2026" in deleted.group(1)
    assert "C1" in deleted.group(1) and "line 3" in deleted.group(1)
    assert re.search(r"<small>[^<]*CPT[^<]*</small>", deleted.group(1))  # the citation
    # Missing charges (earned, not claimed) link to their course's timeline.
    assert 'data-kind="missing_charge"' in html and "course timeline" in html
    # The kind filter narrows the report.
    only = await client.get("/ui/discrepancies", params={"kind": "deleted_code"})
    assert set(re.findall(r'data-kind="([a-z_]+)"', only.text)) == {"deleted_code"}
    assert ("write", "Bea Billing", "/ui/discrepancies/claims", PID) in audit_rows(billing[1])


async def test_a_rejected_file_lists_every_error_by_line_and_stores_nothing(
    client: httpx.AsyncClient, billing: Db
) -> None:
    token = await sign_in(client)
    bad = (
        "claim_id,patient_id,service_date,cpt,modifiers,units\r\n"
        f"C1,{PID},2026-03-02,77407,,1\r\n"
        f"C1,{PID},March 3rd,77407,,1\r\n"
        f"C1,{PID},2026-03-04,77407,,zero\r\n"
    )
    answer = await upload(client, bad, token, "bad.csv")
    assert answer.status_code == 422
    html = answer.text
    assert "bad.csv was rejected: 2 error(s). Nothing of it was stored" in html
    errors = re.findall(r'<tr><td class="num">(\d+)</td><td>([^<]+)</td></tr>', html)
    assert [line for line, _ in errors] == ["3", "4"]
    assert "service_date" in errors[0][1] and "units" in errors[1][1]
    assert count(billing[1], ClaimFileRow) == 0
    empty = await client.post(
        "/ui/discrepancies/claims", data={"csrf_token": token}, files={"file": ("", b"")}
    )
    assert empty.status_code == 422 and "Choose a claim file" in empty.text


async def test_the_same_file_twice_is_a_duplicate(client: httpx.AsyncClient, billing: Db) -> None:
    token = await sign_in(client)
    assert (await upload(client, GOOD_CSV, token)).status_code == 303
    again = await upload(client, GOOD_CSV, token, "claims-again.csv")
    assert again.status_code == 409
    assert "claims-again.csv is a duplicate" in again.text
    assert "imported before, as claim file" in again.text
    assert count(billing[1], ClaimFileRow) == 1


async def test_an_upload_without_its_csrf_token_is_refused(
    client: httpx.AsyncClient, billing: Db
) -> None:
    await sign_in(client)
    refused = await upload(client, GOOD_CSV, None)
    assert refused.status_code == 403
    forged = await upload(client, GOOD_CSV, "not-the-token")
    assert forged.status_code == 403
    assert count(billing[1], ClaimFileRow) == 0


# ---------------------------------------------------------------- a course's timeline


async def test_a_course_timeline_shows_sessions_charges_and_closure_points(
    client: httpx.AsyncClient,
) -> None:
    await sign_in(client)
    page = await client.get(f"/ui/courses/{COURSE}")
    assert page.status_code == 200
    html = page.text
    assert "BILL-001, course PROST" in html and '<span class="status open">open</span>' in html
    assert '<strong class="fractions">8</strong>' in html
    sessions = re.findall(r'<tr class="session" data-session="(\d+)">', html)
    assert sessions == [str(n) for n in range(1, 9)]
    assert re.search(r"session 3</span></td>\s*<td>beams delivered: fraction 3 \(PROST\)", html)
    # Charges in date order with their status: planning before the first session, the
    # 77427 of the first five after the fifth session, the held guidance after the eighth.
    order = re.findall(r'data-session="(\d+)"|data-charge="[^"|]+\|(\d{5})', html)
    steps = [f"s{s}" if s else c for s, c in order]
    assert steps.index("77301") < steps.index("s1")
    assert steps.index("s5") < steps.index("77427") < steps.index("s6")
    held = re.search(r'data-status="hold">(.*?)</tr>', html, re.S)
    assert held is not None and "IGRT review pending" in held.group(1)
    assert html.index('data-session="8"') < html.index('data-status="hold"')
    assert 'data-closure="' not in html  # open: no closure point yet
    missing = await client.get("/ui/courses/course:9.9.9")
    assert missing.status_code == 404 and "There is no course" in missing.text


async def test_closing_a_course_earns_the_remainder_and_shows_the_closure(
    client: httpx.AsyncClient, billing: Db
) -> None:
    token = await sign_in(client)
    path = f"/ui/courses/{COURSE}"
    closed = await client.post(
        f"{path}/close",
        data={"csrf_token": token, "closed_on": "2026-03-11", "reason": "patient stopped"},
    )
    assert closed.status_code == 303
    target = f"/ui/courses/{COURSE.replace(':', '%3A')}?closed=2026-03-11"
    assert closed.headers["location"] == target
    html = (await client.get(closed.headers["location"])).text
    assert "Course closed on 2026-03-11" in html
    assert '<span class="status closed">closed</span>' in html
    closure = re.search(r'<tr class="closure" data-closure="staff">(.*?)</tr>', html, re.S)
    assert closure is not None
    assert "closed by staff, 8 fractions by then" in closure.group(1)
    assert "Closed on 2026-03-11 by Bea Billing: patient stopped" in closure.group(1)
    # Fractions 6-8 are a 3-fraction remainder: one more 77427, held for its week's note.
    management = re.findall(r'data-charge="[^"]+\|77427[^"]*" data-status="(\w+)"', html)
    assert management == ["ready", "hold"]
    assert "No treatment-management note for the block" in html
    assert ("write", "Bea Billing", f"{path}/close", PID) in audit_rows(billing[1])


async def test_a_closing_the_use_case_refuses_is_said_on_the_page(
    client: httpx.AsyncClient, billing: Db
) -> None:
    token = await sign_in(client)
    path = f"/ui/courses/{COURSE}/close"
    future = await client.post(path, data={"csrf_token": token, "closed_on": "2026-04-01"})
    assert future.status_code == 422 and "is in the future" in future.text
    early = await client.post(path, data={"csrf_token": token, "closed_on": "2026-02-27"})
    assert early.status_code == 422 and "before the course&#39;s first session" in early.text
    junk = await client.post(path, data={"csrf_token": token, "closed_on": "soon"})
    assert junk.status_code == 422 and "is not a date" in junk.text
    unknown = await client.post("/ui/courses/course:9.9/close", data={"csrf_token": token})
    assert unknown.status_code == 404
    assert count(billing[1], CourseClosure) == 0


async def test_closing_without_the_csrf_token_or_as_a_physician_is_refused(
    client: httpx.AsyncClient, billing: Db
) -> None:
    await sign_in(client)
    path = f"/ui/courses/{COURSE}/close"
    assert (await client.post(path, data={"closed_on": "2026-03-11"})).status_code == 403
    token = await sign_in(client, "Oncologist^Olga", "physician")
    refused = await client.post(path, data={"csrf_token": token, "closed_on": "2026-03-11"})
    assert refused.status_code == 403
    assert count(billing[1], CourseClosure) == 0


# ---------------------------------------------------------------- the patient timeline

QA, BILLING = "http://qa.test", "http://billing.test"


@pytest.fixture
async def qa_with_billing(
    qa_db: Any, service: Any, app: FastAPI
) -> AsyncIterator[httpx.AsyncClient]:
    """The QA tracker's pages (the timeline's host) asking the billing API in-process."""
    from services.qa_tracker.app import api_app as qa_api_app

    settings, factory = qa_db
    urls = {"qa_tracker": QA, "billing": BILLING}
    settings = settings.model_copy(update={"dev_signing_key": KEY, "ui_service_urls": urls})
    qa = qa_api_app(settings, factory, service)
    qa.state.http_mounts = {
        QA: httpx.ASGITransport(app=qa),
        BILLING: httpx.ASGITransport(app=app),
    }
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=qa), base_url="http://testserver"
    ) as client:
        yield client


async def test_the_qa_trackers_timeline_shows_billings_charges(
    qa_with_billing: httpx.AsyncClient, billing: Db
) -> None:
    client = qa_with_billing
    form = await client.get("/ui/sign-in")
    await client.post(
        "/ui/sign-in",
        data={"name": "Bea Billing", "role": "billing", "csrf_token": token_in(form.text)},
    )
    html = (await client.get(f"/ui/patients/{PID}")).text
    _, factory = billing
    with factory() as session:
        charges = session.scalar(
            select(func.count()).where(ChargeRow.patient_id == PID, ~ChargeRow.removed)
        )
    assert re.search(rf"<strong>Billing</strong>:\s*{charges} entries", html)
    assert "Charge 77387-26" in html and "on hold: review pending" in html
    assert '<span class="status on_hold">on hold</span>' in html
    assert f'href="{BILLING}/ui/courses/{COURSE.replace(":", "%3A")}"' in html
    # The QA tracker's own section refuses billing staff; the billing API audited its read.
    assert re.search(r"IGRT review</strong>:\s*not visible to your role", html)
    reads = audit_rows(factory)
    assert ("read", "Bea Billing", f"/v1/charges?patient_id={PID}&limit=500", PID) in reads


async def test_a_therapist_sees_billing_is_not_for_their_role(
    qa_with_billing: httpx.AsyncClient,
) -> None:
    client = qa_with_billing
    form = await client.get("/ui/sign-in")
    await client.post(
        "/ui/sign-in",
        data={"name": "Tess Therapist", "role": "therapist", "csrf_token": token_in(form.text)},
    )
    html = (await client.get(f"/ui/patients/{PID}")).text
    assert re.search(r"<strong>Billing</strong>:\s*not visible to your role", html)
    assert "Charge 77" not in html


async def test_every_link_form_and_redirect_carries_the_root_path(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app, root_path="/billing")
    async with httpx.AsyncClient(transport=transport, base_url="http://rtops.test") as client:
        away = await client.get("/ui/charges")
        assert away.headers["location"] == "/billing/ui/sign-in?next=%2Fui%2Fcharges"
        token = await sign_in(client)
        links: list[str] = []
        for path in ("/ui/charges", "/ui/discrepancies", f"/ui/courses/{COURSE}"):
            html = (await client.get(path)).text
            links += re.findall(r'(?:href|action|src|hx-post|hx-get)="(/[^"]*)"', html)
        closed = await client.post(
            f"/ui/courses/{COURSE}/close", data={"csrf_token": token, "closed_on": "2026-03-11"}
        )
        uploaded = await upload(client, GOOD_CSV, token)
    assert links and [link for link in links if not link.startswith("/billing/")] == []
    assert closed.headers["location"].startswith("/billing/ui/courses/")
    assert uploaded.headers["location"].startswith("/billing/ui/discrepancies?imported=")
