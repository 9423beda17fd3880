"""Billing benchmark (issue 11): charge evaluation for 5,000 courses, reconciliation of a
100,000-line claim file, and events per second through the consumer's handler on SQLite and
PostgreSQL, each beside a reference measured in the same run.

    python -m bench.billing_bench [--courses 5000] [--claim-lines 100000] [--events 30000]
                                  [--rounds 3] [--backends sqlite,postgresql]

1. **Evaluation**: ``evaluate_course`` for each of ``--courses`` courses' facts (a department's
   year: mostly 25-35 fraction VMAT courses, some 3D, palliative, single-fraction, electron and
   SBRT courses; every fraction assessed, weekly notes, a simulation each). Wall time (median of
   ``--rounds``), the tracemalloc peak of one more round, the process's max RSS.
2. **Reconciliation**: a ``--claim-lines`` CSV made from those charges (the first lines by date
   of service, with seeded discrepancies), read with ``parse_claim_file`` and reconciled with
   ``reconcile`` against every expected charge, windowed to the file's period. Same measures.
   Then the same through the service: ``POST /v1/claims`` and ``GET /v1/discrepancies`` (httpx
   on the ASGI app, nothing in the background) over the charges stored in its database.
3. **Consumer**: a busy department's events (plans, simulations, treatment records, the QA
   tracker's two ``fraction.assessed`` revisions per fraction, weekly notes) applied in the
   department's order, in batches of the consumer's fetch size, through
   ``BillingService.apply_batch`` (what the durable consumer calls per fetch, minus NATS), on
   SQLite in a temp dir and on PostgreSQL in a throwaway database (created and dropped).
4. **References** in the same run: a CPU reference (sorting a million tuples) beside 1 and 2,
   the QA tracker's ``apply_batch`` rate (``bench.qa_bench.replay``) on the same database
   server before and after 3. Ratios, not seconds, compare between runs.

Each of 1, 2 and the service path runs in a fresh interpreter, so that its max RSS is its own.
Targets: evaluation and reconciliation each under 5 s and 500 MB; >= 1,000 events/s per
replica. A missed target prints MISS; the exit status stays 0.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import csv
import functools
import io
import multiprocessing
import os
import pickle
import platform
import random
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from shared.collector import tune_collector

NY = ZoneInfo("America/New_York")
AS_OF = date(2026, 12, 31)
TARGET_S, TARGET_MB, TARGET_RATE = 5.0, 500.0, 1000.0
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def mb(n_bytes: float) -> float:
    return n_bytes / 1e6


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # kB on Linux


def quiet() -> None:
    """Logging at WARNING (the service logs every changed patient at INFO)."""
    from shared.logging import configure_logging

    configure_logging("WARNING", "console", service="bench-billing")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# ---------------------------------------------------------------- 1. courses' facts


def weekdays(start: date, n: int) -> list[date]:
    days, day = [], start
    while len(days) < n:
        if day.weekday() < 5:
            days.append(day)
        day += timedelta(days=1)
    return days


def local(day: date, hhmm: str) -> datetime:
    hour, minute = (int(x) for x in hhmm.split(":"))
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=NY).astimezone(UTC)


# name, share, fraction counts, course kind
MIX: tuple[tuple[str, float, tuple[int, ...], str], ...] = (
    ("vmat", 0.72, tuple(range(25, 36)), "conventional"),
    ("vmat+boost", 0.08, (25, 28), "conventional"),
    ("3d", 0.08, (10, 15, 20), "conventional"),
    ("palliative", 0.05, (5, 10), "conventional"),
    ("single", 0.02, (1, 2), "conventional"),
    ("electron", 0.02, (10,), "conventional"),
    ("sbrt", 0.03, (3, 5), "sbrt"),
)


def build_courses(count: int, seed: int = 11) -> list[Any]:
    """``count`` courses of a department's year (starts spread over 2026; 1 in 10 patients
    with a second course), as ``CourseFacts``: what ``assemble`` gives the engine."""
    from services.billing.domain import (
        BeamTechnique,
        CourseFacts,
        DocumentFacts,
        FractionReviewFacts,
        PlanTechnique,
        SimulationFacts,
        SummaryFacts,
        TreatmentRecordFacts,
    )

    rng = random.Random(seed)
    kinds = [m[0] for m in MIX]
    weights = [m[1] for m in MIX]
    spec = {m[0]: m for m in MIX}
    first_monday = date(2026, 1, 5)
    courses = []
    patient = 0
    for index in range(count):
        if index == 0 or rng.random() > 0.1:
            patient += 1
        pid = f"B{patient:06d}"
        name = rng.choices(kinds, weights)[0]
        _, _, options, kind = spec[name]
        n = rng.choice(options)
        start = first_monday + timedelta(days=rng.randrange(0, 300))
        while start.weekday() >= 5:
            start += timedelta(days=1)
        days = weekdays(start, n)
        approved = start - timedelta(days=5)
        uid = f"2.25.{uuid.UUID(int=rng.getrandbits(128)).int}"
        if name in ("vmat", "vmat+boost", "sbrt"):
            beams = tuple(
                BeamTechnique("PHOTON", "DYNAMIC", "TREATMENT", (6.0,), True, True)
                for _ in range(2)
            )
        elif name == "electron":
            beams = (BeamTechnique("ELECTRON", "STATIC", "TREATMENT", (9.0,)),)
        else:
            beams = tuple(
                BeamTechnique("PHOTON", "STATIC", "TREATMENT", (6.0, 10.0)[i % 2:][:1],
                              wedge_count=i % 2)
                for i in range(4 if name != "single" else 2)
            )  # fmt: skip
        boost = 5 if name == "vmat+boost" else 0
        plans = [
            PlanTechnique(
                uid=uid,
                event_id=f"ev-plan-{uid}",
                beams=beams,
                isocenter_count=1,
                motion_management=name == "sbrt",
                volumetric=name != "single",
                treatment_site="Prostate",
                approved_on=approved,
                plan_date=approved,
                fractions_planned=((1, n),),
            )
        ]
        boost_uid = f"{uid}.2"
        if boost:
            plans.append(
                PlanTechnique(
                    uid=boost_uid,
                    event_id=f"ev-plan-{boost_uid}",
                    beams=beams,
                    isocenter_count=1,
                    volumetric=True,
                    approved_on=days[n - 3],
                    plan_date=days[n - 3],
                    fractions_planned=((1, boost),),
                )
            )
            days = weekdays(start, n + boost)
        slot = f"{7 + rng.randrange(10):02}:{rng.randrange(6) * 10:02}"
        records, reviews = [], []
        for i, day in enumerate(days):
            plan_uid, number = (uid, i + 1) if i < n else (boost_uid, i - n + 1)
            when = local(day, slot)
            record_uid = f"{plan_uid}.r{number}"
            partial = rng.random() < 0.01
            records.append(
                TreatmentRecordFacts(
                    record_uid=record_uid,
                    event_id=f"ev-{record_uid}",
                    patient_id=pid,
                    treated_at=when,
                    delivered=True,
                    partial=partial,
                    content_origin="DEVICE",
                    plan_uid=plan_uid,
                    fraction_group=1,
                    fraction_numbers=(number,),
                )
            )
            if partial:  # resumed later that day: one fraction
                records.append(
                    TreatmentRecordFacts(
                        record_uid=f"{record_uid}.b",
                        event_id=f"ev-{record_uid}.b",
                        patient_id=pid,
                        treated_at=when + timedelta(minutes=40),
                        delivered=True,
                        content_origin="DEVICE",
                        plan_uid=plan_uid,
                        fraction_group=1,
                        fraction_numbers=(number,),
                        referenced_record_uids=(record_uid,),
                    )
                )
            if name == "electron":
                continue  # no image guidance
            roll = rng.random()
            status, decision = (
                ("reviewed_on_time", "approved")
                if roll < 0.9
                else ("reviewed_late", "approved")
                if roll < 0.95
                else ("pending", None)
                if roll < 0.98
                else ("reviewed_on_time", "rejected")
            )
            key = f"{plan_uid}|{number}"
            reviews.append(
                FractionReviewFacts(f"ev-a1-{key}", plan_uid, 1, number, 1,
                                    review_status="pending", imaging=("cbct",))
            )  # fmt: skip
            if status != "pending":
                reviews.append(
                    FractionReviewFacts(
                        f"ev-a2-{key}",
                        plan_uid,
                        1,
                        number,
                        2,
                        review_status=status,  # type: ignore[arg-type]
                        on_time=status == "reviewed_on_time",
                        decision=decision,  # type: ignore[arg-type]
                        imaging=("cbct",),
                    )
                )
        mondays = sorted({d - timedelta(days=d.weekday()) for d in days})
        documents = tuple(
            DocumentFacts(id=f"note-{uid}-{w}", kind="management_note", on=m + timedelta(days=2))
            for w, m in enumerate(mondays)
            if rng.random() < 0.95
        )
        sim_day = start - timedelta(days=8)
        simulations = (
            SimulationFacts(
                event_id=f"ev-sim-{uid}",
                booking_id=f"book-{uid}",
                revision=1,
                service_date=sim_day,
                complexity="complex" if name in ("vmat", "vmat+boost", "sbrt") else "simple",
                four_d_ct=name == "sbrt",
            ),
        )
        summaries = (
            (SummaryFacts(f"ev-sum-{uid}", "COMPLETED", days[-1]),) if rng.random() < 0.3 else ()
        )
        courses.append(
            CourseFacts(
                course_id=f"course:{uid}",
                patient_id=pid,
                plans=tuple(plans),
                records=tuple(records),
                reviews=tuple(reviews),
                simulations=simulations,
                summaries=summaries,
                documents=documents,
                kind=kind,  # type: ignore[arg-type]
            )
        )
    return courses


@functools.cache
def engine_args() -> tuple[Any, Any, Any]:
    """The rules (parsed once, as the service does at start), the practice, the payer."""
    from services.billing.domain import BillingSettings, Payer, load_bundled_rules

    return load_bundled_rules(), BillingSettings(zone=NY), Payer()


def evaluate_all(courses: list[Any]) -> list[Any]:
    from services.billing.domain import evaluate_course

    rules, settings, payer = engine_args()
    return [evaluate_course(c, rules, settings, payer, as_of=AS_OF) for c in courses]


REFERENCE_TUPLES = 200_000


def cpu_reference() -> float:
    """Seconds to sort 200,000 random tuples: the machine's pure-Python speed right now."""
    rng = random.Random(1)
    data = [(rng.random(), rng.randrange(1000)) for _ in range(REFERENCE_TUPLES)]
    start = time.perf_counter()
    sorted(data)
    return time.perf_counter() - start


