"""Documents benchmark (issue 12): a department's year, then the version-history and checklist
query and letter rendering, on SQLite and PostgreSQL.

    python -m bench.documents_bench [--courses 3000] [--documents 20] [--linacs 10]
                                    [--queries 500] [--letters 300] [--backends sqlite,postgresql]

1. **The year** (``--courses`` courses over ``--linacs`` linacs, starts spread over 48 weeks):
   each patient's plan (VMAT or 3D), an adaptation mid-course for one in four (PREDECESSOR,
   fewer fractions), a concurrent boost plan for one in twenty, a verification plan for one in
   ten, and 25 treatment records, applied through ``DocumentsService.apply_batch`` (what the
   durable consumer calls per fetch, minus NATS) in batches of about 200 events by patient: the
   derivation, the flags and one letter per course (rendered to PDF) happen here. Reported as
   events/s. Then ``--documents`` filed documents per course (distinct bytes, ~1.5 kB each),
   inserted in bulk (the upload path is measured by the tests, not here).
2. **The query**: ``GET /v1/plans?patient_id=`` (httpx on the ASGI app, a bearer token, the
   audit row written) for ``--queries`` random patients, then ``GET /v1/courses``: p50/p95.
   Target p95 < 100 ms on both backends.
3. **Letters**: ``LetterRenderer.pdf`` of the default template, letters per second (one core).

SQLite in a temp dir; PostgreSQL in a throwaway database (created and dropped) on
``RTOPS_DATABASE_URL``'s server (default: the local one). A missed target prints MISS; the exit
status stays 0.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

TARGET_P95_MS = 100.0
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
FIRST_MONDAY = date(2026, 1, 5)


def quiet() -> None:
    from shared.logging import configure_logging

    configure_logging("WARNING", "console", service="bench-documents")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def business_day(start: date, i: int) -> date:
    return start + timedelta(days=i // 5 * 7 + i % 5)


def course_events(i: int, linacs: int, rng: random.Random) -> list[Any]:
    """One patient's plans and treatment records."""
    from tests.documents.events import fraction, plan, static, vmat

    pid = f"BENCH-{i:05d}"
    start = FIRST_MONDAY + timedelta(weeks=i % 48)
    machine = f"Linac{i % linacs + 1}"
    beams = (
        (vmat(1, machine=machine), vmat(2, machine=machine))
        if rng.random() < 0.7
        else tuple(static(n, machine=machine) for n in range(1, 5))
    )
    planned = start - timedelta(days=7)
    events = [plan(f"{i}.1", pid=pid, beams=beams, plan_date=planned)]
    adapted = rng.random() < 0.25
    if adapted:
        events.append(
            plan(
                f"{i}.2",
                pid=pid,
                beams=beams,
                fractions=20,
                dose_gy=56.0,
                refs=((f"{i}.1", "PREDECESSOR"),),
                plan_date=business_day(start, 10),
            )
        )
    if rng.random() < 0.05:
        events.append(
            plan(
                f"{i}.3",
                pid=pid,
                label="PROST boost",
                beams=beams,
                fractions=5,
                dose_gy=10.0,
                refs=((f"{i}.1", "CONCURRENT"),),
                plan_date=planned,
            )
        )
    if rng.random() < 0.10:
        events.append(
            plan(
                f"{i}.9",
                pid=pid,
                intent="VERIFICATION",
                refs=((f"{i}.1", "VERIFIED_PLAN"),),
                plan_date=planned,
            )
        )
    for n in range(25):
        on = f"{i}.2" if adapted and n >= 12 else f"{i}.1"
        events.append(fraction(n + 1, business_day(start, n), plan_n=on, pid=pid))
    return events


