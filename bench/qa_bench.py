"""QA tracker benchmark: replay a busy department's DICOM events through the consumer's
handler, then time the weekly summary over that data.

    python -m bench.qa_bench [--days 20] [--linacs 10] [--per-linac 60]

The issue's workload is a year (about 250 treatment days) of 10 linacs x 60 fractions a day,
each imaged: ``--days 250``. Each fraction is three events (CBCT series, registration,
treatment record); each patient a plan event and 25 consecutive business days of treatment.
Events are applied in the department's order, in batches of the consumer's fetch size, with
``QaService.apply_batch`` (what the durable consumer calls for each fetched batch, minus NATS),
on SQLite under a temp dir, or on PostgreSQL when ``RTOPS_DATABASE_URL`` is set.
Targets (issue 4): >= 1,000 events/s per replica; weekly summary p95 < 200 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from services.qa_tracker.app import api_app
from services.qa_tracker.consumer import CONSUMER_BATCH
from services.qa_tracker.service import QaService
from services.qa_tracker.settings import QaSettings
from services.qa_tracker.store import Outbox, ProcessedEvent
from shared.auth import issue_dev_token
from shared.events import CloudEvent
from shared.outbox import prune_inbox, utcnow
from tests.events import Clock, at, imaged_day, plan_event
from tests.qa_tracker.factories import make_service, qa_database

FRACTIONS_PER_COURSE = 25
MONTH = 20  # treatment days: the first and last month's medians show whether the rate holds


def business_days(start: date, count: int) -> list[date]:
    days, day = [], start
    while len(days) < count:
        if day.weekday() < 5:
            days.append(day)
        day += timedelta(days=1)
    return days


def department_day(index: int, day: date, linacs: int, per_linac: int) -> Iterator[CloudEvent]:
    """One treatment day of the department, in the order it sends its events: by time of
    day, linacs interleaved. Slot s of each linac starts a new 25-fraction course every 25
    treatment days, offset by s, so that courses end and start on different days."""
    timed: list[tuple[str, int, int, CloudEvent]] = []
    for linac in range(linacs):
        machine = f"TrueBeam{linac}"
        for slot in range(per_linac):
            offset = slot % FRACTIONS_PER_COURSE
            course_start = (index + offset) // FRACTIONS_PER_COURSE * FRACTIONS_PER_COURSE - offset
            number = index - course_start + 1
            pid = f"L{linac}-S{slot}-C{course_start}"
            plan_uid = f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, pid).int}"
            if number == 1 or index == 0:  # the plan arrives before its first fraction
                timed.append(("00:00", linac, 0, plan_event(plan_uid=plan_uid, pid=pid)))
            hhmm = f"{7 + slot // 6:02}:{(slot % 6) * 10:02}"
            for order, event in enumerate(imaged_day(number, day.isoformat(), hhmm, pid=pid)):
                data = event.data
                update: dict[str, object] = {"machine": machine}
                if getattr(data, "plan_uid", None) is not None:
                    update["plan_uid"] = plan_uid
                if hasattr(data, "machine"):
                    data = data.model_copy(update=update)
                timed.append((hhmm, linac, order + 1, event.model_copy(update={"data": data})))
    timed.sort(key=lambda item: item[:3])
    return (event for *_, event in timed)


def department(days: int, linacs: int, per_linac: int) -> Iterator[list[CloudEvent]]:
    """The department's events, a treatment day at a time (a year does not fit in memory
    as one list)."""
    for index, day in enumerate(business_days(date(2026, 1, 5), days)):
        yield list(department_day(index, day, linacs, per_linac))


class Housekeeping:
    """What runs beside the consumer in production, on the replay's clock: the outbox relay
    publishes each event within seconds and prunes sent rows after 7 days
    (``OutboxRelay.keep_sent``), and the inbox forgets ids after 30 days (``INBOX_KEEP``).
    Without it the replay's outbox and inbox would grow for ever, which no deployment does."""

    RELAY_DAYS, INBOX_DAYS = 5, 21  # treatment days in 7 and 30 calendar days

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self._factory = factory
        self._outbox_ends: list[int] = []  # the outbox's last id at each day's end
        self._day_starts: list[datetime] = []  # real time at each day's end (processed_at)

    def end_of_day(self) -> float:
        start = time.perf_counter()
        with self._factory.begin() as session:
            last = session.scalar(select(func.max(Outbox.id))) or 0
            session.execute(update(Outbox).where(Outbox.sent_at.is_(None)).values(sent_at=utcnow()))
            if len(self._outbox_ends) >= self.RELAY_DAYS:
                cutoff = self._outbox_ends[-self.RELAY_DAYS]
                session.execute(delete(Outbox).where(Outbox.id <= cutoff))
        self._outbox_ends.append(last)
        self._day_starts.append(utcnow())
        if len(self._day_starts) > self.INBOX_DAYS:
            cutoff_time = self._day_starts[-self.INBOX_DAYS - 1]
            prune_inbox(self._factory, ProcessedEvent, keep=timedelta(0), now=cutoff_time)
        return time.perf_counter() - start


