"""The patient timeline: what each service of the suite knows about one patient, asked of each
service's REST API with the signed-in user's token (never another service's database).

Each service with pages has a *source* here: a function that reads its API (the API contract
is the interface: ``docs/`` of each service) and turns the answer into timeline entries. The
services asked are those in ``RTOPS_UI_SERVICE_URLS``; a service that is down, too slow or
refuses the user's role is a section that says so, the rest still shows. Each API audits its
own read under the user's name; the page that hosts the timeline audits the page read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from itertools import groupby
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import httpx
from pydicom.uid import UID

from shared.ui.filters import person_name

TIMEOUT_S = 5.0
IMAGING = {  # shared.events.dicom's classifications, as staff say them
    "cbct": "CBCT",
    "sim_ct": "Simulation CT",
    "kv_2d": "kV images",
    "mv_portal": "MV portal images",
    "drr": "DRR",
    "other": "Images",
}
RECENT_DETAILS = 10  # fractions whose images and reviews are read one by one


@dataclass(frozen=True)
class Entry:
    at: datetime
    service: str
    kind: str  # fraction, review, imaging, object, ...: the template's badge
    title: str
    detail: str = ""
    href: str | None = None
    status: str | None = None


@dataclass(frozen=True)
class Section:
    service: str
    label: str
    state: str  # ok, forbidden, unavailable
    message: str = ""
    count: int = 0


@dataclass
class Timeline:
    patient_id: str
    entries: list[Entry] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    patient_name: str | None = None

    def days(self, zone: str) -> list[tuple[date, list[Entry]]]:
        """Entries newest first, grouped by their day in the clinic's ``zone``."""
        tz = ZoneInfo(zone)
        ordered = sorted(self.entries, key=lambda e: e.at, reverse=True)
        return [
            (day, list(group))
            for day, group in groupby(ordered, key=lambda e: e.at.astimezone(tz).date())
        ]


class SourceError(Exception):
    def __init__(self, state: str, message: str) -> None:
        super().__init__(message)
        self.state = state


Source = Callable[[httpx.AsyncClient, str, str], Awaitable[tuple[list[Entry], str | None]]]


async def _get(client: httpx.AsyncClient, url: str, **params: Any) -> Any:
    try:
        answer = await client.get(url, params=params)
    except httpx.TimeoutException:
        raise SourceError("unavailable", "did not answer in time") from None
    except httpx.HTTPError as exc:
        raise SourceError("unavailable", f"not reachable ({type(exc).__name__})") from None
    if answer.status_code in (401, 403):
        raise SourceError("forbidden", _detail(answer) or "not visible to your role")
    if answer.status_code >= 400:
        raise SourceError("unavailable", f"answered {answer.status_code}: {_detail(answer)}")
    return answer.json()


def _detail(answer: httpx.Response) -> str:
    try:
        return str(answer.json().get("detail", ""))
    except ValueError:
        return ""


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _at(value: str | None) -> datetime:
    if not value:
        return EPOCH
    at = datetime.fromisoformat(value)
    return at if at.tzinfo else at.replace(tzinfo=UTC)  # the APIs answer in UTC


