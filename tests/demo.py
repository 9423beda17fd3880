"""``rtops demo`` / ``make demo``: a simulated department sending its DICOM traffic to the running
suite, through the real SCP, from the devices' own AE titles.

Six fake patients (names ``Demo^...``, IDs ``DEMO-...``) are treated on the registry's linacs:
a prostate course in progress (with one couch shift beyond tolerance), a lung SBRT course every
other day, a twice-daily head and neck course, a breast course that is simulated, planned and
starts within the period, a palliative spine course and a brain course with one interrupted
fraction (cut by a machine fault, resumed half an hour later). Simulation CTs come from the CT
simulator's AE title, plans (approved by a physician) from the TPS's, and each fraction's CBCT
series, its registration onto the planning CT and its treatment record(s) from the linac's.
Times are clinic hours in ``RTOPS_CLINIC_TIMEZONE`` on the clinic's business days
(``RTOPS_CLINIC_CALENDAR``), and every DICOM date and time agrees with them.

``--days N`` sends the N days ending today (nothing later than now); ``--live`` then keeps
treating, one fraction every ``--interval`` seconds, stamped with the real time, until Ctrl-C.
The objects come from ``tests/dicom_factories.py``: one generator of synthetic DICOM for the
tests and the demo.
"""

from __future__ import annotations

import argparse
import logging
import random
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as clock
from pathlib import Path
from typing import Literal

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    RTBeamsTreatmentRecordStorage,
    RTPlanStorage,
    SpatialRegistrationStorage,
    Verification,
)

from services.qa_tracker.settings import QaSettings
from services.scp_listener.devices import Device, load_registry
from services.scp_listener.settings import ScpSettings
from shared.calendar import ClinicCalendar, clinic_calendar
from tests import dicom_factories as f

Pattern = Literal["daily", "twice_daily", "every_other_day"]
Kind = Literal["sim_ct", "plan", "fraction"]

# Twice-daily fractions are at least six hours apart (hyperfractionation practice).
BID_GAP = timedelta(hours=6, minutes=15)
TOLERANCE_MM = {"SBRT": 2.0, "default": 5.0}  # the QA tracker's default policy


@dataclass(frozen=True)
class Course:
    """One patient's course: who, what plan, how often, and where it starts.

    ``start`` is the business day of the first fraction, counted from the period's first
    business day (negative: the course was already running when the period began).
    """

    patient: f.PatientSpec
    label: str
    name: str
    site: str
    fractions: int
    dose_gy: float
    pattern: Pattern
    physician: str
    slot: clock
    start: int | None  # None: two thirds into the period
    technique: str = "default"
    sim_lead: int = 7  # business days from the simulation CT to the first fraction
    plan_lead: int = 3  # ... and from the plan's approval


@dataclass(frozen=True)
class Linac:
    ae_title: str
    machine: str


@dataclass
class Send:
    """What one device sends at one moment: a simulation CT, a plan, or a fraction's imaging
    and treatment record(s)."""

    at: datetime  # clinic-zone aware
    kind: Kind
    course: Course
    calling_ae: str
    machine: str | None = None
    fraction_number: int = 0
    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    beyond_tolerance: bool = False
    interrupted: bool = False
    plan_uid: str = ""
    frame_of_reference_uid: str = ""


@dataclass
class CourseState:
    course: Course
    plan_uid: str = field(default_factory=generate_uid)
    frame_of_reference_uid: str = field(default_factory=generate_uid)
    linac: Linac | None = None
    next_fraction: int = 1
    last_day: date | None = None


