"""Issue 15 through the real app (httpx, the test's database and clock): a review's record time
beside its own, backdated reviews (a reason and the system they were documented in, counted
apart in the weekly report), who may review a fraction (the policy's ``reviewers``), and the
reviewer's identity from ``sub`` (with the issuer), never from ``preferred_username``.

The clinic: Olga's patient QA-001, treated Monday 2026-11-23 and Tuesday 08:00 (Monday's review
is due at Tuesday's fraction); Omar covers for Olga Monday to Friday; Paul does not.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.qa_tracker import domain
from services.qa_tracker.app import api_app
from services.qa_tracker.service import NewReview, QaService
from services.qa_tracker.settings import QaSettings
from services.qa_tracker.store import Outbox, ReviewRow
from shared.auth import DEV_ISSUER, Principal, dev_signing_key, issue_dev_token
from shared.errors import Forbidden
from shared.events import parse_event
from shared.settings import StaffIdentity
from tests.events import Clock, at
from tests.oidc_provider import Provider, RunningProvider
from tests.qa_tracker.factories import make_service, policy_with
from tests.qa_tracker.test_api import admit, audit, ids, post_review, problem, treat, when
from tests.ui.test_qa_pages import sign_in

OLGA, OMAR, PAUL = "Oncologist^Olga", "Oncologist^Omar", "Oncologist^Paul"
COVER = domain.Coverage(OLGA, (OMAR,), date(2026, 11, 23), date(2026, 11, 27))
# Who the department's physicians are, by their stable identity (the sub).
IDENTITIES = {
    "dr.olga": StaffIdentity(dicom_names=[OLGA]),
    "dr.omar": StaffIdentity(dicom_names=[OMAR]),
    "dr.paul": StaffIdentity(dicom_names=[PAUL]),
}
Db = tuple[QaSettings, sessionmaker[Session]]
Auth = Callable[..., dict[str, str]]


@pytest.fixture
def reviewers() -> domain.Reviewers:
    return domain.Reviewers.COVERING  # the default


@pytest.fixture
def service(qa_db: Db, clock: Clock, reviewers: domain.Reviewers) -> QaService:
    settings, factory = qa_db
    policy = policy_with(reviewers=reviewers, coverage=(COVER,))
    return make_service(settings, factory, clock, policy)


@pytest.fixture
def settings(qa_db: Db) -> QaSettings:
    return qa_db[0].model_copy(update={"ui_identities": IDENTITIES})


@pytest.fixture
def app(qa_db: Db, settings: QaSettings, service: QaService) -> FastAPI:
    admit(service, "QA-001", OLGA)
    treat(service, 1, "2026-11-23", "08:00")
    treat(service, 2, "2026-11-24", "08:00")
    return api_app(settings, qa_db[1], service)


@pytest.fixture
def auth(settings: QaSettings) -> Auth:
    def headers(user: str = "dr.olga", role: str = "physician") -> dict[str, str]:
        return {"Authorization": f"Bearer {issue_dev_token(settings, user=user, roles=[role])}"}

    return headers


@pytest.fixture
def factory(qa_db: Db) -> sessionmaker[Session]:
    return qa_db[1]


def first(factory: sessionmaker[Session]) -> int:
    return ids(factory)["QA-001", 1]


def reviews(factory: sessionmaker[Session]) -> list[ReviewRow]:
    with factory() as session:
        return list(session.scalars(select(ReviewRow).order_by(ReviewRow.id)))


async def detail(client: httpx.AsyncClient, auth: Auth, fraction_id: int) -> dict[str, Any]:
    response = await client.get(f"/v1/fractions/{fraction_id}", headers=auth(role="therapist"))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def assessed(factory: sessionmaker[Session]) -> list[Any]:
    with factory() as session:
        events = [parse_event(b) for b in session.scalars(select(Outbox.body).order_by(Outbox.id))]
    return [e.data for e in events if e.type == "rtops.qa.fraction.assessed"]


# ---------------------------------------------------------------- recorded_at


async def test_recorded_at_is_shown_beside_reviewed_at(
    client: httpx.AsyncClient, auth: Auth, clock: Clock, factory: sessionmaker[Session]
) -> None:
    clock.now = at("2026-11-23", "12:00")
    half_an_hour_ago = clock.now - timedelta(minutes=30)  # within the tolerance: no reason

    response = await post_review(client, auth(), first(factory), reviewed_at=half_an_hour_ago)

    assert response.status_code == 201, response.text
    review = response.json()
    assert when(review["reviewed_at"]) == half_an_hour_ago
    assert when(review["recorded_at"]) == clock.now
    assert review["backdated"] is False
    assert (review["backdate_reason"], review["documented_in"]) == (None, None)
    assert (review["physician"], review["recorded_by"]) == (OLGA, "dr.olga")
    [shown] = (await detail(client, auth, first(factory)))["reviews"]
    assert shown == review
    assert (await detail(client, auth, first(factory)))["review_status"] == "reviewed_on_time"


# ---------------------------------------------------------------- backdating


async def test_a_backdated_review_needs_a_reason_and_the_system(
    client: httpx.AsyncClient, auth: Auth, clock: Clock, factory: sessionmaker[Session]
) -> None:
    """The issue's case: on Friday, a review dated Monday 15:00 of a fraction due Tuesday."""
    clock.now = at("2026-11-27", "12:00")
    monday = at("2026-11-23", "15:00")
    fid = first(factory)
    before = assessed(factory)

    for extra in ({}, {"backdate_reason": "entered late"}, {"documented_in": "ARIA"}):
        refused = problem(await post_review(client, auth(), fid, reviewed_at=monday, **extra), 422)
        assert "backdate_reason" in refused["detail"] and "documented_in" in refused["detail"]
    blank = {"backdate_reason": "  ", "documented_in": "ARIA"}
    problem(await post_review(client, auth(), fid, reviewed_at=monday, **blank), 422)
    assert reviews(factory) == [] and assessed(factory) == before  # nothing changed

    documented = {"backdate_reason": "reviewed at the console", "documented_in": "ARIA"}
    response = await post_review(client, auth(), fid, reviewed_at=monday, **documented)

    assert response.status_code == 201, response.text
    review = response.json()
    assert review["backdated"] is True
    assert (when(review["reviewed_at"]), when(review["recorded_at"])) == (monday, clock.now)
    assert (review["backdate_reason"], review["documented_in"]) == tuple(documented.values())
    body = await detail(client, auth, fid)
    assert body["review_status"] == "reviewed_backdated"  # not "reviewed_on_time"
    assert body["reviews"] == [review]
    listed = await client.get(
        "/v1/fractions", params={"status": "reviewed_backdated"}, headers=auth()
    )
    assert [f["id"] for f in listed.json()["items"]] == [fid]
    # Version 1 of the assessed event knows no backdated status: it goes out as late.
    latest = assessed(factory)[-1]
    assert (latest.review_status, latest.on_time) == ("reviewed_late", False)