@contextmanager
def traced() -> Iterator[dict[str, float]]:
    out: dict[str, float] = {}
    tracemalloc.start()
    try:
        yield out
    finally:
        out["peak_mb"] = mb(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


def measure(run: Callable[[], object], rounds: int) -> dict[str, Any]:
    """Wall times of ``rounds`` runs, then one more under tracemalloc for the peak; the max
    RSS before and after the timed runs (the inputs are built before; tracemalloc's own
    bookkeeping, which is large, comes after)."""
    rss_before = max_rss_mb()
    times, cpu = [], []
    for _ in range(rounds):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = run()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        del result
    rss_after = max_rss_mb()
    with traced() as trace:
        run()
    return {
        "times": times,
        "median_s": statistics.median(times),
        "cpu_median_s": statistics.median(cpu),
        "tracemalloc_peak_mb": trace["peak_mb"],
        "rss_before_mb": rss_before,
        "max_rss_mb": rss_after,
    }


def evaluation_phase(courses: int, rounds: int) -> dict[str, Any]:
    """In a fresh interpreter: build the facts, then time ``evaluate_course`` over them."""
    quiet()
    built_at = time.perf_counter()
    facts = build_courses(courses)
    build_s = time.perf_counter() - built_at
    evaluate_all(facts[:50])  # warm the imports and the rules' caches
    tune_collector()  # as `python -m services.billing` does once started
    result = measure(lambda: evaluate_all(facts), rounds)
    refs = [cpu_reference() for _ in range(3)]  # after: its list is not the phase's memory
    evaluations = evaluate_all(facts)
    result.update(
        build_s=build_s,
        courses=len(facts),
        patients=len({c.patient_id for c in facts}),
        fractions=sum(e.fractions_delivered for e in evaluations),
        charges=sum(len(e.charges) for e in evaluations),
        held=sum(1 for e in evaluations for c in e.charges if c.status == "hold"),
        bundled=sum(len(e.bundled) for e in evaluations),
        unresolved=sum(len(e.unresolved) for e in evaluations),
        cpu_ref_s=statistics.median(refs),
    )
    return result


# ---------------------------------------------------------------- 2. the claim file


SEEDED = (
    "missing_charge",
    "excess_units",
    "duplicate_charge",
    "wrong_modifier",
    "deleted_code",
    "unknown_code",
    "unsupported_charge",
)


@dataclass
class ClaimSet:
    csv_text: str
    lines: int
    window: tuple[date, date]
    charges: list[Any]  # every expected charge of every course
    bundled: list[Any]
    seeded: dict[str, int] = field(default_factory=dict)


def claim_file(evaluations: list[Any], lines: int, seed: int = 7, rate: float = 0.01) -> ClaimSet:
    """The first ``lines`` claim lines by date of service that the charges call for (ready or
    on hold, as a practice that bills what it treated would send them), with about ``rate``
    of them altered per seeded kind: dropped (missing_charge), a unit more (excess_units),
    sent twice (duplicate_charge), -26 on a global line (wrong_modifier), 77385 in 2026
    (deleted_code), 77299 (unknown_code), 77263 for a patient's day with no course
    (unsupported_charge)."""
    rng = random.Random(seed)
    charges = [c for e in evaluations for c in e.charges]
    bundled = [b for e in evaluations for b in e.bundled]
    ordered = sorted(charges, key=lambda c: (c.service_date, c.patient_id, c.id))[:lines]
    window = (ordered[0].service_date, ordered[-1].service_date) if ordered else (AS_OF, AS_OF)
    seeded = dict.fromkeys(SEEDED, 0)
    rows: list[tuple[str, str, str, str, str, int]] = []
    for c in ordered:
        row = (c.course_id, c.patient_id, c.service_date.isoformat(), c.cpt,
               ":".join(c.modifiers), c.units)  # fmt: skip
        roll = rng.random() / rate
        if roll < 1:
            seeded["missing_charge"] += 1
            continue
        if roll < 2:
            row = (*row[:5], row[5] + 1)
            seeded["excess_units"] += 1
        elif roll < 3:
            rows.append(row)
            seeded["duplicate_charge"] += 1
        elif roll < 4 and not c.modifiers:
            row = (*row[:4], "26", row[5])
            seeded["wrong_modifier"] += 1
        elif roll < 5 and c.cpt in ("77412", "77407", "77402"):
            row = (*row[:3], "77385", *row[4:])
            seeded["deleted_code"] += 1
        elif roll < 6:
            rows.append((*row[:3], "77299", "", 1))
            seeded["unknown_code"] += 1
        elif roll < 7:
            sunday = c.service_date + timedelta(days=6 - c.service_date.weekday())
            rows.append((row[0], row[1], sunday.isoformat(), "77263", "", 1))
            seeded["unsupported_charge"] += 1
        rows.append(row)
    del rows[lines:]
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(("claim_id", "patient_id", "service_date", "cpt", "modifiers", "units"))
    writer.writerows(rows)
    return ClaimSet(out.getvalue(), len(rows), window, charges, bundled, seeded)


def reconcile_file(claims: ClaimSet) -> tuple[Any, tuple[Any, ...], float, float]:
    from services.billing.claims import parse_claim_file
    from services.billing.domain import reconcile

    rules, _, payer = engine_args()
    start = time.perf_counter()
    parsed = parse_claim_file(claims.csv_text.encode(), "text/csv", "bench.csv")
    parsed_at = time.perf_counter()
    if parsed.errors:
        raise SystemExit(f"the bench's claim file has errors: {parsed.errors[:3]}")
    found = reconcile(
        claims.charges,
        parsed.lines,
        rules,
        payer_id=payer.id,
        bundled=claims.bundled,
        window=claims.window,
    )
    return parsed, found, parsed_at - start, time.perf_counter() - parsed_at


def prepare_claims(courses: int, lines: int, path: str) -> dict[str, Any]:
    """In a fresh interpreter of its own: the expected charges and the claim file, pickled to
    ``path``, so that the process that reconciles holds only what reconciliation needs."""
    quiet()
    claims = claim_file(evaluate_all(build_courses(courses)), lines)
    with open(path, "wb") as out:
        pickle.dump(claims, out, protocol=pickle.HIGHEST_PROTOCOL)
    return {"bytes": os.path.getsize(path)}


def reconciliation_phase(
    courses: int, lines: int, rounds: int, path: str | None = None
) -> dict[str, Any]:
    """In a fresh interpreter: the expected charges and the claim file (from ``path``, else
    built here); then parse + reconcile."""
    quiet()
    if path:
        with open(path, "rb") as source:
            claims = pickle.load(source)
    else:
        claims = claim_file(evaluate_all(build_courses(courses)), lines)
    engine_args()  # the rules, parsed once before the timing
    tune_collector()  # as `python -m services.billing` does once started
    parse_times: list[float] = []
    reconcile_times: list[float] = []

    def run() -> tuple[Any, ...]:
        _, found, parse_s, reconcile_s = reconcile_file(claims)
        parse_times.append(parse_s)
        reconcile_times.append(reconcile_s)
        return found

    result = measure(run, rounds)
    refs = [cpu_reference() for _ in range(3)]
    _, found, _, _ = reconcile_file(claims)
    kinds: dict[str, int] = {}
    for d in found:
        kinds[d.kind] = kinds.get(d.kind, 0) + 1
    result.update(
        lines=claims.lines,
        bytes=len(claims.csv_text),
        expected=len(claims.charges),
        window=[d.isoformat() for d in claims.window],
        seeded=claims.seeded,
        found=kinds,
        parse_median_s=statistics.median(parse_times[:rounds]),
        reconcile_median_s=statistics.median(reconcile_times[:rounds]),
        cpu_ref_s=statistics.median(refs),
    )
    return result


# ---------------------------------------------------------------- 2b. through the service


def service_phase(courses: int, lines: int, database_url: str | None) -> dict[str, Any]:
    """In a fresh interpreter: the charges (and courses' bundled charges) stored in the
    service's database, then POST /v1/claims with the CSV and GET /v1/discrepancies for the
    file's period, each timed, with the max RSS."""
    quiet()
    import httpx
    from sqlalchemy import insert

    from services.billing.app import SERVICE, TABLES, api_app
    from services.billing.posting import charge_fields
    from services.billing.settings import BillingSettings
    from services.billing.store import ChargeRow, Course
    from shared.auth import issue_dev_token
    from tests.databases import service_database

    evaluations = evaluate_all(build_courses(courses))
    claims = claim_file(evaluations, lines)
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as tmp:
        settings = BillingSettings(
            var_dir=Path(tmp), database_url=database_url, database_schema_prefix="bench_"
        )
        with service_database(settings, SERVICE, TABLES) as factory:
            tune_collector()  # as `python -m services.billing` does once started
            stored_at = time.perf_counter()
            with factory.begin() as session:
                rows = [
                    {**_charge_row(c), "revision": 1, "digest": "0" * 64, "updated_at": now}
                    for c in claims.charges
                ]
                for first in range(0, len(rows), 5000):
                    session.execute(insert(ChargeRow), rows[first : first + 5000])
                session.execute(
                    insert(Course),
                    [_course_row(e, now, charge_fields) for e in evaluations],
                )
            store_s = time.perf_counter() - stored_at
            rss_before = max_rss_mb()
            service = _service(settings, factory)
            app = api_app(settings, factory, service)
            token = issue_dev_token(settings, user="bench", roles=["billing"])
            post_s, get_s, found = asyncio.run(_claims_over_http(app, token, claims, httpx))
    return {
        "backend": "PostgreSQL" if database_url else "SQLite",
        "stored_charges": len(claims.charges),
        "store_s": store_s,
        "post_s": post_s,
        "get_s": get_s,
        "discrepancies": found,
        "rss_before_mb": rss_before,
        "max_rss_mb": max_rss_mb(),
    }


def _charge_row(c: Any) -> dict[str, Any]:
    return {
        "id": c.id,
        "patient_id": c.patient_id,
        "course_id": c.course_id,
        "cpt": c.cpt,
        "modifiers": list(c.modifiers),
        "units": c.units,
        "service_date": c.service_date,
        "period_start": c.period[0],
        "period_end": c.period[1],
        "status": c.status,
        "hold_reason": c.hold_reason,
        "evidence": list(c.evidence),
        "rule": c.rule,
        "citation": c.citation,
        "rules_version": c.rules_version,
        "removed": False,
        "exported": False,
    }


def _course_row(e: Any, now: datetime, charge_fields: Callable[[Any], dict[str, Any]]) -> dict:
    return {
        "id": e.course_id,
        "patient_id": e.patient_id,
        "plan_uids": [],
        "corrected": False,
        "kind": e.kind,
        "status": e.status.state,
        "fractions_delivered": e.fractions_delivered,
        "first_session": e.sessions[0].day if e.sessions else None,
        "last_session": e.sessions[-1].day if e.sessions else None,
        "closures": [],
        "unresolved": [],
        "bundled": [
            {
                **charge_fields(b.charge),
                "bundle": b.bundle,
                "primary_charge_id": b.primary_charge_id,
                "bundle_citation": b.citation,
            }
            for b in e.bundled
        ],
        "evaluated_at": now,
    }


async def _claims_over_http(
    app: Any, token: str, claims: ClaimSet, httpx: Any
) -> tuple[float, float, int]:
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://bench", timeout=600
    ) as client:
        start = time.perf_counter()
        response = await client.post(
            "/v1/claims",
            content=claims.csv_text.encode(),
            headers={**headers, "Content-Type": "text/csv"},
        )
        post_s = time.perf_counter() - start
        response.raise_for_status()
        start = time.perf_counter()
        response = await client.get(
            "/v1/discrepancies",
            params={
                "from": claims.window[0].isoformat(),
                "to": (claims.window[1] + timedelta(days=1)).isoformat(),
            },
            headers=headers,
        )
        get_s = time.perf_counter() - start
        response.raise_for_status()
        return post_s, get_s, len(response.json()["items"])