def department(seed: int = 7) -> list[Course]:
    """The simulated department's patients (obviously fake)."""

    def patient(n: int, name: str, birth: str) -> f.PatientSpec:
        return f.PatientSpec(
            patient_id=f"DEMO-{n:04d}", issuer="RTOPS-DEMO", name=name, birth_date=birth
        )

    olga, omar = "Oncologist^Olga", "Oncologist^Omar"
    return [
        Course(
            patient(1, "Demo^Alpha", "19520314"),
            "PROST",
            "Prostate VMAT 70Gy/28fx",
            "Prostate",
            28,
            2.5,
            "daily",
            olga,
            clock(8, 0),
            start=-5,
        ),
        Course(
            patient(2, "Demo^Bravo", "19470822"),
            "LUNG SBRT",
            "RUL SBRT 50Gy/5fx",
            "Lung",
            5,
            10.0,
            "every_other_day",
            omar,
            clock(9, 0),
            start=0,
            technique="SBRT",
        ),
        Course(
            patient(3, "Demo^Charlie", "19610105"),
            "HN BID",
            "Oropharynx 69.6Gy/58fx twice daily",
            "Head and Neck",
            58,
            1.2,
            "twice_daily",
            omar,
            clock(8, 30),
            start=-3,
        ),
        Course(
            patient(4, "Demo^Delta", "19740611"),
            "L BREAST",
            "Left breast 40Gy/15fx",
            "Breast",
            15,
            2.67,
            "daily",
            olga,
            clock(9, 30),
            start=None,  # simulated, planned and started within the period
            sim_lead=5,
            plan_lead=2,
        ),
        Course(
            patient(5, "Demo^Echo", "19390930"),
            "T-SPINE",
            "T10 palliative 30Gy/10fx",
            "Spine",
            10,
            3.0,
            "daily",
            olga,
            clock(10, 0),
            start=1,
        ),
        Course(
            patient(6, "Demo^Foxtrot", "19580227"),
            "BRAIN",
            "Brain 60Gy/30fx",
            "Brain",
            30,
            2.0,
            "daily",
            omar,
            clock(10, 30),
            start=-12,
        ),
    ]


@dataclass
class Schedule:
    sends: list[Send]
    states: dict[str, CourseState]
    period: tuple[date, date]
    business_days: list[date]

    @property
    def fractions(self) -> list[Send]:
        return [s for s in self.sends if s.kind == "fraction"]


def _business_day(calendar: ClinicCalendar, anchor: date, offset: int) -> date:
    """The ``offset``-th business day from ``anchor`` (itself a business day)."""
    day, step = anchor, 1 if offset >= 0 else -1
    for _ in range(abs(offset)):
        day += timedelta(days=step)
        while not calendar.is_business_day(day):
            day += timedelta(days=step)
    return day


def _at(calendar: ClinicCalendar, day: date, slot: clock, minutes: float = 0.0) -> datetime:
    moment = datetime.combine(day, slot, tzinfo=calendar.zone) + timedelta(minutes=minutes)
    return moment.replace(microsecond=0)


def _shift(rng: random.Random, technique: str, beyond: bool) -> tuple[float, float, float]:
    limit = TOLERANCE_MM.get(technique, TOLERANCE_MM["default"])
    if beyond:
        return (round(rng.uniform(-1, 1), 1), round(limit + 2.4, 1), round(rng.uniform(-1, 1), 1))
    spread = limit * 0.6
    return tuple(round(rng.uniform(-spread, spread), 1) for _ in range(3))  # type: ignore[return-value]


