"""Documents and billing group plans into courses with one rule (``shared.courses``): the same
events give the same course ids in both services, before and after a staff regrouping that
documents publishes and billing applies. Both services run in-process on databases of their
own (tests may import both; the services never import each other)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from services.billing.store import Course
from services.documents.service import DocumentsService
from services.documents.store import Outbox
from shared.auth import Principal
from shared.events import parse_event
from tests.billing.conftest import billing_database
from tests.billing.conftest import make_service as make_billing
from tests.databases import sub_database
from tests.documents.events import MONDAY, PID, fraction, plan, uid, weekday
from tests.events import Clock, at

STAFF = Principal(user="dora", roles=frozenset({"dosimetrist"}))


def test_the_same_events_give_the_same_courses(
    service: DocumentsService, factory: object, base_settings: dict[str, object]
) -> None:
    events = [
        plan(1),
        plan(2, refs=((1, "PREDECESSOR"),), plan_date=MONDAY + timedelta(days=14)),
        plan(3, label="BOOST", plan_date=MONDAY + timedelta(days=70)),
        plan(9, intent="VERIFICATION", refs=((1, "VERIFIED_PLAN"),)),
        *[fraction(i + 1, weekday(i)) for i in range(5)],
        *[fraction(i + 1, weekday(i + 50), plan_n=3) for i in range(3)],
    ]
    service.apply_batch(events)
    with billing_database(sub_database(base_settings, "billing")) as (settings, billing_factory):
        billing = make_billing(settings, billing_factory, Clock(at("2026-06-30", "12:00")))
        billing.apply_batch(events)

        def billing_courses() -> dict[str, list[str]]:
            with billing_factory() as session:
                return {c.id: sorted(c.plan_uids) for c in session.scalars(select(Course))}

        def documents_courses() -> dict[str, list[str]]:
            out: dict[str, list[str]] = {}
            for v in service.plan_history(PID, principal=STAFF, resource="t"):
                out.setdefault(v["course_id"], []).append(v["plan_uid"])
            return {k: sorted(v) for k, v in out.items()}

        assert (
            documents_courses()
            == billing_courses()
            == {
                f"course:{uid(1)}": [uid(1), uid(2)],
                f"course:{uid(3)}": [uid(3)],
            }
        )
        # Staff say the boost belongs to the first course: documents publishes, billing follows.
        service.regroup([uid(1), uid(2), uid(3)], reason="boost", principal=STAFF, resource="t")
        with factory.begin() as session:  # type: ignore[attr-defined]
            [body] = session.scalars(
                select(Outbox.body).where(Outbox.subject == "rtops.documents.course.regrouped")
            ).all()
        billing.apply(parse_event(body))
        assert (
            documents_courses()
            == billing_courses()
            == {
                f"course:{uid(1)}": [uid(1), uid(2), uid(3)],
            }
        )