def analyze(factory: sessionmaker[Session]) -> None:
    """What autovacuum does in the background on a production PostgreSQL (the benchmark
    machine runs with autovacuum off): fresh planner statistics as the tables grow."""
    with factory() as session:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("ANALYZE"))
            session.commit()


@dataclass
class Replay:
    events: int  # events applied
    elapsed: float  # seconds in apply_batch (the timed part)
    daily: list[float]  # events/s of each treatment day: the run's spread
    housekeeping: float  # seconds of housekeeping, outside the timed part


def replay(
    service: QaService,
    factory: sessionmaker[Session],
    days: int,
    linacs: int,
    per_linac: int,
    batch: int = CONSUMER_BATCH,
) -> Replay:
    """The department's ``days`` applied through ``service.apply_batch`` in batches of
    ``batch``, with the housekeeping between days and ANALYZE as the rows grow (the data set
    of this benchmark; ``bench.pages_bench`` builds its pages' data with it too)."""
    done = Replay(0, 0.0, [], 0.0)
    since_analyze = 0
    housekept = Housekeeping(factory)
    for events in department(days, linacs, per_linac):
        start = time.perf_counter()
        for first in range(0, len(events), batch):
            service.apply_batch(events[first : first + batch])
        took = time.perf_counter() - start
        done.daily.append(len(events) / took)
        done.elapsed += took
        done.events += len(events)
        done.housekeeping += housekept.end_of_day()
        since_analyze += len(events)
        if since_analyze >= done.events / 10:  # autovacuum's default: 10 % of rows changed
            analyze(factory)
            since_analyze = 0
    return done


async def summary_latency(app: object, token: str, week: str, calls: int) -> list[float]:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    times = []
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        for _ in range(calls):
            start = time.perf_counter()
            response = await client.get(
                "/v1/compliance/weekly",
                params={"week": week},
                headers={"Authorization": f"Bearer {token}"},
            )
            times.append((time.perf_counter() - start) * 1000)
            response.raise_for_status()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=int, default=20)
    parser.add_argument("--linacs", type=int, default=10)
    parser.add_argument("--per-linac", type=int, default=60)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument(
        "--batch", type=int, default=CONSUMER_BATCH, help="events per transaction (fetch size)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        base = {"var_dir": Path(tmp), "database_schema_prefix": f"bench_{uuid.uuid4().hex[:8]}_"}
        with qa_database(base) as (settings, factory):
            service = make_service(settings, factory, Clock(at("2026-12-31", "12:00")))
            replayed = replay(service, factory, args.days, args.linacs, args.per_linac, args.batch)
            count, elapsed, daily = replayed.events, replayed.elapsed, replayed.daily
            housekeeping = replayed.housekeeping
            rate = count / elapsed
            print(
                f"{count} events ({args.days} days, {args.linacs} linacs x {args.per_linac} "
                f"fractions a day, {args.batch} per batch)"
            )
            app = api_app(settings, factory, service)
            token = issue_dev_token(
                QaSettings(var_dir=Path(tmp)), user="bench", roles=["physicist"]
            )
            week = date(2026, 1, 5) + timedelta(days=7 * max(0, args.days // 5 - 1))
            iso = week.isocalendar()
            times = asyncio.run(
                summary_latency(app, token, f"{iso.year}-W{iso.week:02d}", args.calls)
            )
    backend = "PostgreSQL" if settings.database_url else "SQLite"
    p95 = statistics.quantiles(times, n=20)[-1] if len(times) >= 2 else times[0]
    print(
        f"backend {backend}: {rate:,.0f} events/s over {elapsed:.1f} s "
        f"(target >= 1,000/s per replica)"
    )
    tenth = max(1, len(daily) // 10)
    print(
        f"per treatment day: median {statistics.median(daily):,.0f} events/s, slowest day "
        f"{min(daily):,.0f}; median of the first {tenth} days "
        f"{statistics.median(daily[:tenth]):,.0f}, of the last {tenth} "
        f"{statistics.median(daily[-tenth:]):,.0f}"
    )
    print(
        f"housekeeping outside the timed part (the relay's publish-and-prune, the inbox prune): "
        f"{housekeeping:.1f} s"
    )
    month = min(MONTH, len(daily))
    first, last = statistics.median(daily[:month]), statistics.median(daily[-month:])
    print(
        f"first month ({month} treatment days): median {first:,.0f} events/s; last month "
        f"{last:,.0f}; last/first {last / first:.2f} (target >= 0.85)"
    )
    print(
        f"weekly summary: p50 {statistics.median(times):.1f} ms, p95 {p95:.1f} ms over "
        f"{len(times)} calls (target p95 < 200 ms)"
    )


if __name__ == "__main__":
    main()