@pytest.mark.parametrize(
    ("back", "refused"),
    [(timedelta(minutes=60), False), (timedelta(minutes=60, seconds=1), True)],
    ids=["at-the-tolerance", "one-second-beyond"],
)
async def test_the_tolerance_edge(
    client: httpx.AsyncClient,
    auth: Auth,
    clock: Clock,
    factory: sessionmaker[Session],
    back: timedelta,
    refused: bool,
) -> None:
    clock.now = at("2026-11-23", "12:00")
    response = await post_review(client, auth(), first(factory), reviewed_at=clock.now - back)
    assert response.status_code == (422 if refused else 201), response.text


async def test_a_review_dated_in_the_future_is_refused(
    client: httpx.AsyncClient, auth: Auth, clock: Clock, factory: sessionmaker[Session]
) -> None:
    clock.now = at("2026-11-23", "12:00")
    ahead = clock.now + timedelta(minutes=10)
    response = await post_review(client, auth(), first(factory), reviewed_at=ahead)
    assert "future" in problem(response, 422)["detail"]
    assert reviews(factory) == []


# ---------------------------------------------------------------- who may review


@pytest.mark.parametrize(
    ("reviewers", "user", "allowed"),
    [
        (domain.Reviewers.OWN, "dr.olga", True),
        (domain.Reviewers.OWN, "dr.omar", False),
        (domain.Reviewers.COVERING, "dr.olga", True),
        (domain.Reviewers.COVERING, "dr.omar", True),
        (domain.Reviewers.COVERING, "dr.paul", False),
        (domain.Reviewers.COVERING, "dr.unmapped", False),
        (domain.Reviewers.ANY, "dr.paul", True),
        (domain.Reviewers.ANY, "dr.unmapped", True),
    ],
)
async def test_who_may_review(
    client: httpx.AsyncClient,
    auth: Auth,
    clock: Clock,
    factory: sessionmaker[Session],
    user: str,
    allowed: bool,
) -> None:
    clock.now = at("2026-11-23", "12:00")
    fid = first(factory)

    response = await post_review(client, auth(user), fid)

    if allowed:
        assert response.status_code == 201, response.text
        names = IDENTITIES[user].dicom_names if user in IDENTITIES else [user]
        assert (response.json()["physician"], response.json()["recorded_by"]) == (names[0], user)
        assert audit(factory)[-1] == ("write", user, f"/v1/fractions/{fid}/reviews", "QA-001")
        return
    body = problem(response, 403)
    assert OLGA in body["detail"]
    assert reviews(factory) == []
    assert audit(factory)[-1] == ("refused", user, f"/v1/fractions/{fid}/reviews", "QA-001")