# ---------------------------------------------------------------- 3. the consumer


def department_days(linacs: int, per_linac: int, start: date) -> Iterator[tuple[date, list[Any]]]:
    """A busy department's events, a treatment day at a time, in the order they arrive (by
    time of day, linacs interleaved). Slot s of each linac treats course after course of
    25 + (7 s mod 11) fractions, started on staggered days. A course's plan and its
    simulation arrive before its first fraction (on the first replayed day, the plans of the
    courses under way). Each fraction: the treatment record, the QA tracker's pending state a
    minute later and its review (revision 2) in the afternoon. Each Wednesday: a signed
    management note for every course under treatment."""
    from tests.billing.events import assessed_event, billing_plan_event, note_event
    from tests.events import record_event, sim_completed_event

    day_index = 0
    day = start
    while True:
        if day.weekday() >= 5:
            day += timedelta(days=1)
            continue
        timed: list[tuple[str, int, int, Any]] = []
        for linac in range(linacs):
            for slot in range(per_linac):
                length = 25 + (7 * slot) % 11
                offset = (slot * 3) % length
                course_start = (day_index + offset) // length * length - offset
                number = day_index - course_start + 1
                pid = f"D{linac}-S{slot}-C{course_start}"
                plan_uid = f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, pid).int}"
                if number == 1 or day_index == 0:
                    first_day = day - timedelta(days=(number - 1) * 7 // 5)
                    approved = first_day - timedelta(days=5)
                    plan = billing_plan_event(
                        plan_uid=plan_uid, pid=pid, fractions=length, approved=approved
                    )
                    sim = sim_completed_event(
                        f"book-{pid}",
                        (first_day - timedelta(days=8)).isoformat(),
                        pid=pid,
                        complexity="complex",
                    )
                    timed += [("06:00", linac, 0, plan), ("06:00", linac, 1, sim)]
                hhmm = f"{7 + slot // 6:02}:{(slot % 6) * 10:02}"
                record = record_event(
                    number, day.isoformat(), hhmm, pid=pid, plan_uid=plan_uid,
                    machine=f"TrueBeam{linac}",
                )  # fmt: skip
                pending = assessed_event(number, day, status="pending", pid=pid, plan_uid=plan_uid)
                reviewed = assessed_event(number, day, revision=2, pid=pid, plan_uid=plan_uid)
                later = f"{min(int(hhmm[:2]) + 4, 23):02}{hhmm[2:]}"
                timed += [
                    (hhmm, linac, 2, record),
                    (f"{hhmm}+", linac, 3, pending),
                    (later + "+", linac, 4, reviewed),
                ]
                if day.weekday() == 2:
                    monday = day - timedelta(days=2)
                    note = note_event(monday, course_id=f"course:{plan_uid}", pid=pid)
                    timed.append(("17:00", linac, 5, note))
        timed.sort(key=lambda item: item[:3])
        yield day, [event for *_, event in timed]
        day_index += 1
        day += timedelta(days=1)


class Housekeeping:
    """What runs beside the consumer in production, on the replay's clock (as in
    ``bench.qa_bench``): the relay publishes the outbox and prunes sent rows after 7 days, the
    inbox forgets event ids after 30 days; ANALYZE on PostgreSQL as the rows grow a tenth (the
    machine's PostgreSQL runs without autovacuum)."""

    RELAY_DAYS, INBOX_DAYS = 5, 21

    def __init__(self, factory: Any, outbox: Any, inbox: Any) -> None:
        self._factory, self._outbox, self._inbox = factory, outbox, inbox
        self._outbox_ends: list[int] = []
        self._day_starts: list[datetime] = []
        self._since_analyze = 0
        self._events = 0

    def end_of_day(self, events: int) -> float:
        from sqlalchemy import delete, func, select, text, update

        from shared.outbox import prune_inbox, utcnow

        start = time.perf_counter()
        outbox = self._outbox
        with self._factory.begin() as session:
            last = session.scalar(select(func.max(outbox.id))) or 0
            session.execute(update(outbox).where(outbox.sent_at.is_(None)).values(sent_at=utcnow()))
            if len(self._outbox_ends) >= self.RELAY_DAYS:
                cutoff = self._outbox_ends[-self.RELAY_DAYS]
                session.execute(delete(outbox).where(outbox.id <= cutoff))
        self._outbox_ends.append(last)
        self._day_starts.append(utcnow())
        if len(self._day_starts) > self.INBOX_DAYS:
            cutoff_time = self._day_starts[-self.INBOX_DAYS - 1]
            prune_inbox(self._factory, self._inbox, keep=timedelta(0), now=cutoff_time)
        self._events += events
        self._since_analyze += events
        if self._since_analyze >= self._events / 10:
            with self._factory() as session:
                if session.get_bind().dialect.name == "postgresql":
                    session.execute(text("ANALYZE"))
                    session.commit()
            self._since_analyze = 0
        return time.perf_counter() - start


@dataclass
class ConsumerRun:
    events: int = 0
    new: int = 0
    elapsed: float = 0.0
    daily: list[float] = field(default_factory=list)
    batches: list[tuple[int, float]] = field(default_factory=list)  # (events, seconds)
    housekeeping: float = 0.0
    days: int = 0
    courses: int = 0
    charges: int = 0
    outbox: int = 0

    def counts(self) -> str:
        return (
            f"{self.courses:,} courses, {self.charges:,} charges, {self.outbox:,} outbox rows kept"
        )


def replay_billing(base: dict[str, Any], events: int, linacs: int, per_linac: int) -> ConsumerRun:
    from sqlalchemy import func, select

    from services.billing.app import SERVICE, TABLES
    from services.billing.consumer import CONSUMER_BATCH
    from services.billing.settings import BillingSettings
    from services.billing.store import ChargeRow, Course, Outbox, ProcessedEvent
    from tests.databases import service_database
    from tests.events import Clock

    settings = BillingSettings(**base)
    run = ConsumerRun()
    with service_database(settings, SERVICE, TABLES) as factory:
        clock = Clock(local(date(2026, 3, 2), "20:00"))
        service = _service(settings, factory, clock)
        tune_collector()  # as `python -m services.billing` does once started
        housekeeping = Housekeeping(factory, Outbox, ProcessedEvent)
        for day, day_events in department_days(linacs, per_linac, date(2026, 3, 2)):
            day_events = day_events[: events - run.events]
            clock.now = local(day, "20:00")  # as_of: the replayed day
            start = time.perf_counter()
            for first in range(0, len(day_events), CONSUMER_BATCH):
                batch = day_events[first : first + CONSUMER_BATCH]
                began = time.perf_counter()
                run.new += service.apply_batch(batch)
                run.batches.append((len(batch), time.perf_counter() - began))
            took = time.perf_counter() - start
            run.daily.append(len(day_events) / took)
            run.elapsed += took
            run.events += len(day_events)
            run.days += 1
            run.housekeeping += housekeeping.end_of_day(len(day_events))
            if run.events >= events:
                break
        with factory() as session:
            run.courses = session.scalar(select(func.count()).select_from(Course)) or 0
            run.charges = session.scalar(select(func.count()).select_from(ChargeRow)) or 0
            run.outbox = session.scalar(select(func.count()).select_from(Outbox)) or 0
    return run


def _service(settings: Any, factory: Any, clock: Callable[[], datetime] | None = None) -> Any:
    from services.billing.service import BillingService

    return BillingService(
        factory=factory,
        rules=settings.rules(),
        settings=settings.engine_settings(),
        payer=settings.payer(),
        gap_days=settings.billing_course_gap_days,
        clock=clock or (lambda: local(AS_OF, "12:00")),
    )


def replay_qa(base: dict[str, Any], days: int, linacs: int, per_linac: int) -> float:
    """The reference: the QA tracker's replay (``bench.qa_bench``), events/s."""
    from bench.qa_bench import replay
    from tests.events import Clock, at
    from tests.qa_tracker.factories import make_service, qa_database

    with qa_database(base) as (settings, factory):
        service = make_service(settings, factory, Clock(at("2026-12-31", "12:00")))
        done = replay(service, factory, days, linacs, per_linac)
    return done.events / done.elapsed


@contextmanager
def throwaway_database(base_url: str) -> Iterator[str]:
    """A PostgreSQL database of the run's own, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(base_url)
    name = f"rtops_billing_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def consumer_backend(
    database_url: str | None, events: int, linacs: int, per_linac: int
) -> dict[str, Any]:
    ref_linacs = max(1, min(10, events // 3000))
    with tempfile.TemporaryDirectory() as tmp:

        def base(tag: str) -> dict[str, Any]:
            return {
                "var_dir": Path(tmp) / tag,
                "database_url": database_url,
                "database_schema_prefix": f"bench_{tag}_",
            }

        qa_before = replay_qa(base("qa1"), 2, ref_linacs, 60)
        run = replay_billing(base("billing"), events, linacs, per_linac)
        qa_after = replay_qa(base("qa2"), 2, ref_linacs, 60)
    return {"run": run, "qa_before": qa_before, "qa_after": qa_after}


def consumer_batch() -> int:
    from services.billing.consumer import CONSUMER_BATCH

    return CONSUMER_BATCH


def chunk_rates(batches: list[tuple[int, float]], chunks: int = 10) -> list[float]:
    size = max(1, len(batches) // chunks)
    out = []
    for first in range(0, len(batches) - size + 1, size):
        part = batches[first : first + size]
        out.append(sum(n for n, _ in part) / sum(s for _, s in part))
    return out


# ---------------------------------------------------------------- the run


IN_PROCESS = False  # --in-process: no fresh interpreters (faster; the max RSS is shared)


def in_child(function: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """``function(*args)`` in a fresh interpreter (its own max RSS)."""
    if IN_PROCESS:
        return function(*args)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f}"


def machine() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    return (
        f"{os.cpu_count()} cores, {memory:.0f} GB, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def report_phase(title: str, r: dict[str, Any], what: str) -> None:
    times = ", ".join(f"{t:.2f}" for t in r["times"])
    ok_time = r["median_s"] < TARGET_S
    ok_memory = r["max_rss_mb"] < TARGET_MB and r["tracemalloc_peak_mb"] < TARGET_MB
    print(f"\n## {title}")
    print(what)
    print(
        f"  wall time: median {r['median_s']:.2f} s (rounds: {times}; CPU "
        f"{r['cpu_median_s']:.2f} s); {r['median_s'] / r['cpu_ref_s']:.0f} x the CPU reference "
        f"({r['cpu_ref_s'] * 1000:.0f} ms to sort {REFERENCE_TUPLES:,} tuples)  "
        f"target < {TARGET_S:.0f} s: {verdict(ok_time)}"
    )
    print(
        f"  memory: tracemalloc peak {r['tracemalloc_peak_mb']:.0f} MB (the phase's own "
        f"allocations); max RSS {r['max_rss_mb']:.0f} MB (the process through the timed "
        f"rounds; {r['rss_before_mb']:.0f} MB with its inputs before them)  "
        f"target < {TARGET_MB:.0f} MB: {verdict(ok_memory)}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--courses", type=int, default=5000)
    parser.add_argument("--claim-lines", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=30_000, help="consumer events per backend")
    parser.add_argument("--linacs", type=int, default=10)
    parser.add_argument("--per-linac", type=int, default=60, help="fractions per linac a day")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql"
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("RTOPS_DATABASE_URL") or DEFAULT_PG,
        help="PostgreSQL server to create the throwaway database on",
    )
    parser.add_argument("--no-service", action="store_true", help="skip POST/GET through the app")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run every phase in this process (the smoke test: faster, but max RSS is shared)",
    )
    args = parser.parse_args(argv)
    global IN_PROCESS
    IN_PROCESS = args.in_process
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    quiet()

    print(f"# billing benchmark, {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"{machine()}; {load()} at the start")
    say(f"evaluation of {args.courses} courses")
    evaluation = in_child(evaluation_phase, args.courses, args.rounds)
    report_phase(
        f"1. charge evaluation: {evaluation['courses']:,} courses",
        evaluation,
        f"{evaluation['patients']:,} patients, {evaluation['fractions']:,} fractions; "
        f"{evaluation['charges']:,} charges ({evaluation['held']:,} on hold), "
        f"{evaluation['bundled']:,} bundled, {evaluation['unresolved']:,} unresolved "
        f"(facts built in {evaluation['build_s']:.1f} s, untimed)",
    )
    print(
        f"  per course: {evaluation['median_s'] / evaluation['courses'] * 1000:.2f} ms; "
        f"per charge {evaluation['median_s'] / max(1, evaluation['charges']) * 1e6:.0f} us"
    )

    say(f"reconciliation of {args.claim_lines} claim lines")
    with tempfile.TemporaryDirectory() as tmp:
        path = None if IN_PROCESS else str(Path(tmp) / "claims.pickle")
        if path:
            in_child(prepare_claims, args.courses, args.claim_lines, path)
        rec = in_child(reconciliation_phase, args.courses, args.claim_lines, args.rounds, path)
    report_phase(
        f"2. reconciliation: {rec['lines']:,}-line claim file",
        rec,
        f"{rec['bytes'] / 1e6:.1f} MB of CSV, {rec['window'][0]} to {rec['window'][1]}, "
        f"against {rec['expected']:,} expected charges (every course's); parse "
        f"{rec['parse_median_s']:.2f} s + reconcile {rec['reconcile_median_s']:.2f} s (medians)",
    )
    seeded = ", ".join(f"{k} {v}" for k, v in rec["seeded"].items())
    found = ", ".join(f"{k} {v}" for k, v in sorted(rec["found"].items()))
    print(f"  seeded: {seeded}")
    print(f"  found: {found}")

    urls = {"sqlite": None, "postgresql": args.pg_url}
    if not args.no_service:
        print("\n## 2b. the same claim file through the service (POST /v1/claims, GET "
              "/v1/discrepancies for its period; httpx on the ASGI app)")  # fmt: skip
        for backend in backends:
            say(f"service path on {backend}")
            try:
                with pg_or_sqlite(urls[backend]) as url:
                    s = in_child(service_phase, args.courses, args.claim_lines, url)
            except Exception as exc:  # a missing PostgreSQL must not end the run
                print(f"  {backend}: not run ({type(exc).__name__}: {exc})")
                continue
            total = s["post_s"] + s["get_s"]
            print(
                f"  {s['backend']}: POST {s['post_s']:.2f} s, GET {s['get_s']:.2f} s "
                f"({s['discrepancies']:,} items) = {total:.2f} s "
                f"{verdict(total < TARGET_S)}; max RSS {s['max_rss_mb']:.0f} MB "
                f"({s['rss_before_mb']:.0f} before) {verdict(s['max_rss_mb'] < TARGET_MB)}; "
                f"{s['stored_charges']:,} charges stored beforehand in {s['store_s']:.1f} s"
            )

    print(
        f"\n## 3. consumer: {args.events:,} events per backend through apply_batch "
        f"({args.linacs} linacs x {args.per_linac} fractions a day, batches of {consumer_batch()})"
    )
    for backend in backends:
        say(f"consumer on {backend}, {load()}")
        try:
            with pg_or_sqlite(urls[backend]) as url:
                result = consumer_backend(url, args.events, args.linacs, args.per_linac)
        except Exception as exc:
            print(f"  {backend}: not run ({type(exc).__name__}: {exc})")
            continue
        run: ConsumerRun = result["run"]
        rate = run.events / run.elapsed
        chunks = chunk_rates(run.batches)
        qa = statistics.mean([result["qa_before"], result["qa_after"]])
        print(
            f"  {backend}: {rate:,.0f} events/s over {run.elapsed:.1f} s "
            f"({run.events:,} events, {run.days} days, {run.counts()})  "
            f"target >= {TARGET_RATE:,.0f}/s: {verdict(rate >= TARGET_RATE)}"
        )
        print(
            f"    per day: median {statistics.median(run.daily):,.0f}, slowest "
            f"{min(run.daily):,.0f}; tenths of the batches: first {chunks[0]:,.0f}, last "
            f"{chunks[-1]:,.0f} events/s (last/first {chunks[-1] / chunks[0]:.2f}); "
            f"housekeeping outside the timed part {run.housekeeping:.1f} s"
        )
        print(
            f"    reference: the QA tracker's apply_batch {result['qa_before']:,.0f} events/s "
            f"before, {result['qa_after']:,.0f} after; billing / QA tracker = {rate / qa:.2f}"
        )
    print(f"\n{load()} at the end")


@contextmanager
def pg_or_sqlite(url: str | None) -> Iterator[str | None]:
    if url is None:
        yield None
        return
    with throwaway_database(url) as throwaway:
        yield throwaway


if __name__ == "__main__":
    main()
