"""Scheduler benchmark (issue 13): booking latency with a year of appointments in the database,
and the batch mode on 200 open requests, on SQLite and PostgreSQL.

    python -m bench.scheduler_bench [--days 365] [--rooms 3] [--bookings 200]
                                    [--requests 200] [--backends sqlite,postgresql]

1. **A year of appointments**: ``--rooms`` CT simulator rooms (07:30-17:00 on business days),
   three therapists per room on shift all day, two urologists with two half-day blocks a week;
   every business day of the past ``--days`` booked back to back (30-minute simulations), and
   the next two weeks three quarters full. Written with bulk inserts (bookings, their claims).
2. **Booking latency**: ``--bookings`` routine requests (a quarter with a mask, a tenth with
   4D-CT, a tenth with SpaceOAR) booked one by one through ``POST /v1/simulation-requests/{id}/
   book`` (httpx on the ASGI app, nothing in the background): p50 / p95 / max per booking.
3. **Batch**: in a database of its own with the same resources and no bookings yet,
   ``--requests`` ready requests (a fifth urgent, a twentieth emergent; a quarter with a mask, a
   tenth 4D-CT, a tenth SpaceOAR), then the batch's report (``SchedulerService.batch``, what
   ``POST /v1/batch`` runs): CP-SAT's seconds and urgency-weighted wait beside the
   one-at-a-time result on the same queue.

SQLite in a temp dir; PostgreSQL (``RTOPS_DATABASE_URL``) in a schema of the run's own,
dropped after. Targets: booking p95 < 100 ms on both backends; batch < 30 s and no worse than
one-at-a-time. A missed target prints MISS; the exit status stays 0.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert

from services.scheduler.app import SERVICE, TABLES, create_app
from services.scheduler.schemas import (
    DeviceTypeIn,
    ProceduralistIn,
    RequestIn,
    RoomIn,
    TherapistIn,
    WindowIn,
)
from services.scheduler.service import SchedulerService
from services.scheduler.settings import SchedulerSettings
from services.scheduler.store import BookingRow, ClaimRow, RequestRow
from shared.auth import Principal, issue_dev_token
from shared.calendar import clinic_calendar
from shared.db import drop_schema, make_engine, migrate, session_factory
from shared.outbox import outbox_info
from shared.runtime import Runtime

WHO = Principal(user="bench", roles=frozenset({"admin"}))
DAYS = ("mon", "tue", "wed", "thu", "fri")
SLOT = timedelta(minutes=30)


def resources(service: SchedulerService, rooms: int) -> None:
    for r in range(rooms):
        service.put_room(
            RoomIn(
                id=f"ct{r}",
                name=f"CT {r}",
                machine=f"CTSim{r}",
                hours=[WindowIn(day=d, start=dtime(7, 30), end=dtime(17, 0)) for d in DAYS],  # type: ignore[arg-type]
            ),
            WHO,
        )
        for t in range(3):
            service.put_therapist(
                TherapistIn(
                    id=f"t{r}{t}",
                    name=f"Therapist {r}{t}",
                    shifts=[WindowIn(day=d, start=dtime(7, 0), end=dtime(17, 30)) for d in DAYS],  # type: ignore[arg-type]
                ),
                WHO,
            )
    for u, (a, b) in enumerate([("tue", "thu"), ("mon", "wed")]):
        service.put_proceduralist(
            ProceduralistIn(
                id=f"uro{u}",
                name=f"Urologist {u}",
                blocks=[
                    WindowIn(day=a, start=dtime(8, 0), end=dtime(12, 0)),  # type: ignore[arg-type]
                    WindowIn(day=b, start=dtime(13, 0), end=dtime(17, 0)),  # type: ignore[arg-type]
                ],
            ),
            WHO,
        )
    for device, fabricated in (("mask", True), ("vacuum_bag", True), ("knee_support", False)):
        service.put_device_type(
            DeviceTypeIn(id=device, name=device, stock=100_000, fabricated=fabricated), WHO
        )


def a_year(service: SchedulerService, factory: Any, *, days: int, rooms: int, now: datetime) -> int:
    """Bookings back to back on every business day of the past ``days``, the next 14 days three
    quarters full: requests, bookings and claims by bulk insert."""
    cal = service.calendar
    rng = random.Random(1)
    today = cal.local_date(now)
    requests: list[dict[str, Any]] = []
    bookings: list[dict[str, Any]] = []
    claims: list[dict[str, Any]] = []
    for day in cal.business_days(today - timedelta(days=days), today + timedelta(days=15)):
        future = day >= today
        for r in range(rooms):
            start = datetime.combine(day, dtime(7, 30), tzinfo=cal.zone)
            while start + SLOT <= datetime.combine(day, dtime(17, 0), tzinfo=cal.zone):
                if future and (rng.random() > 0.75 or start < now):
                    start += SLOT
                    continue
                rid, bid = str(uuid.uuid4()), str(uuid.uuid4())
                pid = f"Y-{len(requests)}"
                end = start + SLOT
                at = start - timedelta(days=5)
                status = "booked" if future else "completed"
                requests.append(
                    dict(
                        id=rid,
                        patient_id=pid,
                        patient_name="Year^Patient",
                        referring_physician="R",
                        treating_physician="T",
                        site="breast",
                        urgency="routine",
                        earliest_date=None,
                        requirements={},
                        notes=None,
                        status=status,
                        blocking=[],
                        created_at=at,
                        created_by="bench",
                        updated_at=at,
                        cancel_reason=None,
                    )
                )
                therapists = [f"t{r}{(len(bookings) + k) % 3}" for k in range(2)]
                bookings.append(
                    dict(
                        id=bid,
                        request_id=rid,
                        patient_id=pid,
                        room_id=f"ct{r}",
                        start=start,
                        end=end,
                        therapists=therapists,
                        proceduralist_id=None,
                        procedure_start=None,
                        procedure_end=None,
                        devices=[],
                        status=status,
                        reason=None,
                        revision=0 if future else 1,
                        performed_at=None,
                        study_instance_uid=None,
                        series_instance_uids=[],
                        created_at=at,
                        created_by="bench",
                        updated_at=at,
                    )
                )
                for resource in (f"room:ct{r}", *(f"therapist:{t}" for t in therapists)):
                    claims.append(
                        dict(booking_id=bid, resource=resource, start=start, end=end, active=True)
                    )
                start = end
    with factory.begin() as session:
        for rows, table in ((requests, RequestRow), (bookings, BookingRow), (claims, ClaimRow)):
            for i in range(0, len(rows), 5000):
                session.execute(insert(table), rows[i : i + 5000])
    return len(bookings)


def new_requests(service: SchedulerService, n: int, seed: int, *, urgent: bool) -> list[str]:
    rng = random.Random(seed)
    ids = []
    for i in range(n):
        roll = rng.random()
        urgency = "routine"
        if urgent:
            urgency = "emergent" if roll < 0.05 else "urgent" if roll < 0.25 else "routine"
        requirements = {
            "immobilization": ["mask"] if rng.random() < 0.25 else [],
            "four_d_ct": rng.random() < 0.1,
            "spaceoar": rng.random() < 0.1,
        }
        body = RequestIn.model_validate(
            {
                "patient_id": f"N-{seed}-{i}",
                "patient_name": "New^Patient",
                "referring_physician": "R",
                "treating_physician": "T",
                "site": "prostate" if requirements["spaceoar"] else "breast",
                "urgency": urgency,
                "requirements": requirements,
            }
        )
        ids.append(service.create_request(body, WHO).id)
    return ids


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def database(backend: str, tag: str) -> tuple[SchedulerSettings, Any, SchedulerService]:
    """A migrated scheduler database of the run's own (a temp SQLite file, or a schema)."""
    tmp = Path(tempfile.mkdtemp(prefix="sched-bench-"))
    url = os.environ.get("RTOPS_DATABASE_URL") if backend == "postgresql" else None
    settings = SchedulerSettings(
        var_dir=tmp,
        database_url=url,
        database_schema_prefix=f"bench{uuid.uuid4().hex[:8]}{tag}_",
        dev_signing_key="scheduler-bench-key-" + "k" * 32,
        scheduler_resources=None,
    )
    engine = make_engine(settings, SERVICE)
    migrate(engine, settings, SERVICE, Path("services/scheduler/migrations"))
    factory = session_factory(engine, **outbox_info(TABLES.outbox, SERVICE))
    service = SchedulerService(
        factory=factory,
        calendar=clinic_calendar(settings),
        policy=settings.policy(),
        batch_time_limit_s=settings.scheduler_batch_time_limit_s,
        batch_workers=settings.scheduler_batch_workers,
    )
    return settings, engine, service