async def test_coverage_holds_on_its_days_only(
    client: httpx.AsyncClient, auth: Auth, clock: Clock, factory: sessionmaker[Session]
) -> None:
    clock.now = at("2026-11-30", "09:00")  # the Monday after Omar's cover
    late = {"backdate_reason": "x", "documented_in": "paper chart"}
    response = await post_review(client, auth("dr.omar"), first(factory), **late)
    assert "covering" in problem(response, 403)["detail"]
    response = await post_review(client, auth("dr.olga"), first(factory), **late)
    assert response.status_code == 201, response.text


# ---------------------------------------------------------------- identity: the issue's token


def mallory_dev_token(settings: QaSettings) -> str:
    """The embedded signer's key, the issue's claims: sub mallory, preferred_username Olga's."""
    now = datetime.now(UTC)
    claims = {
        "sub": "mallory",
        "preferred_username": OLGA,
        "name": OLGA,
        "iss": DEV_ISSUER,
        "aud": settings.oidc_audience,
        "iat": now,
        "exp": now + timedelta(minutes=5),
        "roles": ["physician"],
    }
    return jwt.encode(claims, dev_signing_key(settings), algorithm="HS256")


async def test_mallory_cannot_review_as_olga(
    client: httpx.AsyncClient,
    settings: QaSettings,
    clock: Clock,
    factory: sessionmaker[Session],
) -> None:
    clock.now = at("2026-11-23", "12:00")
    fid = first(factory)
    headers = {"Authorization": f"Bearer {mallory_dev_token(settings)}"}

    response = await post_review(client, headers, fid)

    assert OLGA in problem(response, 403)["detail"]
    assert reviews(factory) == []
    assert audit(factory)[-1] == ("refused", "mallory", f"/v1/fractions/{fid}/reviews", "QA-001")


@pytest.mark.parametrize("reviewers", [domain.Reviewers.ANY])
async def test_mallorys_review_is_mallorys(
    client: httpx.AsyncClient,
    settings: QaSettings,
    clock: Clock,
    factory: sessionmaker[Session],
) -> None:
    """Where any physician may review, the review and its audit row are mallory's, whatever
    name the token shows."""
    clock.now = at("2026-11-23", "12:00")
    fid = first(factory)
    headers = {"Authorization": f"Bearer {mallory_dev_token(settings)}"}

    response = await post_review(client, headers, fid)

    assert response.status_code == 201, response.text
    assert (response.json()["physician"], response.json()["recorded_by"]) == ("mallory", "mallory")
    [stored] = reviews(factory)
    assert (stored.physician, stored.recorded_by) == ("mallory", "mallory")
    assert audit(factory)[-1] == ("write", "mallory", f"/v1/fractions/{fid}/reviews", "QA-001")
    assert all(user != OLGA for _, user, _, _ in audit(factory))


@pytest.fixture(scope="module")
def running() -> Iterator[RunningProvider]:
    running = RunningProvider(Provider())
    yield running
    running.stop()


def oidc_app(app: FastAPI, provider: Provider, **extra: Any) -> FastAPI:
    settings = app.state.settings.model_copy(
        update={
            "oidc_issuer": provider.url,
            "oidc_jwks_url": f"{provider.url}/jwks",
            "oidc_audience": "rtops",
            **extra,
        }
    )
    return api_app(settings, app.state.session_factory, app.state.qa_service)


def oidc_token(provider: Provider, sub: str, **claims: Any) -> dict[str, str]:
    token = provider.sign({"sub": sub, "aud": "rtops", "roles": ["physician"], **claims})
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("reviewers", [domain.Reviewers.COVERING, domain.Reviewers.ANY])
async def test_mallory_through_the_identity_provider(
    app: FastAPI,
    running: RunningProvider,
    clock: Clock,
    factory: sessionmaker[Session],
    reviewers: domain.Reviewers,
) -> None:
    """The same token from a real OIDC provider (RS256, JWKS over HTTP): the identity is
    ``<issuer>#mallory``; Olga (mapped by her subject) reviews as Olga."""
    provider = running.provider
    identities = {"sub-olga": StaffIdentity(dicom_names=[OLGA])}
    oidc = oidc_app(app, provider, ui_identities=identities)
    mallory, olga = f"{provider.url}#mallory", f"{provider.url}#sub-olga"
    clock.now = at("2026-11-23", "12:00")
    fid = first(factory)
    resource = f"/v1/fractions/{fid}/reviews"
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=oidc), base_url="http://test"
    ) as client:
        headers = oidc_token(provider, "mallory", preferred_username=OLGA, name=OLGA)
        response = await post_review(client, headers, fid)
        if reviewers == domain.Reviewers.ANY:
            assert response.status_code == 201, response.text
            assert response.json()["physician"] == mallory
            assert audit(factory)[-1] == ("write", mallory, resource, "QA-001")
        else:  # her sign-in maps to no DICOM name: the name claim is only shown
            assert "not mapped" in problem(response, 403)["detail"]
            assert audit(factory)[-1] == ("refused", mallory, resource, "QA-001")
            assert reviews(factory) == []

        response = await post_review(client, oidc_token(provider, "sub-olga", name="Olga O."), fid)
        assert response.status_code == 201, response.text
        assert (response.json()["physician"], response.json()["recorded_by"]) == (OLGA, olga)
        assert audit(factory)[-1] == ("write", olga, resource, "QA-001")
    assert all(user != OLGA for _, user, _, _ in audit(factory))