def schedule(
    *,
    now: datetime,
    days: int,
    calendar: ClinicCalendar,
    linacs: list[Linac],
    ct_ae: str,
    tps_ae: str,
    seed: int = 7,
) -> Schedule:
    """Everything the department sends in the ``days`` calendar days ending at ``now``
    (clinic time), in the order it happens. Simulation CTs and plans of courses that started
    before the period are sent too (dated when they happened), so every fraction has its plan.
    """
    if not linacs:
        raise ValueError("no linac to treat on")
    rng = random.Random(seed)
    local_now = now.astimezone(calendar.zone)
    last = local_now.date()
    first = last - timedelta(days=max(days, 0) - 1)
    business = [
        d
        for d in (first + timedelta(days=i) for i in range(max(days, 0)))
        if calendar.is_business_day(d)
    ]
    anchor = business[0] if business else _business_day(calendar, last, 1)
    n = len(business)
    sends: list[Send] = []
    states: dict[str, CourseState] = {}
    for index, course in enumerate(department(seed)):
        start = max(n * 2 // 3, 1) if course.start is None else course.start
        course = Course(**{**course.__dict__, "start": start})
        state = CourseState(course, linac=linacs[index % len(linacs)])
        states[course.patient.patient_id] = state
        linac = state.linac
        assert linac is not None
        first_day = _business_day(calendar, anchor, start)
        sim_day = _business_day(calendar, first_day, -course.sim_lead)
        plan_day = _business_day(calendar, first_day, -course.plan_lead)
        sim_at = _at(calendar, sim_day, clock(13, 0), 20 * index)
        if sim_at > local_now:
            continue  # not even simulated yet
        sends.append(Send(sim_at, "sim_ct", course, ct_ae))
        plan_at = _at(calendar, plan_day, clock(16, 40))
        if plan_at > local_now:
            continue
        sends.append(Send(plan_at, "plan", course, tps_ae, machine=linac.machine))
        # Fractions: this course's treatment days, from its first day up to now.
        step = 2 if course.pattern == "every_other_day" else 1
        per_day = 2 if course.pattern == "twice_daily" else 1
        number, k = 1, 0
        while number <= course.fractions:
            day = _business_day(calendar, first_day, k * step)
            k += 1
            if day > last:
                break
            for session in range(per_day):
                if number > course.fractions:
                    break
                jitter = rng.uniform(-6, 6)
                at = _at(calendar, day, course.slot, jitter) + session * BID_GAP
                if day >= first and at <= local_now:
                    sends.append(
                        Send(
                            at,
                            "fraction",
                            course,
                            linac.ae_title,
                            machine=linac.machine,
                            fraction_number=number,
                        )
                    )
                state.next_fraction, state.last_day = number + 1, day
                number += 1
    sends.sort(key=lambda s: s.at)
    fractions = [s for s in sends if s.kind == "fraction"]
    # One couch shift beyond tolerance (the prostate course, mid-period) and one interrupted
    # fraction (the brain course, early in the period); small shifts everywhere else.
    middle = business[n // 2] if business else None
    early = business[min(1, n - 1)] if business else None
    for send in fractions:
        pid = send.course.patient.patient_id
        send.beyond_tolerance = pid == "DEMO-0001" and send.at.date() == middle
        send.interrupted = pid == "DEMO-0006" and send.at.date() == early
        send.shift_mm = _shift(rng, send.course.technique, send.beyond_tolerance)
    for send in sends:
        state = states[send.course.patient.patient_id]
        send.plan_uid, send.frame_of_reference_uid = (
            state.plan_uid,
            state.frame_of_reference_uid,
        )
    return Schedule(sends, states, (first, last), business)


# ------------------------------------------------------------------ DICOM objects


def _da(moment: datetime) -> str:
    return moment.strftime("%Y%m%d")


def _tm(moment: datetime) -> str:
    return moment.strftime("%H%M%S")


def render(send: Send, *, cbct_slices: int, image_size: int) -> list[Dataset]:
    """The objects of one send, in the order the device sends them."""
    c = send.course
    if send.kind == "sim_ct":
        return f.sim_ct_series(
            n_slices=max(cbct_slices * 2, 2),
            rows=image_size,
            columns=image_size,
            acquisition_date=_da(send.at),
            acquisition_time=_tm(send.at),
            frame_of_reference_uid=send.frame_of_reference_uid,
            series_description=f"Sim CT {c.site}",
            patient=c.patient,
        )
    if send.kind == "plan":
        created = send.at - timedelta(hours=3)
        return [
            f.rt_plan(
                plan_uid=send.plan_uid,
                label=c.label,
                name=c.name,
                fractions=c.fractions,
                dose_per_fraction_gy=c.dose_gy,
                machine=send.machine or "TrueBeam1",
                arc=True,
                mlc_leaf_pairs=4,
                modulated=True,
                reviewer=c.physician,
                review_date=_da(send.at),
                review_time=_tm(send.at - timedelta(minutes=10)),
                plan_date=_da(created),
                plan_time=_tm(created),
                frame_of_reference_uid=send.frame_of_reference_uid,
                treatment_site=c.site,
                patient=c.patient,
            )
        ]
    machine = send.machine or "TrueBeam1"
    cbct_at = send.at - timedelta(minutes=7)
    cbct = f.cbct_series(
        n_slices=cbct_slices,
        rows=image_size,
        columns=image_size,
        machine_station=machine,
        acquisition_date=_da(cbct_at),
        acquisition_time=_tm(cbct_at),
        patient=c.patient,
    )
    reg_at = send.at - timedelta(minutes=3)
    registration = f.spatial_registration(
        fixed_for_uid=send.frame_of_reference_uid,
        moving_for_uid=str(cbct[0].FrameOfReferenceUID),
        moving_series_uid=str(cbct[0].SeriesInstanceUID),
        moving_instance_uids=[str(s.SOPInstanceUID) for s in cbct],
        translation_mm=send.shift_mm,
        content_date=_da(reg_at),
        content_time=_tm(reg_at),
        station=machine,
        study_uid=str(cbct[0].StudyInstanceUID),
        patient=c.patient,
    )
    common = {
        "plan_uid": send.plan_uid,
        "fraction_number": send.fraction_number,
        "fractions_planned": c.fractions,
        "machine": machine,
        "patient": c.patient,
        "study_uid": str(cbct[0].StudyInstanceUID),
    }
    if not send.interrupted:
        record = f.treatment_record(
            treatment_date=_da(send.at),
            treatment_time=_tm(send.at),
            override=send.beyond_tolerance,
            **common,  # type: ignore[arg-type]
        )
        return [*cbct, registration, record]
    # A machine fault cuts beam 2 at 45 %; the rest is delivered 35 minutes later.
    cut = f.treatment_record(
        treatment_date=_da(send.at),
        treatment_time=_tm(send.at),
        delivered_fraction=0.45,
        interruption_status="MACHINE",
        **common,  # type: ignore[arg-type]
    )
    resumed_at = send.at + timedelta(minutes=35)
    resumed = f.treatment_record(
        treatment_date=_da(resumed_at),
        treatment_time=_tm(resumed_at),
        beams=1,
        first_beam_number=2,
        meterset_mu=120.0 * 0.55,
        **common,  # type: ignore[arg-type]
    )
    return [*cbct, registration, cut, resumed]


def object_count(send: Send, cbct_slices: int) -> int:
    if send.kind == "sim_ct":
        return max(cbct_slices * 2, 2)
    if send.kind == "plan":
        return 1
    return cbct_slices + 2 + (1 if send.interrupted else 0)


# ------------------------------------------------------------------ sending


class DemoError(Exception):
    """A one-line reason the demo cannot go on."""


CONTEXTS = (
    CTImageStorage,
    RTPlanStorage,
    SpatialRegistrationStorage,
    RTBeamsTreatmentRecordStorage,
)


class Sender:
    """C-STORE from each device's own AE title; one association per calling AE, kept open."""

    def __init__(self, host: str, port: int, called_ae: str, *, timeout: float = 30.0) -> None:
        self.host, self.port, self.called_ae, self.timeout = host, port, called_ae, timeout
        self.assocs: dict[str, object] = {}
        self.sent = 0
        self.failed: list[str] = []

    def _ae(self, calling: str) -> AE:
        ae = AE(ae_title=calling)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        return ae

    def _refusal(self, calling: str, assoc: object) -> DemoError:
        where = f"{self.host}:{self.port} (called AE {self.called_ae})"
        if getattr(assoc, "is_rejected", False):
            return DemoError(
                f"the DICOM SCP at {where} refused the association from {calling}: is that "
                "AE title in its device registry (services/scp_listener/devices.yaml), and "
                "is the called AE title right (--called-ae)?"
            )
        return DemoError(
            f"no DICOM SCP answers at {where}: start the suite first (`make run` in another "
            "terminal) or pass --host/--port"
        )

    def echo(self, calling: str) -> None:
        ae = self._ae(calling)
        ae.add_requested_context(Verification)
        assoc = ae.associate(self.host, self.port, ae_title=self.called_ae)
        if not assoc.is_established:
            raise self._refusal(calling, assoc)
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
        if not status or getattr(status, "Status", None) != 0:
            raise DemoError(f"C-ECHO from {calling} to {self.host}:{self.port} failed")

    def _association(self, calling: str):  # type: ignore[no-untyped-def]
        assoc = self.assocs.get(calling)
        if assoc is not None and assoc.is_established:  # type: ignore[attr-defined]
            return assoc
        ae = self._ae(calling)
        for uid in CONTEXTS:
            ae.add_requested_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        assoc = ae.associate(
            self.host,
            self.port,
            ae_title=self.called_ae,
            evt_handlers=[(evt.EVT_CONN_OPEN, _no_delay)],
        )
        if not assoc.is_established:
            raise self._refusal(calling, assoc)
        self.assocs[calling] = assoc
        return assoc

    def store(self, calling: str, ds: Dataset) -> None:
        for attempt in (1, 2):
            assoc = self._association(calling)
            status = assoc.send_c_store(ds)
            if status and "Status" in status:
                if status.Status != 0:
                    self.failed.append(f"{ds.Modality} {ds.SOPInstanceUID}: 0x{status.Status:04X}")
                self.sent += 1
                return
            self.assocs.pop(calling, None)  # aborted or timed out: one fresh association
            if attempt == 2:
                raise DemoError(f"the SCP at {self.host}:{self.port} stopped answering C-STORE")

    def close(self) -> None:
        for assoc in self.assocs.values():
            if assoc.is_established:  # type: ignore[attr-defined]
                assoc.release()  # type: ignore[attr-defined]
        self.assocs.clear()


def _no_delay(event: evt.Event) -> None:
    # Without TCP_NODELAY each C-STORE waits ~40 ms on Nagle + delayed ACK.
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Progress:
    """A plain-text progress bar on stderr (one line redrawn on a terminal, else a line every
    10 %)."""

    def __init__(self, total: int, stream=sys.stderr) -> None:  # type: ignore[no-untyped-def]
        self.total, self.done, self.stream = max(total, 1), 0, stream
        self.tty = stream.isatty()
        self.last_decile = -1

    def advance(self, count: int, label: str) -> None:
        self.done += count
        share = min(self.done / self.total, 1.0)
        if self.tty:
            bar = "#" * int(share * 30)
            self.stream.write(f"\r[{bar:<30}] {self.done}/{self.total} objects  {label:<40}")
            self.stream.flush()
        elif int(share * 10) != self.last_decile:
            self.last_decile = int(share * 10)
            self.stream.write(f"  {share:4.0%}  {self.done}/{self.total} objects  {label}\n")
            self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _label(send: Send) -> str:
    when = send.at.strftime("%a %Y-%m-%d %H:%M")
    what = {"sim_ct": "simulation CT", "plan": "plan", "fraction": "fraction"}[send.kind]
    number = f" {send.fraction_number}" if send.kind == "fraction" else ""
    return f"{when} {send.course.patient.name} {what}{number}"


def send_all(
    sends: list[Send], sender: Sender, *, cbct_slices: int, image_size: int, progress: Progress
) -> dict[str, int]:
    counts = {"sim_ct": 0, "plan": 0, "fraction": 0, "objects": 0}
    for send in sends:
        objects = render(send, cbct_slices=cbct_slices, image_size=image_size)
        for ds in objects:
            sender.store(send.calling_ae, ds)
        counts[send.kind] += 1
        counts["objects"] += len(objects)
        progress.advance(len(objects), _label(send))
    return counts


# ------------------------------------------------------------------ live


class Live:
    """Fractions stamped with the real time: each round treats the next course not yet
    treated today; when every course is, a new patient is simulated, planned and starts."""

    def __init__(self, plan: Schedule, calendar: ClinicCalendar, linacs: list[Linac], seed: int):
        self.calendar, self.linacs = calendar, linacs
        self.rng = random.Random(seed + 1)
        self.states = [s for s in plan.states.values() if s.last_day is not None]
        self.admitted = 0
        self.turn = 0

    def next(self, now: datetime, ct_ae: str, tps_ae: str) -> list[Send]:
        today = now.astimezone(self.calendar.zone).date()
        local = now.astimezone(self.calendar.zone).replace(microsecond=0)
        for _ in range(len(self.states)):
            state = self.states[self.turn % len(self.states)]
            self.turn += 1
            if state.next_fraction <= state.course.fractions and state.last_day != today:
                return [self._fraction(state, local)]
        # Everybody is treated today: a new patient.
        self.admitted += 1
        n = 100 + self.admitted
        base = self.rng.choice(department())
        course = Course(
            **{
                **base.__dict__,
                "patient": f.PatientSpec(
                    patient_id=f"DEMO-{n:04d}",
                    issuer="RTOPS-DEMO",
                    name=f"Demo^Live{self.admitted:03d}",
                    birth_date=base.patient.birth_date,
                ),
                "start": 0,
            }
        )
        linac = self.linacs[self.admitted % len(self.linacs)]
        state = CourseState(course, linac=linac)
        self.states.append(state)
        sim = Send(local - timedelta(days=7), "sim_ct", course, ct_ae)
        plan = Send(local - timedelta(days=2), "plan", course, tps_ae, machine=linac.machine)
        for send in (sim, plan):
            send.plan_uid, send.frame_of_reference_uid = (
                state.plan_uid,
                state.frame_of_reference_uid,
            )
        return [sim, plan, self._fraction(state, local)]

    def _fraction(self, state: CourseState, local: datetime) -> Send:
        assert state.linac is not None
        beyond = self.rng.random() < 0.08
        interrupted = not beyond and self.rng.random() < 0.05
        # Stamped just before now (an interrupted one was begun 40 minutes ago and resumed
        # 35 minutes later), so that no time lies in the future.
        send = Send(
            local - timedelta(minutes=40 if interrupted else 4),
            "fraction",
            state.course,
            state.linac.ae_title,
            machine=state.linac.machine,
            fraction_number=state.next_fraction,
            shift_mm=_shift(self.rng, state.course.technique, beyond),
            beyond_tolerance=beyond,
            interrupted=interrupted,
            plan_uid=state.plan_uid,
            frame_of_reference_uid=state.frame_of_reference_uid,
        )
        state.next_fraction += 1
        state.last_day = local.date()
        return send


# ------------------------------------------------------------------ command line


def _linacs(titles: list[str] | None, registry: dict[str, Device]) -> list[Linac]:
    if titles:
        return [Linac(t, (registry[t].machine if t in registry else None) or t) for t in titles]
    return [
        Linac(d.ae_title, d.machine or d.ae_title) for d in registry.values() if d.role == "linac"
    ]


def _first_of(role: str, registry: dict[str, Device], fallback: str) -> str:
    return next((d.ae_title for d in registry.values() if d.role == role), fallback)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    settings = ScpSettings()
    parser = argparse.ArgumentParser(
        prog="rtops demo",
        description="Send a simulated department's DICOM traffic (simulation CTs, plans, CBCTs, "
        "registrations, treatment records of six fake patients) to the running suite's SCP. "
        "Start the suite first (`make run`).",
    )
    parser.add_argument(
        "--days", type=int, default=14, help="calendar days to send, ending today (default 14)"
    )
    parser.add_argument(
        "--until",
        type=date.fromisoformat,
        help="end the period on this day (YYYY-MM-DD, the whole day) instead of now",
    )
    parser.add_argument(
        "--live",
        action="store_true",
        help="after the period, keep treating: one fraction every --interval seconds, "
        "stamped with the real time, until Ctrl-C",
    )
    parser.add_argument(
        "--interval", type=float, default=5.0, help="seconds between live fractions"
    )
    parser.add_argument(
        "--host",
        default=_connect_host(settings.scp_host),
        help="the SCP's host (default %(default)s)",
    )
    parser.add_argument("--port", type=int, default=settings.scp_port, help="default %(default)s")
    parser.add_argument(
        "--called-ae",
        default=settings.scp_ae_title,
        help="the SCP's AE title (default %(default)s)",
    )
    parser.add_argument(
        "--linac-ae",
        action="append",
        help="calling AE title of a linac (repeat for several; default: every linac in the "
        "device registry)",
    )
    parser.add_argument("--ct-ae", help="calling AE title of the CT simulator (default: registry)")
    parser.add_argument("--tps-ae", help="calling AE title of the TPS (default: registry)")
    parser.add_argument(
        "--cbct-slices", type=int, default=16, help="slices per CBCT (default %(default)s)"
    )
    parser.add_argument(
        "--image-size", type=int, default=128, help="CT rows and columns (default %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed (shifts, times)")
    parser.add_argument(
        "--registry",
        type=Path,
        default=settings.scp_device_registry,
        help="device registry YAML for the AE titles (default RTOPS_SCP_DEVICE_REGISTRY)",
    )
    return parser.parse_args(argv)


def _connect_host(listen: str) -> str:
    return "127.0.0.1" if listen in ("0.0.0.0", "::", "") else listen


def main(argv: list[str] | None = None, *, clock_now: Callable[[], datetime] | None = None) -> int:
    args = parse_args(argv)
    settings = ScpSettings()
    calendar = clinic_calendar(settings)
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    out = sys.stderr
    try:
        registry = load_registry(args.registry) if args.registry.exists() else {}
        linacs = _linacs(args.linac_ae, registry)
        if not linacs:
            raise DemoError("no linac: pass --linac-ae or list one in the device registry")
        ct_ae = args.ct_ae or _first_of("ct_simulator", registry, "CTSIM1")
        tps_ae = args.tps_ae or _first_of("tps", registry, "TPS1")
        now = (clock_now or (lambda: datetime.now(calendar.zone)))()
        if args.until is not None:
            now = datetime.combine(args.until, clock(23, 59), tzinfo=calendar.zone)
        plan = schedule(
            now=now,
            days=args.days,
            calendar=calendar,
            linacs=linacs,
            ct_ae=ct_ae,
            tps_ae=tps_ae,
            seed=args.seed,
        )
        sender = Sender(args.host, args.port, args.called_ae)
        for title in dict.fromkeys([*(linac.ae_title for linac in linacs), ct_ae, tps_ae]):
            sender.echo(title)
        total = sum(object_count(s, args.cbct_slices) for s in plan.sends)
        first, last = plan.period
        print(
            f"rtops demo: {first} .. {last} ({len(plan.business_days)} business days, "
            f"{calendar.zone.key}) to {args.called_ae}@{args.host}:{args.port}: "
            f"{len(plan.fractions)} fractions of {len(plan.states)} patients, {total} objects",
            file=out,
            flush=True,
        )
        started = time.monotonic()
        try:
            counts = send_all(
                plan.sends,
                sender,
                cbct_slices=args.cbct_slices,
                image_size=args.image_size,
                progress=(progress := Progress(total, out)),
            )
            progress.finish()
        finally:
            sender.close()
        elapsed = time.monotonic() - started
        print(
            f"rtops demo: sent {counts['objects']} objects in {elapsed:.1f} s: "
            f"{counts['sim_ct']} simulation CTs, {counts['plan']} plans, "
            f"{counts['fraction']} fractions (CBCT, registration, treatment record); "
            f"{len(sender.failed)} refused",
            file=out,
        )
        _explain(settings, args, out)
        if args.live:
            _live(plan, calendar, linacs, sender, args, ct_ae, tps_ae, out)
        if sender.failed:
            print("rtops demo: refused: " + "; ".join(sender.failed[:5]), file=out)
            return 1
        return 0
    except DemoError as error:
        print(f"rtops demo: {error}", file=out)
        return 2
    except KeyboardInterrupt:
        print("\nrtops demo: stopped", file=out)
        return 0


def _explain(settings: ScpSettings, args: argparse.Namespace, out) -> None:  # type: ignore[no-untyped-def]
    quiet = settings.scp_series_quiet_s
    print(
        f"rtops demo: the SCP publishes a CBCT series once it has been quiet for "
        f"RTOPS_SCP_SERIES_QUIET_S ({quiet:g} s here, 30 s by default), so the last fractions "
        f"show as imaged about {quiet:g} s from now. See the worklist:\n"
        f"  TOKEN=$(.venv/bin/rtops token --role physician --user demo)\n"
        f'  curl -H "Authorization: Bearer $TOKEN" localhost:{QaSettings().qa_http_port}'
        "/v1/fractions",
        file=out,
        flush=True,
    )


def _live(
    plan: Schedule,
    calendar: ClinicCalendar,
    linacs: list[Linac],
    sender: Sender,
    args: argparse.Namespace,
    ct_ae: str,
    tps_ae: str,
    out,  # type: ignore[no-untyped-def]
) -> None:
    live = Live(plan, calendar, linacs, args.seed)
    print(f"rtops demo: live, one fraction every {args.interval:g} s; Ctrl-C stops", file=out)
    try:
        while True:
            sends = live.next(datetime.now(calendar.zone), ct_ae, tps_ae)
            for send in sends:
                for ds in render(send, cbct_slices=args.cbct_slices, image_size=args.image_size):
                    sender.store(send.calling_ae, ds)
                extra = ""
                if send.beyond_tolerance:
                    extra = f" (shift {max(map(abs, send.shift_mm)):.1f} mm: beyond tolerance)"
                elif send.interrupted:
                    extra = " (interrupted, resumed)"
                print(f"  {_label(send)}{extra}", file=out, flush=True)
            sender.close()
            time.sleep(args.interval)
    finally:
        sender.close()


if __name__ == "__main__":
    raise SystemExit(main())
