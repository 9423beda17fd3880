"""Staff pages benchmark: every page of the QA tracker and the SCP over real HTTP on a busy
department's data, and the worklist's first paint in headless Chromium.

    python -m bench.pages_bench [--days 60] [--requests 20] [--loads 10]

The issue's data set is the QA benchmark's year: ``--days 250`` (10 linacs x 60 imaged
fractions a day, replayed through ``QaService.apply_batch`` by ``bench.qa_bench.replay``). The
SCP's object index gets the same department's objects over the same number of treatment days,
inserted as index rows (a CBCT of ``--cbct-slices`` CT slices, a registration and a treatment
record per fraction; a sim CT, a structure set, a plan and a dose per course), ending today.

Each service runs in a subprocess of its own (uvicorn, one worker, as ``rtops run`` starts it)
on a free loopback port, over the data in a temp dir (SQLite) or in schemas of their own on
PostgreSQL (``RTOPS_DATABASE_URL``). The bench signs in through the development sign-in form
and requests each page ``--requests`` times, the pages interleaved, after one untimed round.
Per page: the client's time (request sent to body read, httpx with keep-alive) and the
server's (the ``Server-Timing`` header that the bench's ASGI wrapper adds: request received to
response start), median and p95 (nearest rank), and the median against the same server's
static CSS measured in the same rounds. Targets (issue 10): p95 < 300 ms per page (judged on
the client's time), the worklist's first contentful paint < 1 s (median). A miss prints MISS;
the exit status stays 0.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from bench.qa_bench import FRACTIONS_PER_COURSE, business_days, replay
from services.qa_tracker.consumer import CONSUMER_BATCH
from services.qa_tracker.store import Fraction
from shared.ui import SESSION_COOKIE
from tests.events import Clock, at
from tests.qa_tracker.factories import make_service, qa_database

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
NY = ZoneInfo("America/New_York")
FIRST_DAY = date(2026, 1, 5)  # the QA benchmark's first treatment day
PHYSICIAN = "Oncologist^Olga"  # tests.events.plan_event's physician: every plan of the data set
P95_TARGET_MS = 300.0
PAINT_TARGET_MS = 1000.0
CSS = "/ui/static/rtops.css"
SIM_SLICES = 120

# SOP classes (services.scp_listener.sop), written out: the bench inserts index rows only.
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SPATIAL_REGISTRATION = "1.2.840.10008.5.1.4.1.1.66.1"
RT_BEAMS_RECORD = "1.2.840.10008.5.1.4.1.1.481.4"
RT_PLAN = "1.2.840.10008.5.1.4.1.1.481.5"
RT_STRUCTURE_SET = "1.2.840.10008.5.1.4.1.1.481.3"
RT_DOSE = "1.2.840.10008.5.1.4.1.1.481.2"


STARTED = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


def iso_week(day: date) -> str:
    iso = day.isocalendar()
    return f"{iso.year}-W{iso.week:02d}"


def p95(values: Sequence[float]) -> float:
    """Nearest rank: the smallest value with at least 95 % of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


# ---------------------------------------------------------------- the server subprocess