# ---------------------------------------------------------------- the weekly report


@pytest.fixture
def week(app: FastAPI, service: QaService, clock: Clock, factory: sessionmaker[Session]) -> int:
    """W48, seen Friday: fraction 1 reviewed on time; fraction 2 (the last, due Wednesday
    08:00) documented Friday noon as reviewed Tuesday 15:00: backdated."""
    fid = ids(factory)
    olga = Principal("dr.olga", frozenset({"physician"}), names=(OLGA,))
    clock.now = at("2026-11-23", "15:00")
    service.add_review(fid["QA-001", 1], new_review(), principal=olga, resource="/t")
    clock.now = at("2026-11-27", "12:00")
    service.add_review(
        fid["QA-001", 2],
        new_review(at("2026-11-24", "15:00"), "entered from the paper chart", "paper chart"),
        principal=olga,
        resource="/t",
    )
    return fid["QA-001", 2]


def new_review(
    reviewed_at: datetime | None = None, reason: str | None = None, system: str | None = None
) -> NewReview:
    return NewReview(domain.Decision.APPROVED, None, None, reviewed_at, reason, system)


TOTAL = {
    "imaged_fractions": 2,
    "reviewed_on_time": 1,
    "reviewed_backdated": 1,
    "reviewed_late": 0,
    "compliance_pct": 50.0,
    "attested_compliance_pct": 100.0,
}


async def test_the_weekly_report_counts_backdated_apart(
    client: httpx.AsyncClient, auth: Auth, week: int
) -> None:
    url = "/v1/compliance/weekly?week=2026-W48"
    body = (await client.get(url, headers=auth())).json()
    assert {k: body[k] for k in TOTAL} == TOTAL
    assert {k: body["by_physician"][OLGA][k] for k in TOTAL} == TOTAL

    as_csv = await client.get(url, headers={**auth(), "Accept": "text/csv"})
    header, total, *_ = list(csv.reader(io.StringIO(as_csv.text)))
    row = dict(zip(header, total, strict=True))
    assert {k: row[k] for k in TOTAL} == {k: str(v) for k, v in TOTAL.items()}

    html = (await client.get(url, headers={**auth(), "Accept": "text/html"})).text
    assert "<th>Backdated</th>" in html and "<th>with backdated %</th>" in html
    assert "1 more documented late but dated on time (backdated), 100.0% with them" in html
    assert "<title>Backdated: 1</title>" in html  # its segment of the chart


async def test_the_staff_pages_show_the_record_time_and_the_reason(
    client: httpx.AsyncClient, week: int
) -> None:
    await sign_in(client, OLGA)
    page = (await client.get(f"/ui/fractions/{week}")).text
    assert "<th>Recorded</th>" in page
    assert "backdated: entered from the paper chart (documented in paper chart)" in page
    assert 'datetime="2026-11-27T17:00:00+00:00"' in page  # recorded Friday noon New York
    report = (await client.get("/ui/compliance?week=2026-W48")).text
    assert '<span id="backdated">1 more documented late' in report
    assert "<th>Backdated</th>" in report


def test_a_review_policy_refusal_changes_nothing_but_the_audit(
    service: QaService, factory: sessionmaker[Session], clock: Clock, app: FastAPI
) -> None:
    clock.now = at("2026-11-23", "12:00")
    paul = Principal("dr.paul", frozenset({"physician"}), names=(PAUL,))
    before = len(assessed(factory))
    with pytest.raises(Forbidden):
        service.add_review(first(factory), new_review(), principal=paul, resource="/t")
    assert reviews(factory) == [] and len(assessed(factory)) == before
    assert audit(factory)[-1] == ("refused", "dr.paul", "/t", "QA-001")
