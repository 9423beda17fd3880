"""Course kind through the service and the API: a possibly stereotactic course (from its plan
facts) holds its kind-dependent charges as ``course_kind_unconfirmed`` until staff confirm the
kind with ``POST /v1/courses/{id}/kind``; the course is then evaluated under that kind's codes
(CPT 77427/77431 or 77432/77435, 77371-77373; no IGRT with SRS/SBRT, CPT 2015)."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.billing.service import BillingService
from services.billing.store import AuditLog, Course, CourseKindRow
from services.billing.store.queries import ChargeFilter
from shared.auth import Principal
from shared.errors import NotFound
from shared.events import (
    ChargePosted,
    ChargeVoided,
    CloudEvent,
    FractionGroup,
    PlanReceived,
    PlanReference,
    envelope,
)
from tests.billing.conftest import Auth, Db
from tests.billing.events import (
    MONDAY,
    PID,
    assessed_event,
    billing_plan_event,
    note_event,
    treatment,
    weekdays,
)
from tests.billing.test_service import charges, published
from tests.events import PLAN_UID

COURSE = f"course:{PLAN_UID}"
BILLER = Principal(user="bea.biller", roles=frozenset({"billing"}))
KIND_HELD = ("hold", "course_kind_unconfirmed")


def plan_event(
    fractions: int,
    dose_per_fraction: float | None,
    *,
    site: str = "Lung RUL",
    plan_uid: str = PLAN_UID,
    predecessor: str | None = None,
) -> CloudEvent:
    """``billing_plan_event`` (VMAT, one isocenter) with a prescription and a treatment site."""
    base = billing_plan_event(plan_uid=plan_uid, fractions=fractions)
    data = base.data
    assert isinstance(data, PlanReceived)
    group = FractionGroup(
        number=1,
        fractions_planned=fractions,
        beam_count=2,
        prescription_dose_gy=dose_per_fraction * fractions if dose_per_fraction else None,
        dose_per_fraction_gy=dose_per_fraction,
    )
    refs = (
        (PlanReference(sop_instance_uid=predecessor, relationship="PREDECESSOR"),)
        if predecessor
        else ()
    )
    update: dict[str, Any] = {
        "fraction_groups": (group,),
        "treatment_site": site,
        "referenced_plans": refs,
    }
    return envelope(data.model_copy(update=update), source=base.source)


def course(n: int, dose: float, *, site: str = "Lung RUL") -> list[CloudEvent]:
    """n daily fractions of ``dose`` Gy, each reviewed on time, a management note every week."""
    return [
        plan_event(n, dose, site=site),
        *treatment(n),
        *[assessed_event(i + 1, day) for i, day in enumerate(weekdays(n))],
        *[note_event(MONDAY + timedelta(days=7 * w)) for w in range((n + 4) // 5 + 1)],
    ]


def by_code(factory: sessionmaker[Session]) -> dict[str, list[tuple[str, str | None]]]:
    out: dict[str, list[tuple[str, str | None]]] = {}
    for c in charges(factory):
        out.setdefault(c["cpt"], []).append((c["status"], c["hold_reason"]))
    return out


def course_row(factory: sessionmaker[Session], course_id: str = COURSE) -> Course:
    with factory() as session:
        row = session.get(Course, course_id)
        assert row is not None
        session.expunge(row)
        return row


# ---------------------------------------------------------------- the service


def test_a_palliative_8_gy_single_fraction_waits_then_bills_as_conventional(
    service: BillingService, billing_db: Db
) -> None:
    factory = billing_db[1]
    service.apply_batch(course(1, 8.0, site="Femur L"))
    row = course_row(factory)
    assert row.kind_candidate is not None and row.kind_confirmed is None
    assert (row.kind_candidate["suggested"], row.kind_candidate["dose_per_fraction_gy"]) == (
        "sbrt",
        8.0,
    )
    held = by_code(factory)
    # Delivery, image guidance and the whole-course management wait; the rest does not.
    assert held["77407"] == [KIND_HELD]
    assert held["77387"] == [KIND_HELD]
    assert held["77431"] == [KIND_HELD]
    assert held["77336"] == [("ready", None)]
    assert held["77301"] == [("ready", None)]
    exported = service.export(ChargeFilter(), principal=BILLER, resource="/x")
    assert not {r.cpt for r in exported} & {"77407", "77387", "77431"}

    service.set_course_kind(
        COURSE, kind="conventional", reason="palliative", principal=BILLER, resource="/k"
    )
    released = by_code(factory)
    assert released["77431"] == [("ready", None)]  # CPT 77431: a whole course of 1-2 fractions
    assert released["77407"] == [("ready", None)]
    assert released["77387"] == [("ready", None)]
    assert "77427" not in released and "77435" not in released
    row = course_row(factory)
    assert (row.kind, row.kind_confirmed) == ("conventional", "conventional")
    # Released charges are exported with the next export; nothing exported was voided.
    again = service.export(ChargeFilter(), principal=BILLER, resource="/x")
    assert sorted(r.cpt for r in again) == ["77387", "77407", "77431"]
    assert not [e for e in published(factory) if isinstance(e.data, ChargeVoided)]


def test_sbrt_5_x_10_gy_confirmed_bills_77435_once_and_77373_per_fraction(
    service: BillingService, billing_db: Db
) -> None:
    factory = billing_db[1]
    service.apply_batch(course(5, 10.0))
    before = by_code(factory)
    assert before["77427"] == [KIND_HELD]
    assert before["77407"] == [KIND_HELD] * 5 and before["77387"] == [KIND_HELD] * 5

    service.set_course_kind(COURSE, kind="sbrt", reason=None, principal=BILLER, resource="/k")
    after = by_code(factory)
    assert after["77435"] == [("ready", None)]  # CPT 77435: once per course
    assert after["77373"] == [("ready", None)] * 5  # CPT 77373: per fraction, at most five
    # No conventional delivery or management, no IGRT (included in SBRT; CPT 2015).
    assert not {"77427", "77431", "77407", "77387"} & set(after)
    assert after["77336"] == [("ready", None)]
    gone = Counter(c["cpt"] for c in charges(factory, removed=True))
    assert gone == {"77407": 5, "77387": 5, "77427": 1}
    assert (course_row(factory).kind, course_row(factory).kind_confirmed) == ("sbrt", "sbrt")


def test_a_cranial_single_fraction_confirmed_srs_bills_77372_and_77432(
    service: BillingService, billing_db: Db
) -> None:
    factory = billing_db[1]
    service.apply_batch(course(1, 20.0, site="Brain, left frontal metastasis"))
    assert course_row(factory).kind_candidate["suggested"] == "srs"  # type: ignore[index]
    service.set_course_kind(COURSE, kind="srs", reason=None, principal=BILLER, resource="/k")
    after = by_code(factory)
    assert after["77372"] == [("ready", None)] and after["77432"] == [("ready", None)]
    assert not {"77431", "77407", "77387", "77373"} & set(after)


def test_a_30_fraction_course_is_never_a_candidate(service: BillingService, billing_db: Db) -> None:
    factory = billing_db[1]
    service.apply_batch(course(30, 2.0))
    row = course_row(factory)
    assert (row.kind, row.kind_candidate, row.kind_confirmed) == ("conventional", None, None)
    assert all(c["hold_reason"] != "course_kind_unconfirmed" for c in charges(factory))
    assert len([c for c in charges(factory) if c["cpt"] == "77427"]) == 6
    assert all(c["status"] == "ready" for c in charges(factory) if c["cpt"] == "77407")


def test_exported_charges_that_a_kind_changes_are_voided(
    service: BillingService, billing_db: Db
) -> None:
    factory = billing_db[1]
    service.apply_batch(course(5, 10.0))
    service.set_course_kind(
        COURSE, kind="conventional", reason=None, principal=BILLER, resource="/k"
    )
    exported = service.export(ChargeFilter(), principal=BILLER, resource="/x")
    assert Counter(r.cpt for r in exported)["77407"] == 5
    # Staff correct it: SBRT after all.
    service.set_course_kind(COURSE, kind="sbrt", reason="SBRT", principal=BILLER, resource="/k")
    voided = [e.data for e in published(factory) if isinstance(e.data, ChargeVoided)]
    assert Counter((v.cpt, v.reason) for v in voided) == {
        ("77407", "removed"): 5,
        ("77387", "removed"): 5,
        ("77427", "removed"): 1,
    }
    new = service.export(ChargeFilter(), principal=BILLER, resource="/x")
    assert Counter(r.cpt for r in new) == {"77373": 5, "77435": 1}


def test_setting_the_same_kind_again_changes_nothing(
    service: BillingService, billing_db: Db
) -> None:
    factory = billing_db[1]
    service.apply_batch(course(5, 10.0))
    service.set_course_kind(COURSE, kind="sbrt", reason="one", principal=BILLER, resource="/k")
    events = len(published(factory))
    other = Principal(user="al.admin", roles=frozenset({"admin"}))
    service.set_course_kind(COURSE, kind="sbrt", reason="two", principal=other, resource="/k")
    assert len(published(factory)) == events
    with factory() as session:
        (kind,) = session.scalars(select(CourseKindRow)).all()
        assert (kind.kind, kind.set_by, kind.reason) == ("sbrt", "bea.biller", "one")
        writes = session.scalars(select(AuditLog.user).where(AuditLog.action == "write")).all()
    assert writes == ["bea.biller", "al.admin"]  # both requests audited


def test_a_regrouping_that_keeps_the_course_id_keeps_the_kind(
    service: BillingService, billing_db: Db
) -> None:
    factory = billing_db[1]
    service.apply_batch(course(3, 10.0))
    service.set_course_kind(COURSE, kind="sbrt", reason=None, principal=BILLER, resource="/k")
    # A re-plan (PREDECESSOR) joins the course; the course's id (its first plan) stays.
    replan = f"{PLAN_UID}.9"
    service.apply(plan_event(3, 10.0, plan_uid=replan, predecessor=PLAN_UID))
    row = course_row(factory)
    assert set(row.plan_uids) == {PLAN_UID, replan}
    assert (row.kind, row.kind_confirmed) == ("sbrt", "sbrt")
    assert not [c for c in charges(factory) if c["hold_reason"] == "course_kind_unconfirmed"]
    assert [c["cpt"] for c in charges(factory) if c["cpt"] == "77373"] == ["77373"] * 3


def test_an_unknown_course_is_not_found(service: BillingService) -> None:
    with pytest.raises(NotFound):
        service.set_course_kind(
            "course:none", kind="sbrt", reason=None, principal=BILLER, resource="/k"
        )


def test_posted_events_carry_the_hold_reason(service: BillingService, billing_db: Db) -> None:
    factory = billing_db[1]
    service.apply_batch(course(1, 8.0))
    posted = [e.data for e in published(factory) if isinstance(e.data, ChargePosted)]
    assert {p.cpt for p in posted if p.hold_reason == "course_kind_unconfirmed"} == {
        "77407",
        "77387",
        "77431",
    }


# ---------------------------------------------------------------- POST /v1/courses/{id}/kind


def audit(factory: sessionmaker[Session]) -> list[tuple[str, str, str, str | None]]:
    with factory() as session:
        rows = session.scalars(select(AuditLog).order_by(AuditLog.id)).all()
        return [(r.action, r.user, r.resource, r.patient_id) for r in rows]


@pytest.mark.parametrize("role", ["billing", "admin"])
async def test_billing_and_admin_confirm_a_kind(
    client: httpx.AsyncClient,
    service: BillingService,
    auth: Auth,
    factory: sessionmaker[Session],
    role: str,
) -> None:
    service.apply_batch(course(5, 10.0))
    listed = await client.get(f"/v1/courses/{COURSE}", headers=auth(role))
    before = listed.json()
    assert (before["kind"], before["kind_status"], before["kind_confirmed"]) == (
        "conventional",
        "unconfirmed",
        None,
    )
    assert before["kind_candidate"]["suggested"] == "sbrt"
    path = f"/v1/courses/{COURSE}/kind"
    response = await client.post(path, json={"kind": "sbrt"}, headers=auth(role, "sam"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["kind"], body["kind_status"], body["kind_confirmed"]) == (
        "sbrt",
        "confirmed",
        "sbrt",
    )
    assert audit(factory)[-1] == ("write", "sam", path, PID)
    again = await client.post(path, json={"kind": "sbrt"}, headers=auth(role, "sam"))
    assert again.status_code == 200 and again.json() == body
    items = (await client.get("/v1/charges", params={"patient_id": PID}, headers=auth())).json()
    assert {"77373", "77435"} <= {i["cpt"] for i in items["items"]}


@pytest.mark.parametrize("role", ["physician", "therapist", "physicist"])
async def test_clinical_roles_cannot_set_a_kind(
    client: httpx.AsyncClient,
    service: BillingService,
    auth: Auth,
    factory: sessionmaker[Session],
    role: str,
) -> None:
    service.apply_batch(course(5, 10.0))
    before = audit(factory)
    response = await client.post(
        f"/v1/courses/{COURSE}/kind", json={"kind": "sbrt"}, headers=auth(role)
    )
    assert response.status_code == 403
    assert audit(factory) == before
    with factory() as session:
        assert not session.scalars(select(CourseKindRow)).all()


async def test_a_kind_needs_a_token(client: httpx.AsyncClient) -> None:
    response = await client.post(f"/v1/courses/{COURSE}/kind", json={"kind": "sbrt"})
    assert response.status_code == 401


@pytest.mark.parametrize(
    "body", [{"kind": "hypofractionated"}, {"kind": "SBRT"}, {}, {"kind": None}]
)
async def test_a_kind_that_is_not_one_is_422(
    client: httpx.AsyncClient,
    service: BillingService,
    auth: Auth,
    factory: sessionmaker[Session],
    body: dict[str, Any],
) -> None:
    service.apply_batch(course(5, 10.0))
    before = audit(factory)
    response = await client.post(f"/v1/courses/{COURSE}/kind", json=body, headers=auth())
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert audit(factory) == before


async def test_the_kind_of_an_unknown_course_is_404(
    client: httpx.AsyncClient, auth: Auth, factory: sessionmaker[Session]
) -> None:
    response = await client.post(
        "/v1/courses/course:none/kind", json={"kind": "sbrt"}, headers=auth()
    )
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    assert audit(factory) == []