class ServerTiming:
    """ASGI wrapper: ``Server-Timing: app;dur=<ms>`` from the request's arrival in the app to
    its response start (pages render the whole body before they start the response)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def timed(message: Any) -> None:
            if message["type"] == "http.response.start":
                took = (time.perf_counter() - start) * 1000
                headers = [*message.get("headers", []), (b"server-timing", b"app;dur=%.3f" % took)]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, timed)


def serve(kind: str, config: dict[str, str]) -> None:
    """The subprocess: the service's app (no background tasks) on a free port, printed as
    ``PORT <n>`` once the socket listens."""
    import socket

    import uvicorn

    from shared.logging import configure_logging
    from shared.natsd import listening_socket

    configure_logging("WARNING", "console", service=f"bench-{kind}")
    base: dict[str, Any] = {
        "var_dir": Path(config["var_dir"]),
        "database_schema_prefix": config["prefix"],
    }
    if kind == "qa":
        from services.qa_tracker.app import SERVICE, TABLES, create_app
        from services.qa_tracker.settings import QaSettings
        from shared.runtime import Runtime

        settings = QaSettings(**base)
        runtime = Runtime.create(SERVICE, settings, TABLES)
        now = datetime.fromisoformat(config["now"])
        service = make_service(settings, runtime.factory, Clock(now))
        app = create_app(settings, runtime=runtime, service=service, background=False)
    else:
        from services.scp_listener.app import create_app as create_scp_app
        from services.scp_listener.metrics import RECENT_PROBLEMS, Problem
        from services.scp_listener.settings import ScpSettings

        app = create_scp_app(
            ScpSettings(**base, scp_device_registry=Path(config["registry"])), background=False
        )
        for n in range(RECENT_PROBLEMS):  # a full problems list: the page at its longest
            app.state.problems.record(
                Problem(
                    kind="association",
                    reason="unknown_calling_ae",
                    calling_ae=f"Truebeam{n % 10}",
                    called_ae="RTOPS",
                    peer=f"10.0.0.{n % 250}:40{n % 100:03}",
                    detail=f"calling AE title 'Truebeam{n % 10}' is not in the device registry "
                    f"(did you mean 'TRUEBEAM{n % 10}'?)",
                )
            )
    # The socket ``rtops run`` hands uvicorn (shared.web.serve). Until b7e5c9b it was made
    # with protocol 0, and asyncio turns Nagle off only on sockets that say IPPROTO_TCP: every
    # kept-alive response then waited ~40 ms for the client's delayed ACK. The table says
    # which socket was measured.
    sock = listening_socket("127.0.0.1", 0, "RTOPS_QA_HTTP_PORT")
    nagle_off = sock.proto == socket.IPPROTO_TCP or bool(
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    )
    print(f"PORT {sock.getsockname()[1]} {int(nagle_off)}", flush=True)
    server = uvicorn.Server(
        uvicorn.Config(ServerTiming(app), log_config=None, access_log=False, lifespan="off")
    )
    server.run(sockets=[sock])


def launch(kind: str, config: dict[str, str]) -> subprocess.Popen[str]:
    """``serve`` in a subprocess (``server`` waits for it, yields its URL and stops it)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.pages_bench",
            "--serve",
            kind,
            "--config",
            json.dumps(config),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )


@contextmanager
def server(process: subprocess.Popen[str]) -> Iterator[tuple[str, bool]]:
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"a server did not start (exit {process.wait(10)})")
        _, port, nagle_off = line.split()
        base = f"http://127.0.0.1:{int(port)}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/healthz", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        yield base, nagle_off == "1"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---------------------------------------------------------------- HTTP timing

SOCKETS = {
    False: "server socket (as rtops run makes it) with Nagle on: a response written in two "
    "parts waits for the client's delayed ACK (about 40 ms) on a reused connection",
    True: "server socket (as rtops run makes it) with Nagle off",
}


def signed_in(base: str, name: str, role: str) -> httpx.Client:
    """A keep-alive client holding the session cookie of the development sign-in form."""
    client = httpx.Client(base_url=base, timeout=60)
    form = client.get("/ui/sign-in")
    token = re.findall(r'name="csrf_token" value="([^"]+)"', form.text)[-1]
    answer = client.post(
        "/ui/sign-in", data={"name": name, "role": role, "csrf_token": token, "next": "/ui/"}
    )
    if answer.status_code != 303 or SESSION_COOKIE not in client.cookies:
        raise RuntimeError(f"sign-in as {role} failed: {answer.status_code}")
    return client