def seed_documents(factory: Any, courses: int, per_course: int) -> float:
    """``per_course`` filed documents for each course's first plan, in bulk."""
    from sqlalchemy import insert, select

    from services.documents.domain import DOC_TYPES
    from services.documents.store import DocumentRow, FileRow, PlanRow
    from tests.documents.conftest import make_pdf

    base = make_pdf("bench document")
    now = datetime.now(UTC)
    started = time.perf_counter()
    with factory() as session:
        plans = session.execute(select(PlanRow.uid, PlanRow.patient_id)).all()
    first = {pid: uid for uid, pid in sorted(plans) if uid.endswith(".1")}
    files, docs = [], []
    for n, (pid, uid) in enumerate(sorted(first.items())[:courses]):
        revisions: dict[str, int] = {}
        for k in range(per_course):
            content = base + f"\n% {pid} {k}\n".encode()
            sha = hashlib.sha256(content).hexdigest()
            files.append({"sha256": sha, "size": len(content), "content": content})
            doc_type = DOC_TYPES[k % 5] if k < 10 else DOC_TYPES[5 + k % 2]
            revisions[doc_type] = revisions.get(doc_type, 0) + 1
            docs.append(
                {
                    "id": str(uuid.uuid4()),
                    "patient_id": pid,
                    "plan_uid": uid,
                    "course_id": f"course:{uid}",
                    "week": None,
                    "doc_type": doc_type,
                    "revision": revisions[doc_type],
                    "title": None,
                    "author": "a",
                    "signed_by": "b",
                    "signed_at": now,
                    "filename": f"{k}.pdf",
                    "sha256": sha,
                    "size": len(content),
                    "source": "upload",
                    "dicom_uid": None,
                    "dicom_revision": None,
                    "filed_by": "bench",
                    "filed_at": now,
                }
            )
        if len(docs) >= 5000 or n == len(first) - 1:
            with factory.begin() as session:
                session.execute(insert(FileRow), files)
                session.execute(insert(DocumentRow), docs)
            files, docs = [], []
    return time.perf_counter() - started


async def query_latencies(app: Any, token: str, patients: list[str]) -> dict[str, list[float]]:
    import httpx

    out: dict[str, list[float]] = {"plans": [], "courses": []}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        headers = {"Authorization": f"Bearer {token}"}
        for path in ("plans", "courses"):
            for pid in patients:
                t0 = time.perf_counter()
                answer = await client.get(
                    f"/v1/{path}", params={"patient_id": pid}, headers=headers
                )
                out[path].append((time.perf_counter() - t0) * 1000)
                assert answer.status_code == 200, answer.text
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_backend(name: str, database_url: str | None, args: argparse.Namespace) -> dict[str, Any]:
    from services.documents.app import SERVICE, TABLES, api_app
    from services.documents.domain import ChecklistPolicy
    from services.documents.letters import LetterRenderer
    from services.documents.service import DocumentsService
    from services.documents.settings import DocumentsSettings
    from services.documents.transport import OutboxFolder
    from shared.auth import issue_dev_token
    from shared.db import make_engine, migrate, session_factory
    from shared.outbox import outbox_info

    with tempfile.TemporaryDirectory(prefix="documents-bench-") as tmp:
        settings = DocumentsSettings(
            var_dir=Path(tmp),
            database_url=database_url,
            database_schema_prefix="bench_",
            dev_signing_key="documents-bench-key-" + "k" * 32,
        )
        engine = make_engine(settings, SERVICE)
        migrate(engine, settings, SERVICE, Path("services/documents/migrations"))
        factory = session_factory(engine, **outbox_info(TABLES.outbox, SERVICE))
        service = DocumentsService(
            factory=factory,
            policy=ChecklistPolicy(),
            renderer=LetterRenderer(),
            transport=OutboxFolder(Path(tmp) / "letters"),
        )
        rng = random.Random(12)
        batch: list[Any] = []
        events = 0
        started = time.perf_counter()
        for i in range(args.courses):
            batch += course_events(i, args.linacs, rng)
            if len(batch) >= 200 or i == args.courses - 1:
                service.apply_batch(batch)
                events += len(batch)
                batch = []
        seeded = time.perf_counter() - started
        docs_s = seed_documents(factory, args.courses, args.documents)
        app = api_app(settings, factory, service)
        token = issue_dev_token(settings, user="bench", roles=["physicist"])
        patients = [f"BENCH-{rng.randrange(args.courses):05d}" for _ in range(args.queries)]
        asyncio.run(query_latencies(app, token, patients[:20]))  # warm the caches
        latencies = asyncio.run(query_latencies(app, token, patients))
        sample = service.plan_history(patients[0], principal=_principal(), resource="bench")
        engine.dispose()
    return {
        "backend": name,
        "events": events,
        "events_per_s": events / seeded,
        "seed_s": seeded,
        "documents_s": docs_s,
        "plans_p50": statistics.median(latencies["plans"]),
        "plans_p95": pct(latencies["plans"], 0.95),
        "courses_p50": statistics.median(latencies["courses"]),
        "courses_p95": pct(latencies["courses"], 0.95),
        "sample_versions": len(sample),
        "sample_documents": sum(len(v["documents"]) for v in sample),
    }