def latency(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    """A year of appointments, then ``--bookings`` single bookings through the API."""
    settings, engine, service = database(backend, "y")
    try:
        resources(service, args.rooms)
        started = time.perf_counter()
        factory = session_factory(engine)
        year = a_year(service, factory, days=args.days, rooms=args.rooms, now=datetime.now(UTC))
        seeded_s = time.perf_counter() - started
        runtime = Runtime.create(SERVICE, settings, TABLES, engine=engine)
        app = create_app(settings, runtime=runtime, service=service, background=False)
        token = issue_dev_token(settings, user="bench", roles=["scheduler"])
        headers = {"Authorization": f"Bearer {token}"}
        ids = new_requests(service, args.bookings, 1, urgent=False)

        async def book_all() -> list[float]:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                times, cpu = [], []
                for rid in ids:
                    t0, c0 = time.perf_counter(), time.process_time()
                    r = await client.post(
                        f"/v1/simulation-requests/{rid}/book", json={}, headers=headers
                    )
                    times.append(time.perf_counter() - t0)
                    cpu.append(time.process_time() - c0)
                    assert r.status_code == 201, r.text
                return times, cpu

        times, cpu = asyncio.run(book_all())
        load = os.getloadavg()[0]
        return {
            "bookings_in_db": year,
            "seed_s": round(seeded_s, 1),
            "book_p50_ms": round(statistics.median(times) * 1000, 1),
            "book_p95_ms": round(pct(times, 0.95) * 1000, 1),
            "book_max_ms": round(max(times) * 1000, 1),
            "book_cpu_p95_ms": round(pct(cpu, 0.95) * 1000, 1),
            "load": round(load, 1),
        }
    finally:
        drop_schema(engine, settings, SERVICE)
        engine.dispose()


def batch(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    """``--requests`` ready requests on free rooms, then ``POST /v1/batch``'s report."""
    settings, engine, service = database(backend, "b")
    try:
        resources(service, args.rooms)
        new_requests(service, args.requests, 2, urgent=True)
        started = time.perf_counter()
        result = service.batch(commit=False, principal=WHO)
        return {
            "batch_requests": result["requests"],
            "batch_s": round(time.perf_counter() - started, 2),
            "batch_solver": result["solver_status"],
            "batch_used": result["used"] + (f" ({result['note']})" if result["note"] else ""),
            "batch_scheduled": result["batch"]["scheduled"],
            "batch_wait_h": result["batch"]["weighted_wait_hours"],
            "one_at_a_time_scheduled": result["one_at_a_time"]["scheduled"],
            "one_at_a_time_wait_h": result["one_at_a_time"]["weighted_wait_hours"],
        }
    finally:
        drop_schema(engine, settings, SERVICE)
        engine.dispose()


def run_backend(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    return {"backend": backend, **latency(backend, args), **batch(backend, args)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--rooms", type=int, default=3)
    parser.add_argument("--bookings", type=int, default=200)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args(argv)
    for backend in args.backends.split(","):
        if backend == "postgresql" and not os.environ.get("RTOPS_DATABASE_URL"):
            print("postgresql: skipped (set RTOPS_DATABASE_URL)")
            continue
        r = run_backend(backend, args)
        print(
            f"{backend}: {r['bookings_in_db']} bookings in the database (seeded in {r['seed_s']} s)"
        )
        verdict = "ok" if r["book_p95_ms"] < 100 else "MISS"
        print(
            f"  booking: p50 {r['book_p50_ms']} ms, p95 {r['book_p95_ms']} ms, "
            f"max {r['book_max_ms']} ms ({args.bookings} bookings; this process's CPU p95 "
            f"{r['book_cpu_p95_ms']} ms; load average {r['load']} on {os.cpu_count()} cores)"
            f"  [target p95 < 100 ms: {verdict}]"
        )
        verdict = (
            "ok" if r["batch_s"] < 30 and r["batch_wait_h"] <= r["one_at_a_time_wait_h"] else "MISS"
        )
        print(
            f"  batch: {r['batch_requests']} requests in {r['batch_s']} s ({r['batch_solver']}, "
            f"used {r['batch_used']}): {r['batch_scheduled']} scheduled, weighted wait "
            f"{r['batch_wait_h']} h; one at a time: {r['one_at_a_time_scheduled']} scheduled, "
            f"{r['one_at_a_time_wait_h']} h  [target < 30 s and no worse: {verdict}]"
        )


if __name__ == "__main__":
    main()