@dataclass
class Timed:
    label: str
    path: str
    client: httpx.Client
    reference: bool = False
    wall_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    size: int = 0

    def get(self) -> tuple[float, float | None]:
        start = time.perf_counter()
        response = self.client.get(self.path)
        body = response.content
        wall = (time.perf_counter() - start) * 1000
        if response.status_code != 200:
            raise RuntimeError(f"{self.path}: {response.status_code} {response.text[:300]}")
        self.size = len(body)
        found = re.search(r"app;dur=([\d.]+)", response.headers.get("server-timing", ""))
        return wall, float(found.group(1)) if found else None


def time_pages(pages: list[Timed], requests: int) -> None:
    """One untimed round (imports, templates, caches), then ``requests`` rounds with every
    page once, in the same order."""
    for page in pages:
        page.get()
    for _ in range(requests):
        for page in pages:
            wall, server_ms = page.get()
            page.wall_ms.append(wall)
            if server_ms is not None:
                page.server_ms.append(server_ms)


def page_table(title: str, pages: list[Timed], misses: list[str], *, nagle_off: bool) -> None:
    reference = next(p for p in pages if p.path == CSS)
    ref = statistics.median(reference.wall_ms)
    print(title)
    print(
        f"  {'page':<44} {'kB':>6} {'client p50':>10} {'p95':>7} {'server p50':>10} "
        f"{'p95':>7} {'p50/css':>8}  target p95 < {P95_TARGET_MS:.0f} ms"
    )
    for page in pages:
        mid, top = statistics.median(page.wall_ms), p95(page.wall_ms)
        s_mid = statistics.median(page.server_ms) if page.server_ms else math.nan
        s_top = p95(page.server_ms) if page.server_ms else math.nan
        verdict = "(reference)" if page.reference else ("PASS" if top < P95_TARGET_MS else "MISS")
        if verdict == "MISS":
            misses.append(f"{page.label}: p95 {top:.0f} ms")
        print(
            f"  {page.label:<44} {page.size / 1000:>6.1f} {mid:>10.1f} {top:>7.1f} "
            f"{s_mid:>10.1f} {s_top:>7.1f} {mid / ref:>8.1f}  {verdict}"
        )
    print("  (ms; client: request to body read over loopback; server: Server-Timing)")
    print(f"  {SOCKETS[nagle_off]}")


# ---------------------------------------------------------------- first paint

PAINT_JS = """() => new Promise(resolve => {
  const nav = performance.getEntriesByType('navigation')[0];
  const done = fcp => resolve({fcp, dcl: nav.domContentLoadedEventEnd, ttfb: nav.responseStart});
  const seen = performance.getEntriesByName('first-contentful-paint');
  if (seen.length) return done(seen[0].startTime);
  new PerformanceObserver(list => {
    const entries = list.getEntriesByName('first-contentful-paint');
    if (entries.length) done(entries[0].startTime);
  }).observe({type: 'paint', buffered: true});
  setTimeout(() => done(null), 5000);
})"""


def first_paint(base: str, cookie: str, paths: Sequence[str], loads: int) -> dict[str, Any]:
    """Each path loaded ``loads`` times (after one untimed load each), interleaved, every load
    in a fresh browser context (no cache: the CSS and scripts are fetched each time) with the
    session cookie: first contentful paint, DOMContentLoaded and time to first byte, in ms
    from navigation start."""
    from playwright.sync_api import sync_playwright

    found: dict[str, dict[str, list[float]]] = {
        p: {"fcp": [], "dcl": [], "ttfb": []} for p in paths
    }
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            for round_ in range(loads + 1):
                for path in paths:
                    context = browser.new_context(viewport={"width": 1440, "height": 900})
                    context.add_cookies([{"name": SESSION_COOKIE, "value": cookie, "url": base}])
                    page = context.new_page()
                    response = page.goto(base + path, wait_until="load")
                    if response is None or response.status != 200:
                        raise RuntimeError(f"{path}: {response and response.status}")
                    timing = page.evaluate(PAINT_JS)
                    context.close()
                    if round_ == 0:
                        continue
                    if timing["fcp"] is None:
                        raise RuntimeError(f"{path}: no first-contentful-paint entry")
                    for key in ("fcp", "dcl", "ttfb"):
                        found[path][key].append(float(timing[key]))
        finally:
            browser.close()
    return found