async def qa_tracker(
    client: httpx.AsyncClient, base: str, patient_id: str
) -> tuple[list[Entry], str | None]:
    """Treated fractions with their review state; for the latest few, imaging and reviews."""
    page = await _get(client, f"{base}/v1/fractions", patient_id=patient_id, limit=500)
    fractions = page["items"]
    entries: list[Entry] = []
    for f in fractions:
        number = f["fraction_number"] if f["fraction_number"] is not None else "?"
        detail = [f.get("machine") or ""]
        if f.get("correction_mm") is not None:
            detail.append(f"largest shift {f['correction_mm']:.1f} mm")
        if f.get("physician"):
            detail.append(person_name(f["physician"]))
        entries.append(
            Entry(
                at=_at(f["treated_at"]),
                service="qa_tracker",
                kind="fraction",
                title=f"Fraction {number} treated",
                detail=" · ".join(d for d in detail if d),
                href=f"{base}/ui/fractions/{f['id']}",
                status=f["review_status"],
            )
        )
    details = await asyncio.gather(
        *(_get(client, f"{base}/v1/fractions/{f['id']}") for f in fractions[:RECENT_DETAILS])
    )
    for d in details:
        number = d["fraction_number"] if d["fraction_number"] is not None else "?"
        for image in d["imaging"]:
            entries.append(
                Entry(
                    at=_at(image["acquired_at"]),
                    service="qa_tracker",
                    kind="imaging",
                    title=f"{IMAGING.get(image['classification'], 'Images')} for fraction {number}",
                    detail=f"{image['instance_count']} images · {image.get('machine') or ''}",
                )
            )
        for review in d["reviews"]:
            entries.append(
                Entry(
                    at=_at(review["reviewed_at"]),
                    service="qa_tracker",
                    kind="review",
                    title=f"Fraction {number} {review['decision']}",
                    detail=" · ".join(
                        x
                        for x in (person_name(review["physician"]), review.get("comment") or "")
                        if x
                    ),
                    status=review["decision"],
                )
            )
    return entries, None


async def scp_listener(
    client: httpx.AsyncClient, base: str, patient_id: str
) -> tuple[list[Entry], str | None]:
    """What arrived over DICOM: one entry per series (a CBCT is hundreds of objects), or per
    object where it has no series."""
    page = await _get(client, f"{base}/v1/objects", patient_id=patient_id, limit=500)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for o in page["items"]:
        key = (o.get("series_instance_uid") or o["sop_instance_uid"], o["sop_class_uid"])
        groups.setdefault(key, []).append(o)
    entries = []
    for (_, sop_class), objects in groups.items():
        first = min(objects, key=lambda o: o["received_at"])
        kind = UID(sop_class).name if UID(sop_class).is_valid else sop_class
        count = f"{len(objects)} " if len(objects) > 1 else ""
        entries.append(
            Entry(
                at=_at(first["received_at"]),
                service="scp_listener",
                kind="object",
                title=f"Received {count}{kind.removesuffix(' Storage')}",
                detail=f"from {first['calling_ae']}",
                href=f"{base}/ui/arrivals?device={quote(first['calling_ae'])}",
            )
        )
    more = "the 500 latest objects are shown" if page.get("next_cursor") else None
    return entries, more


def _service_day(value: str) -> datetime:
    """A date of service (a clinic date, no time) as the timeline's instant: noon UTC, which
    is that same date in every zone from UTC-11 to UTC+11."""
    return datetime.combine(date.fromisoformat(value), time(12), tzinfo=UTC)


async def billing(
    client: httpx.AsyncClient, base: str, patient_id: str
) -> tuple[list[Entry], str | None]:
    """Charges by date of service: the code with its modifiers and units, ready or on hold
    (with the hold's reason); each links to its course's charge timeline."""
    page = await _get(client, f"{base}/v1/charges", patient_id=patient_id, limit=500)
    entries = []
    for c in page["items"]:
        code = "-".join([c["cpt"], *c["modifiers"]])
        units = f"{c['units']} unit{'' if c['units'] == 1 else 's'}"
        held = c["status"] == "hold"
        reason = (c.get("hold_reason") or "").replace("_", " ")
        detail = [units, f"on hold: {reason}" if held else "", c.get("rule") or ""]
        entries.append(
            Entry(
                at=_service_day(c["service_date"]),
                service="billing",
                kind="charge",
                title=f"Charge {code}",
                detail=" · ".join(d for d in detail if d),
                href=f"{base}/ui/courses/{quote(c['course_id'], safe='')}",
                status="on_hold" if held else "ready",
            )
        )
    more = "the 500 latest charges are shown" if page.get("next_cursor") else None
    return entries, more


