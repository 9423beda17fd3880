"""The service kit: the consumer runner (several subjects, error mapping), periodic tasks, the
runtime bundle, ``emit``, keyset pagination, role groups and the clinic calendar."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import structlog.testing
from fastapi import APIRouter, FastAPI
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ValidationError
from sqlalchemy import Integer, String, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from shared import jetstream
from shared.calendar import CalendarSpec, build_calendar, clinic_calendar, iso_week_of
from shared.consumer import ConsumerMetrics, Subscription, run_consumer
from shared.db import UtcDateTime, new_metadata
from shared.errors import NotFound, Poison, RuleViolation, TransientError, is_permanent
from shared.events import CloudEvent, InvalidEvent, Patient, SimCompleted, envelope
from shared.jetstream import ConsumerPolicy, NatsLink, publish, subject_for
from shared.outbox import emit, emit_many, prune_inbox
from shared.pagination import decode_cursor, encode_cursor, page_of
from shared.params import TimeRangeDep
from shared.periodic import every
from shared.runtime import Runtime
from shared.settings import RtopsSettings
from shared.tables import kit_tables
from shared.web import create_app
from tests.shared.test_jetstream import FAST, dead_letter, eventually, plan_event, running_link


class Base(DeclarativeBase):
    metadata = new_metadata()


class Visit(Base):
    __tablename__ = "visit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    who: Mapped[str] = mapped_column(String(20))


TABLES = kit_tables(Base)


@pytest.fixture
def runtime(settings: RtopsSettings) -> Iterator[Runtime]:
    rt = Runtime.create("kit_test", settings, TABLES)
    from shared.db import drop_schema, ensure_schema

    ensure_schema(rt.engine, settings, "kit_test")
    Base.metadata.create_all(rt.engine)
    yield rt
    drop_schema(rt.engine, settings, "kit_test")
    rt.close()


def sim(n: int) -> CloudEvent:
    return envelope(
        SimCompleted(
            patient=Patient(id=f"P{n}"),
            request_id=f"r{n}",
            booking_id=f"b{n}",
            service_date=date(2026, 11, 24),
            complexity="simple",
        ),
        source="urn:rtops:test",
    )


# ---------------------------------------------------------------- consumer runner


@pytest.mark.parametrize("multi_filter", [True, False], ids=["one-durable", "per-subject"])
async def test_a_subscription_reads_its_subjects_and_never_the_dead_letters(
    js: JetStreamContext,
    settings: RtopsSettings,
    multi_filter: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if multi_filter and not jetstream._multi_filter(js):
        pytest.skip("this NATS server predates multi-filter consumers (2.10)")
    monkeypatch.setattr(jetstream, "_multi_filter", lambda _js: multi_filter)
    wanted = [plan_event(1), sim(1)]
    for event in wanted:
        await publish(js, subject_for(settings, event.type), event.to_json(), event.id)
    other = plan_event(2)  # a dead letter of the same event: never fed back to a service
    await publish(js, f"{settings.subject_prefix}.deadletter.other", other.to_json(), "dl-1")
    seen: list[str] = []
    stop = asyncio.Event()
    registry = CollectorRegistry()
    async with running_link(settings) as link:
        task = asyncio.create_task(
            run_consumer(
                link,
                Subscription("kit", ("rtops.dicom.>", "rtops.scheduler.sim.completed")),
                apply=lambda e: seen.append(e.id),
                policy=ConsumerPolicy(stream=settings.stream_name, **FAST),
                stop=stop,
                metrics=ConsumerMetrics(registry),
            )
        )
        await eventually(lambda: len(seen) >= 2, message="both subjects")
        await asyncio.sleep(0.5)  # time enough for a wrongly filtered dead letter to arrive
        stop.set()
        await asyncio.wait_for(task, 10)
        assert link.nc is not None
        await link.nc.close()
    assert sorted(seen) == sorted(e.id for e in wanted)
    durables = {s.labels["durable"] for s in _samples(registry, "rtops_consumer_lag")}
    assert len(durables) == (1 if multi_filter else 2)
    for subject in ("dicom.plan.received", "scheduler.sim.completed"):
        assert _value(registry, "rtops_consumer_events_total", subject=subject) == 1


def _samples(registry: CollectorRegistry, name: str) -> list[Any]:
    return [s for m in registry.collect() for s in m.samples if s.name == name]


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in _samples(registry, name)
        if all(s.labels.get(k) == v for k, v in labels.items())
    )


async def test_an_idle_consumer_and_an_orderly_stop_log_no_warnings(
    js: JetStreamContext, settings: RtopsSettings
) -> None:
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        link = NatsLink(settings, name="quiet")
        runner = asyncio.create_task(link.run())
        await asyncio.wait_for(link.ready.wait(), 10)
        task = asyncio.create_task(
            run_consumer(
                link,
                Subscription("quiet", ("rtops.dicom.>",)),
                apply=lambda e: None,
                policy=ConsumerPolicy(stream=settings.stream_name, fetch_timeout_s=0.1),
                stop=stop,
            )
        )
        await asyncio.sleep(1.5)  # about fifteen empty fetches
        stop.set()
        await asyncio.wait_for(task, 10)
        runner.cancel()
        await link.close()
    noisy = [e for e in logs if e["log_level"] in ("warning", "error")]
    assert noisy == []


@pytest.mark.parametrize("subject", [">", "rtops.>", "rtops.deadletter.qa_tracker"])
def test_a_subscription_refuses_filters_that_catch_dead_letters(subject: str) -> None:
    with pytest.raises(ValueError, match="dead letters"):
        Subscription("x", (subject,))


async def test_a_rule_violation_is_dead_lettered_at_once(
    js: JetStreamContext, settings: RtopsSettings
) -> None:
    calls: list[str] = []

    def apply(event: CloudEvent) -> None:
        calls.append(event.id)
        raise RuleViolation("the plan names a machine the clinic does not have")

    event = plan_event(7)
    await publish(js, subject_for(settings, event.type), event.to_json(), event.id)
    stop = asyncio.Event()
    registry = CollectorRegistry()
    async with running_link(settings) as link:
        task = asyncio.create_task(
            run_consumer(
                link,
                Subscription("strict", ("rtops.dicom.>",)),
                metrics=ConsumerMetrics(registry),
                apply=apply,
                # Six deliveries allowed: a retry would show as a second call.
                policy=ConsumerPolicy(stream=settings.stream_name, **{**FAST, "max_deliver": 6}),
                stop=stop,
            )
        )
        dead = await eventually(lambda: dead_letter(js, settings, "strict"), message="dead")
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.wait_for(task, 10)
        assert link.nc is not None
        await link.nc.close()
    assert calls == [event.id]
    assert dead.headers is not None
    assert "machine the clinic does not have" in dead.headers["Rtops-Dead-Letter-Reason"]
    assert _value(registry, "rtops_consumer_events_total", outcome="dead_lettered") == 1
    assert _value(registry, "rtops_consumer_events_total", outcome="retried") == 0


class _Strict(BaseModel):
    n: int


def _validation_error() -> ValidationError:
    try:
        _Strict.model_validate({"n": "x"})
    except ValidationError as exc:
        return exc
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    ("error", "permanent"),
    [
        (InvalidEvent("bad"), True),
        (Poison("never"), True),
        (RuleViolation("rule"), True),
        (_validation_error(), True),
        (NotFound("gone"), False),
        (TransientError("db away"), False),
        (AttributeError("a bug in rtops"), False),
        (ConnectionError("broker away"), False),
    ],
)
def test_one_mapping_decides_retry_or_dead_letter(error: Exception, permanent: bool) -> None:
    assert is_permanent(error) is permanent


# ---------------------------------------------------------------- periodic


async def test_a_failing_periodic_task_is_logged_by_name_and_keeps_running() -> None:
    rounds: list[int] = []

    def work() -> None:
        rounds.append(len(rounds))
        if len(rounds) == 1:
            raise RuntimeError("first round fails")

    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(every(0.01, "billing nightly close", work))
        await eventually(lambda: len(rounds) >= 3, message="three rounds")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    failures = [e for e in logs if "periodic task failed" in e["event"]]
    assert len(failures) == 1
    assert failures[0]["task"] == "billing nightly close"
    assert failures[0]["log_level"] == "error"


# ---------------------------------------------------------------- runtime and emit


async def test_a_runtime_app_without_background_serves_requests_only(runtime: Runtime) -> None:
    app = runtime.app(title="kit", routers=[], tasks=None)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://kit") as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
    # Nothing started the NATS link: readiness says so, and the database is fine.
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"database": "ok", "nats": "fail"}
    assert runtime.link.nc is None


def test_emit_queues_in_the_callers_transaction_with_the_services_source(
    runtime: Runtime,
) -> None:
    outbox = runtime.tables.outbox
    with runtime.factory.begin() as session:
        assert emit(session, sim(1).data, subject="P1")
        assert not emit(session, sim(1).data)  # the same event id: queued once
    try:
        with runtime.factory.begin() as session:
            emit(session, sim(2).data)
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    with runtime.factory() as session:
        rows = session.scalars(select(outbox)).all()  # type: ignore[call-overload]
    assert len(rows) == 1
    assert b'"source":"rtops/kit_test"' in rows[0].body


def test_emit_many_queues_each_id_once(runtime: Runtime) -> None:
    outbox = runtime.tables.outbox
    with runtime.factory.begin() as session:
        emit_many(session, [(sim(1).data, "P1"), (sim(2).data, None)])
    with runtime.factory.begin() as session:  # a replayed batch: the same ids are skipped
        emit_many(session, [(sim(2).data, None), (sim(3).data, "P3")])
        emit_many(session, [])
    with runtime.factory() as session:
        rows = session.scalars(select(outbox).order_by(outbox.id)).all()  # type: ignore[attr-defined]
    assert [r.event_id for r in rows] == [sim(n).id for n in (1, 2, 3)]


def test_the_inbox_forgets_ids_older_than_it_keeps(runtime: Runtime) -> None:
    inbox = runtime.tables.processed_event
    now = datetime(2026, 11, 29, 12, tzinfo=UTC)
    with runtime.factory.begin() as session:
        session.add_all(
            inbox(consumer="c", event_id=f"e{days}", processed_at=now - timedelta(days=days))  # type: ignore[call-arg]
            for days in (0, 29, 31, 400)
        )
    assert prune_inbox(runtime.factory, inbox, keep=timedelta(days=30), now=now) == 2
    with runtime.factory() as session:
        kept = set(session.scalars(select(inbox.event_id)))  # type: ignore[attr-defined]
    assert kept == {"e0", "e29"}


def test_emit_needs_a_session_from_a_runtime(settings: RtopsSettings) -> None:
    with Session() as session, pytest.raises(RuntimeError, match="no outbox"):
        emit(session, sim(1).data)


# ---------------------------------------------------------------- pagination


def test_cursors_round_trip() -> None:
    when = datetime(2026, 11, 24, 9, 30, tzinfo=ZoneInfo("America/New_York"))
    assert decode_cursor(encode_cursor([when, 42]), [datetime, int]) == [when, 42]
    assert decode_cursor(encode_cursor(["abc", 1]), [str, int]) == ["abc", 1]


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "not base64!",
        encode_cursor([1]),
        encode_cursor(["2026-11-24", 1]),
        encode_cursor([1, 2]),
        encode_cursor([{"t": "2026-11-24T09:00:00"}, 1]),  # no offset
        encode_cursor([{"t": "2026-11-24T09:00:00+00:00"}, 2**70]),
        encode_cursor([{"t": "2026-11-24T09:00:00+00:00"}, True]),
    ],
)
def test_a_cursor_the_api_did_not_return_is_a_rule_violation(cursor: str) -> None:
    with pytest.raises(RuleViolation, match="cursor"):
        decode_cursor(cursor, [datetime, int])


def test_pages_cover_every_row_once_newest_first(runtime: Runtime) -> None:
    start = datetime(2026, 11, 24, tzinfo=UTC)
    with runtime.factory.begin() as session:
        # Ties on the time: the id breaks them.
        session.add_all(
            Visit(id=i, at=start + timedelta(minutes=i // 3), who=f"v{i}") for i in range(1, 23)
        )
    seen: list[int] = []
    cursor = None
    with runtime.factory() as session:
        while True:
            page, cursor = page_of(
                session, select(Visit), [Visit.at, Visit.id], cursor=cursor, limit=5
            )
            seen += [v.id for v in page]
            if cursor is None:
                break
        total = session.scalar(select(func.count()).select_from(Visit))
    assert seen == sorted(range(1, 23), reverse=True)
    assert total == 22


# ---------------------------------------------------------------- calendar


def test_the_clinic_calendar_comes_from_the_shared_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "RTOPS_CLINIC_CALENDAR", '{"closed_days": ["2026-12-24"], "holidays_subdivision": "NY"}'
    )
    monkeypatch.setenv("RTOPS_CLINIC_TIMEZONE", "America/Chicago")
    calendar = clinic_calendar(RtopsSettings())
    assert calendar.zone == ZoneInfo("America/Chicago")
    assert not calendar.is_business_day(date(2026, 12, 24))  # the clinic's closure
    assert not calendar.is_business_day(date(2026, 12, 25))  # a public holiday
    assert not calendar.is_business_day(date(2026, 11, 28))  # a Saturday
    assert calendar.next_business_day(date(2026, 12, 23)) == date(2026, 12, 28)
    assert calendar.business_days(date(2026, 12, 21), date(2026, 12, 28)) == [
        date(2026, 12, 21),
        date(2026, 12, 22),
        date(2026, 12, 23),
    ]


def test_a_calendar_without_public_holidays_and_a_six_day_week() -> None:
    spec = CalendarSpec(holidays_country=None, workdays=["mon", "tue", "wed", "thu", "fri", "sat"])
    calendar = build_calendar(spec, zone="UTC")
    assert calendar.is_business_day(date(2026, 12, 25))
    assert calendar.is_business_day(date(2026, 11, 28))
    assert not calendar.is_business_day(date(2026, 11, 29))
    friday = datetime(2026, 11, 27, 10, tzinfo=UTC)
    assert calendar.add_business_hours(friday, 24) == datetime(2026, 11, 28, 10, tzinfo=UTC)
    assert iso_week_of(date(2026, 11, 29)) == "2026-W48"


def test_calendar_settings_are_validated() -> None:
    with pytest.raises(ValidationError):
        RtopsSettings(clinic_calendar={"workdays": ["monday"]})  # type: ignore[arg-type]


def test_kit_tables_give_each_service_its_own_outbox_inbox_and_audit() -> None:
    class Other(DeclarativeBase):
        metadata = new_metadata()

    mine, theirs = TABLES, kit_tables(Other)
    assert {t.__tablename__ for t in mine} == {"outbox", "processed_event", "audit_log"}
    assert set(Base.metadata.tables) >= {"outbox", "processed_event", "audit_log", "visit"}
    assert mine.outbox.__table__ is not theirs.outbox.__table__  # type: ignore[attr-defined]


def test_role_groups_are_real_roles() -> None:
    from shared import auth
    from shared.settings import ROLES

    for group in (auth.CLINICAL_STAFF, auth.PHYSICS, auth.BILLING_STAFF, auth.SCHEDULING_STAFF):
        assert set(group) <= set(ROLES)
    assert "billing" not in auth.CLINICAL_STAFF  # billing staff read charges, not images


# ---------------------------------------------------------------- query parameters


@pytest.fixture
def time_app(settings: RtopsSettings) -> FastAPI:
    router = APIRouter()

    @router.get("/things")
    def things(when: TimeRangeDep, name: str | None = None) -> dict[str, str | None]:
        return {
            "from": when.start.isoformat() if when.start else None,
            "to": when.end.isoformat() if when.end else None,
        }

    chicago = settings.model_copy(update={"clinic_timezone": "America/Chicago"})
    return create_app(
        title="t", settings=chicago, registry=CollectorRegistry(), readiness={}, routers=[router]
    )


@pytest.mark.parametrize(
    ("given", "meant"),
    [
        ("2026-11-24", "2026-11-24T00:00:00-06:00"),  # a date: midnight, clinic time
        ("2026-11-24T09:30", "2026-11-24T09:30:00-06:00"),  # naive: clinic time
        ("2026-11-24T09:30:00Z", "2026-11-24T09:30:00+00:00"),
        ("2026-07-01T09:30:00-04:00", "2026-07-01T09:30:00-04:00"),
    ],
)
async def test_times_in_queries_are_clinic_time_unless_they_say_otherwise(
    time_app: FastAPI, given: str, meant: str
) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=time_app), base_url="http://t"
    ) as client:
        body = (await client.get("/things", params={"from": given, "to": given})).json()
    assert body == {"from": meant, "to": meant}


@pytest.mark.parametrize(
    ("params", "field"),
    [({"from": "yesterday"}, "from"), ({"to": "2026-13-01"}, "to"), ({"nmae": "x"}, "nmae")],
)
async def test_bad_or_unknown_query_parameters_are_422_problems(
    time_app: FastAPI, params: dict[str, str], field: str
) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=time_app), base_url="http://t"
    ) as client:
        response = await client.get("/things", params=params)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    (error,) = response.json()["errors"]
    assert error["loc"] == ["query", field]
    if field == "nmae":
        assert "this endpoint takes: from, name, to" in error["msg"]
    else:
        assert "clinic's zone" in error["msg"]


def test_log_lines_from_any_thread_name_the_service(capsys: pytest.CaptureFixture[str]) -> None:
    import json
    import threading

    from shared.logging import configure_logging

    configure_logging(service="scp_listener")
    thread = threading.Thread(target=lambda: structlog.get_logger("t").info("stored"))
    thread.start()
    thread.join()
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["event"] == "stored" and line["service"] == "scp_listener"