def paint_table(found: dict[str, dict[str, list[float]]], target: str, misses: list[str]) -> None:
    reference = next(p for p in found if p != target)
    ref = statistics.median(found[reference]["fcp"])
    loads = len(found[target]["fcp"])
    print(f"First paint in headless Chromium ({loads} loads each, fresh context per load)")
    print(
        f"  {'page':<28} {'FCP p50':>8} {'max':>7} {'DCL p50':>8} {'TTFB p50':>9} "
        f"{'FCP/ref':>8}  target FCP p50 < {PAINT_TARGET_MS:.0f} ms"
    )
    for path, values in found.items():
        mid = statistics.median(values["fcp"])
        if path == target:
            verdict = "PASS" if mid < PAINT_TARGET_MS else "MISS"
            if verdict == "MISS":
                misses.append(f"{path} first paint: {mid:.0f} ms")
        else:
            verdict = "(reference)"
        print(
            f"  {path:<28} {mid:>8.0f} {max(values['fcp']):>7.0f} "
            f"{statistics.median(values['dcl']):>8.0f} {statistics.median(values['ttfb']):>9.0f} "
            f"{mid / ref:>8.2f}  {verdict}"
        )


# ---------------------------------------------------------------- the QA tracker


@dataclass
class QaData:
    config: dict[str, str]  # what ``serve`` needs
    backend: str
    events: int
    fractions: int
    fraction_id: int  # the fraction in the middle, for its detail page
    week: str  # a week in the middle, for the compliance report
    now: datetime