def _principal() -> Any:
    from shared.auth import Principal

    return Principal(user="bench", roles=frozenset({"physicist"}))


def letters_per_second(count: int) -> float:
    from services.documents.domain import letter_facts, snapshot_of
    from services.documents.letters import LetterRenderer
    from tests.documents.events import plan

    event = plan(1)
    snap = snapshot_of(event.data, event.time)  # type: ignore[arg-type]
    facts = letter_facts(
        course_id="course:x",
        patient_name="Doe^John",
        birth_date=date(1950, 1, 2),
        plans=[snap],
        start_date=FIRST_MONDAY,
        department_contact="555-0100",
    )
    renderer = LetterRenderer()
    renderer.pdf(facts, today=FIRST_MONDAY)
    started = time.perf_counter()
    for _ in range(count):
        renderer.pdf(facts, today=FIRST_MONDAY)
    return count / (time.perf_counter() - started)


@contextmanager
def throwaway_database(base_url: str) -> Iterator[str]:
    """A PostgreSQL database of the run's own, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(base_url)
    name = f"rtops_documents_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.documents_bench", description=__doc__)
    parser.add_argument("--courses", type=int, default=3000)
    parser.add_argument("--documents", type=int, default=20)
    parser.add_argument("--linacs", type=int, default=10)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--letters", type=int, default=300)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args(argv)
    quiet()
    print(
        f"documents bench: {args.courses} courses on {args.linacs} linacs, "
        f"{args.documents} documents each, {args.queries} queries per endpoint"
    )
    for backend in args.backends.split(","):
        if backend == "sqlite":
            result = run_backend("sqlite", None, args)
        else:
            base = os.environ.get("RTOPS_DATABASE_URL") or DEFAULT_PG
            with throwaway_database(base) as url:
                result = run_backend("postgresql", url, args)
        print(
            f"[{result['backend']}] year through apply_batch: {result['events']} events in "
            f"{result['seed_s']:.1f} s ({result['events_per_s']:.0f} events/s, letters "
            f"drafted and rendered included); documents filed in bulk in "
            f"{result['documents_s']:.1f} s"
        )
        for path in ("plans", "courses"):
            p95 = result[f"{path}_p95"]
            print(
                f"[{result['backend']}] GET /v1/{path}: p50 {result[f'{path}_p50']:.1f} ms, "
                f"p95 {p95:.1f} ms (target < {TARGET_P95_MS:.0f} ms): "
                f"{verdict(p95 < TARGET_P95_MS)}"
            )
        print(
            f"[{result['backend']}] a sampled patient: {result['sample_versions']} versions, "
            f"{result['sample_documents']} documents"
        )
    rate = letters_per_second(args.letters)
    print(f"letters rendered: {rate:.0f} per second (one core, default template)")


if __name__ == "__main__":
    main()