async def documents(
    client: httpx.AsyncClient, base: str, patient_id: str
) -> tuple[list[Entry], str | None]:
    """Plan versions (when each was received, its checklist and flags) and the letters to the
    referring provider; each links to the documents service's pages."""
    versions = await _get(client, f"{base}/v1/plans", patient_id=patient_id)
    letters = await _get(client, f"{base}/v1/letters", patient_id=patient_id)
    entries = []
    for v in versions:
        missing = ", ".join(m.replace("_", " ") for m in v["missing_documents"])
        flags = ", ".join(f.replace("_", " ") for f in v["flags"])
        detail = [
            v.get("approval_status") or "",
            f"missing: {missing}" if missing else "documents complete",
            f"flagged: {flags}" if flags else "",
        ]
        entries.append(
            Entry(
                at=_at(v["revisions"][0]["received_at"] if v["revisions"] else None),
                service="documents",
                kind="plan",
                title=f"Plan version {v['version']}: {v.get('label') or 'unnamed'}",
                detail=" · ".join(d for d in detail if d),
                href=f"{base}/ui/plans?patient={quote(patient_id, safe='')}",
                status="flagged" if flags else ("complete" if not missing else "incomplete"),
            )
        )
    for letter in letters:
        entries.append(
            Entry(
                at=_at(letter["drafted_at"]),
                service="documents",
                kind="letter",
                title="Letter to the referring provider",
                detail=letter["facts"].get("referring_provider") or "",
                href=f"{base}/ui/letters?status=&letter={letter['id']}",
                status=letter["status"],
            )
        )
    return entries, None


async def scheduler(
    client: httpx.AsyncClient, base: str, patient_id: str
) -> tuple[list[Entry], str | None]:
    """Simulation requests: a booked or performed simulation at its time (room, therapists,
    the proceduralist appointment), an open request when it was made, with what blocks it."""
    requests = await _get(client, f"{base}/v1/simulation-requests", patient_id=patient_id)
    entries = []
    for r in requests:
        booking = r.get("booking")
        if booking:
            sim = booking["simulation"]
            procedure = booking.get("procedure")
            detail = [sim["room"], ", ".join(sim["therapists"])]
            if procedure:
                detail.append(f"procedure {procedure['start'][:16]} ({procedure['proceduralist']})")
            at, title = _at(sim["start"]), f"Simulation CT: {r['site']}"
        else:
            blocking = ", ".join(b.replace("_", " ") for b in r["blocking"])
            detail = [r["urgency"], f"blocked: {blocking}" if blocking else ""]
            at, title = _at(r["created_at"]), f"Simulation requested: {r['site']}"
        entries.append(
            Entry(
                at=at,
                service="scheduler",
                kind="simulation",
                title=title,
                detail=" · ".join(d for d in detail if d),
                href=f"{base}/ui/queue" if not booking else f"{base}/ui/calendar",
                status=r["status"],
            )
        )
    return entries, None


SOURCES: dict[str, Source] = {
    "qa_tracker": qa_tracker,
    "scp_listener": scp_listener,
    "scheduler": scheduler,
    "documents": documents,
    "billing": billing,
}


async def gather_timeline(
    patient_id: str,
    bases: Mapping[str, str],
    labels: Mapping[str, str],
    token: str,
    *,
    mounts: Mapping[str, httpx.AsyncBaseTransport] | None = None,
) -> Timeline:
    """Asks every service in ``bases`` that has a source, at once."""
    timeline = Timeline(patient_id)
    asked = [(name, base.rstrip("/")) for name, base in bases.items() if name in SOURCES]
    async with httpx.AsyncClient(
        headers={"Authorization": f"Bearer {token}"},
        timeout=TIMEOUT_S,
        mounts=dict(mounts or {}),
    ) as client:
        answers = await asyncio.gather(
            *(SOURCES[name](client, base, patient_id) for name, base in asked),
            return_exceptions=True,
        )
    for (name, _), answer in zip(asked, answers, strict=True):
        label = labels.get(name, name)
        if isinstance(answer, SourceError):
            timeline.sections.append(Section(name, label, answer.state, str(answer)))
        elif isinstance(answer, BaseException):
            timeline.sections.append(
                Section(name, label, "unavailable", f"unreadable answer ({answer!r:.100})")
            )
        else:
            entries, note = answer
            timeline.entries.extend(entries)
            timeline.sections.append(Section(name, label, "ok", note or "", len(entries)))
    return timeline