@contextmanager
def qa_data(args: argparse.Namespace, tmp: Path) -> Iterator[QaData]:
    """The QA benchmark's data set (dropped afterwards on PostgreSQL)."""
    days = business_days(FIRST_DAY, args.days)
    base = {"var_dir": tmp / "qa", "database_schema_prefix": f"bench_{uuid.uuid4().hex[:8]}_"}
    with qa_database(base) as (settings, factory):
        log(f"replaying {args.days} treatment days into the QA tracker ...")
        service = make_service(settings, factory, Clock(at("2026-12-31", "12:00")))
        replayed = replay(service, factory, args.days, args.linacs, args.per_linac, args.batch)
        fractions, fraction_id = middle_fraction(factory)
        # The working day after the last treatment day, at noon: every review still open.
        now = at(business_days(days[-1] + timedelta(days=1), 1)[0].isoformat(), "12:00")
        yield QaData(
            config={
                "var_dir": str(base["var_dir"]),
                "prefix": base["database_schema_prefix"],
                "now": now.isoformat(),
            },
            backend="PostgreSQL" if settings.database_url else "SQLite",
            events=replayed.events,
            fractions=fractions,
            fraction_id=fraction_id,
            week=iso_week(days[len(days) // 2]),
            now=now,
        )


def qa_pages(
    args: argparse.Namespace, data: QaData, served: tuple[str, bool], misses: list[str]
) -> None:
    url, nagle_off = served
    physician = signed_in(url, PHYSICIAN, "physician")
    admin = signed_in(url, "Ada Admin", "admin")
    detail, week = data.fraction_id, data.week
    pages = [
        Timed("worklist (physician, mine)", "/ui/worklist", physician),
        Timed("worklist ?scope=all (physician)", "/ui/worklist?scope=all", physician),
        Timed("worklist (admin: all)", "/ui/worklist", admin),
        Timed(f"fraction detail /{detail}", f"/ui/fractions/{detail}", physician),
        Timed(f"compliance ?week={week}", f"/ui/compliance?week={week}", physician),
        Timed(f"compliance.csv ?week={week}", f"/ui/compliance.csv?week={week}", admin),
        Timed("trend (12 weeks)", "/ui/trend", admin),
        Timed("reference: /ui/static/rtops.css", CSS, physician, reference=True),
        Timed("reference: /healthz", "/healthz", physician, reference=True),
    ]
    log(f"timing {len(pages)} QA paths x {args.requests} ...")
    time_pages(pages, args.requests)
    found = None
    if not args.no_browser:
        log(f"loading the worklist in Chromium x {args.loads} ...")
        cookie = physician.cookies[SESSION_COOKIE]
        found = first_paint(url, cookie, ["/ui/worklist", "/ui/sign-in"], args.loads)
    physician.close()
    admin.close()
    print(
        f"QA tracker: {data.events:,} events ({args.days} treatment days, {args.linacs} "
        f"linacs x {args.per_linac} fractions a day), {data.fractions:,} fractions; "
        f"{data.backend}; clock {data.now:%Y-%m-%d %H:%M} New York; {args.requests} requests "
        "per page"
    )
    page_table("QA tracker pages", pages, misses, nagle_off=nagle_off)
    if found is not None:
        paint_table(found, "/ui/worklist", misses)
    print()


def middle_fraction(factory: sessionmaker[Session]) -> tuple[int, int]:
    with factory() as session:
        count = session.scalar(select(func.count()).select_from(Fraction)) or 0
        middle = session.scalar(
            select(Fraction.id).order_by(Fraction.id).offset(count // 2).limit(1)
        )
    if middle is None:
        raise RuntimeError("the replay made no fractions")
    return count, middle


# ---------------------------------------------------------------- the SCP


def scp_rows(
    days: Sequence[date], linacs: int, per_linac: int, cbct_slices: int
) -> Iterator[list[dict[str, Any]]]:
    """The department's objects as index rows, a treatment day at a time: the QA data set's
    patients and times (a course's planning objects the evening before its first fraction)."""
    serial = 0

    def row(ae: str, sop_class: str, pid: str, series: str, when: datetime) -> dict[str, Any]:
        nonlocal serial
        serial += 1
        uid = f"1.2.826.0.1.3680043.10.543.{serial}"
        return {
            "sop_instance_uid": uid,
            "revision": 1,
            "sop_class_uid": sop_class,
            "sha256": f"{serial:064x}",
            "storage_key": f"{serial % 256:02x}/{uid}",
            "size": 526_000 if sop_class == CT_IMAGE else 2_400,
            "transfer_syntax_uid": "1.2.840.10008.1.2.1",
            "study_instance_uid": f"1.2.826.0.1.3680043.10.544.{pid}",
            "series_instance_uid": series,
            "patient_id": pid,
            "calling_ae": ae,
            "received_at": when.astimezone(UTC),
            "acquired_at": when.astimezone(UTC),
            "approval": None,
        }

    for index, day in enumerate(days):
        rows: list[dict[str, Any]] = []
        for linac in range(linacs):
            ae = f"TRUEBEAM{linac}"
            for slot in range(per_linac):
                offset = slot % FRACTIONS_PER_COURSE
                start = (index + offset) // FRACTIONS_PER_COURSE * FRACTIONS_PER_COURSE - offset
                pid = f"L{linac}-S{slot}-C{start}"
                when = datetime.combine(day, datetime.min.time(), NY) + timedelta(
                    hours=7 + slot // 6, minutes=(slot % 6) * 10
                )
                if index - start == 0:  # a new course: its planning objects the evening before
                    evening = when - timedelta(hours=14)
                    sim = f"1.2.826.0.1.3680043.10.545.{pid}.sim"
                    for _ in range(SIM_SLICES):
                        rows.append(row("CTSIM1", CT_IMAGE, pid, sim, evening))
                    # A series UID per object, of at most 64 characters (PostgreSQL holds
                    # the column to it; SQLite does not).
                    for n, sop_class in enumerate((RT_STRUCTURE_SET, RT_PLAN, RT_DOSE), 1):
                        rows.append(row("TPS1", sop_class, pid, f"{sim}.{n}", evening))
                cbct = f"1.2.826.0.1.3680043.10.546.{pid}.{index}"
                for n in range(cbct_slices):
                    rows.append(row(ae, CT_IMAGE, pid, cbct, when + timedelta(seconds=n // 4)))
                rows.append(row(ae, SPATIAL_REGISTRATION, pid, f"{cbct}.reg", when + _min(3)))
                rows.append(row(ae, RT_BEAMS_RECORD, pid, f"{cbct}.rec", when + _min(8)))
        yield rows


def _min(minutes: int) -> timedelta:
    return timedelta(minutes=minutes)


REGISTRY = """devices:
{linacs}
  - ae_title: CTSIM1
    role: ct_simulator
    machine: CTSim1
    site: Main
  - ae_title: TPS1
    role: tps
    machine: null
    site: Main
"""


@dataclass
class ScpData:
    config: dict[str, str]
    backend: str
    factory: sessionmaker[Session]
    days: list[date]  # treatment days, the last one today (or the last weekday)


@contextmanager
def scp_database(args: argparse.Namespace, tmp: Path) -> Iterator[ScpData]:
    """The SCP's database, migrated and empty (``fill_scp`` fills it), and a device registry
    of the department's linacs, its CT simulator and its TPS."""
    from services.scp_listener.app import SERVICE, TABLES
    from services.scp_listener.settings import ScpSettings
    from tests.databases import service_database

    registry = tmp / "devices.yaml"
    registry.write_text(
        REGISTRY.format(
            linacs="\n".join(
                f"  - ae_title: TRUEBEAM{n}\n    role: linac\n    machine: TrueBeam{n}\n"
                "    site: Main"
                for n in range(args.linacs)
            )
        )
    )
    base: dict[str, Any] = {
        "var_dir": tmp / "scp",
        "database_schema_prefix": f"bench_{uuid.uuid4().hex[:8]}_",
    }
    settings = ScpSettings(**base, scp_device_registry=registry)
    with service_database(settings, SERVICE, TABLES) as factory:
        yield ScpData(
            config={
                "var_dir": str(base["var_dir"]),
                "prefix": base["database_schema_prefix"],
                "registry": str(registry),
            },
            backend="PostgreSQL" if settings.database_url else "SQLite",
            factory=factory,
            days=list(reversed(business_days_back(datetime.now(NY).date(), args.days))),
        )


def arrival_hours(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` counted per device, SOP class and UTC hour, as the ingest counts them."""
    from services.scp_listener.store import hour_of

    counted: dict[tuple[str, str, datetime], list[Any]] = {}
    for r in rows:
        key = (r["calling_ae"], r["sop_class_uid"], hour_of(r["received_at"]))
        entry = counted.setdefault(key, [0, r["received_at"]])
        entry[0] += 1
        entry[1] = max(entry[1], r["received_at"])
    return [
        {"calling_ae": ae, "sop_class_uid": c, "hour": h, "objects": n, "last_received_at": last}
        for (ae, c, h), (n, last) in counted.items()
    ]


def fill_scp(args: argparse.Namespace, data: ScpData) -> int:
    from services.scp_listener.store import ArrivalHour, DicomObject

    log(f"inserting {args.days} treatment days of objects into the SCP's index ...")
    started, count = time.perf_counter(), 0
    table = DicomObject.__table__
    for rows in scp_rows(data.days, args.linacs, args.per_linac, args.cbct_slices):
        with data.factory.begin() as session:
            for first in range(0, len(rows), 5000):
                session.execute(insert(table), rows[first : first + 5000])
            # The hourly counts the ingest keeps beside each object (arrival_hour).
            session.execute(insert(ArrivalHour.__table__), arrival_hours(rows))
        count += len(rows)
    analyze(data.factory)
    log(f"  {count:,} rows in {time.perf_counter() - started:.0f} s")
    return count


def scp_pages(
    args: argparse.Namespace, data: ScpData, count: int, served: tuple[str, bool], misses: list[str]
) -> None:
    url, nagle_off = served
    days = data.days
    week_start = days[len(days) // 2] - timedelta(days=days[len(days) // 2].weekday())
    week_end = week_start + timedelta(days=6)
    mid = len(days) // 2
    patient = f"L{args.linacs // 2}-S0-C{mid // FRACTIONS_PER_COURSE * FRACTIONS_PER_COURSE}"
    admin = signed_in(url, "Ivan IT", "admin")
    device = f"TRUEBEAM{args.linacs // 2}"
    records = f"kind={RT_BEAMS_RECORD}&from={week_start}&to={week_end}"
    pages = [
        Timed("arrivals (no filter)", "/ui/arrivals", admin),
        Timed(f"arrivals ?device={device}", f"/ui/arrivals?device={device}", admin),
        Timed("arrivals ?kind=records&from&to (a week)", f"/ui/arrivals?{records}", admin),
        Timed(f"arrivals ?patient={patient}", f"/ui/arrivals?patient={patient}", admin),
        Timed("devices", "/ui/devices", admin),
        Timed("problems (500 listed)", "/ui/problems", admin),
        Timed("reference: /ui/static/rtops.css", CSS, admin, reference=True),
        Timed("reference: /healthz", "/healthz", admin, reference=True),
    ]
    log(f"timing {len(pages)} SCP paths x {args.requests} ...")
    time_pages(pages, args.requests)
    admin.close()
    print(
        f"SCP: {count:,} indexed objects ({args.days} treatment days to {days[-1]}, CBCT of "
        f"{args.cbct_slices} slices per fraction); {data.backend}; {args.requests} requests "
        "per page"
    )
    page_table("SCP pages", pages, misses, nagle_off=nagle_off)
    print()


def business_days_back(end: date, count: int) -> list[date]:
    days, day = [], end
    while len(days) < count:
        if day.weekday() < 5:
            days.append(day)
        day -= timedelta(days=1)
    return days


def analyze(factory: sessionmaker[Session]) -> None:
    from sqlalchemy import text

    with factory() as session:
        session.execute(text("ANALYZE"))
        session.commit()


# ---------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--days", type=int, default=60, help="treatment days (250: a year)")
    parser.add_argument("--linacs", type=int, default=10)
    parser.add_argument("--per-linac", type=int, default=60)
    parser.add_argument("--requests", type=int, default=20, help="timed requests per page")
    parser.add_argument("--loads", type=int, default=10, help="browser loads per page")
    parser.add_argument("--cbct-slices", type=int, default=88, help="CT slices per CBCT")
    parser.add_argument("--batch", type=int, default=CONSUMER_BATCH, help=argparse.SUPPRESS)
    parser.add_argument("--no-browser", action="store_true", help="skip the first paint")
    parser.add_argument("--no-scp", action="store_true", help="skip the SCP's pages")
    parser.add_argument("--serve", choices=("qa", "scp"), help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, json.loads(args.config))
        return
    if not args.no_browser and not Path(CHROMIUM).exists():
        log(f"no Chromium at {CHROMIUM}: the first paint is skipped")
        args.no_browser = True
    misses: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        qa = stack.enter_context(qa_data(args, Path(tmp)))
        scp = None if args.no_scp else stack.enter_context(scp_database(args, Path(tmp)))
        # Both servers start (import, connect) at once; the SCP's idles until its turn.
        log("starting the servers ...")
        qa_server = launch("qa", qa.config)
        scp_server = None if scp is None else launch("scp", scp.config)
        qa_url = stack.enter_context(server(qa_server))
        scp_url = None if scp_server is None else stack.enter_context(server(scp_server))
        qa_pages(args, qa, qa_url, misses)
        if scp is not None and scp_url is not None:
            scp_pages(args, scp, fill_scp(args, scp), scp_url, misses)
    print(f"targets: {'MISS: ' + '; '.join(misses) if misses else 'PASS (every page)'}")
    log("done")


if __name__ == "__main__":
    main()
