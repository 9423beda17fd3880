"""Query parameters every list endpoint treats alike: a time range in the clinic's zone, and no
parameter the endpoint does not know (a misspelt filter must not silently list everyone)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import Depends, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from shared.calendar import local_midnight

# The years a query may name. Wide enough for any record a department keeps, narrow enough
# that a day or a week added to either end stays inside Python's calendar (year 1 to 9999):
# 0001-01-01T00:00+14:00 or 9999-W52 would otherwise overflow deep in a query (issue 15).
MIN_YEAR = 1900
MAX_YEAR = 2999
_TIME_HELP = (
    "a date (2026-11-24: midnight in the clinic's zone), a time without offset "
    "(2026-11-24T09:00, clinic time) or with one (2026-11-24T09:00:00-05:00), "
    f"in the years {MIN_YEAR} to {MAX_YEAR}"
)
# An ISO week within those years; a week the year lacks (2026-W53, 2026-W99) is refused by the
# endpoint with a 422 that names it.
WEEK_PATTERN = r"^(19|2\d)\d{2}-W\d{2}$"
# Row ids are SQLAlchemy ``Integer`` keys: 32-bit signed on PostgreSQL (INTEGER), wider on
# SQLite; a larger path id is a 422 before it reaches either (2^63 was a 500 on SQLite, 2^33
# on PostgreSQL).
MAX_ROW_ID = 2**31 - 1
RowId = Annotated[int, Path(ge=1, le=MAX_ROW_ID, description="a row id")]
# DICOM identifiers at the edge, checked against their VR's limit (PS3.5 table 6.2-1: UI and LO
# at most 64) which is also the columns' size: a longer one is a 422 here, not a String(64)
# overflow on PostgreSQL behind it.
UID_MAX_CHARS = 64
PATIENT_ID_MAX_CHARS = 64
PatientIdQuery = Annotated[
    str | None, Query(min_length=1, max_length=PATIENT_ID_MAX_CHARS, description="Patient ID")
]
UidQuery = Annotated[str | None, Query(min_length=1, max_length=UID_MAX_CHARS)]
UidPath = Annotated[str, Path(min_length=1, max_length=UID_MAX_CHARS, description="a DICOM UID")]
# The longest time ``clinic_time`` reads, 2026-11-24T09:00:00.123456+05:30:00.123456, is 42
# characters; 64 leaves room and keeps a megabyte of text out of the parser.
TIME_MAX_CHARS = 64
# A keyset cursor is base64 of a few sort values (a time, a row id, at most a UID): a few hundred
# characters at most.
CURSOR_MAX_CHARS = 512
CursorQuery = Annotated[
    str | None, Query(max_length=CURSOR_MAX_CHARS, description="next_cursor of the last page")
]


@dataclass(frozen=True)
class TimeRange:
    """[start, end) as aware datetimes; either may be open."""

    start: datetime | None
    end: datetime | None


def clinic_time(value: str, zone: ZoneInfo, name: str) -> datetime:
    """A query value as an aware datetime: a date is its local midnight, a naive time is clinic
    time. Anything else is a 422 that says what is accepted."""
    text = value.strip()
    try:
        if len(text) == 10:
            moment = local_midnight(date.fromisoformat(text), zone)
        else:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            moment = moment if moment.tzinfo else moment.replace(tzinfo=zone)
        in_utc = moment.astimezone(UTC)  # year 1 at +14:00 is before the calendar starts
        if not MIN_YEAR <= in_utc.year <= MAX_YEAR or not MIN_YEAR <= moment.year <= MAX_YEAR:
            raise ValueError("out of range")
    except (ValueError, OverflowError):
        raise RequestValidationError(
            [
                {
                    "loc": ("query", name),
                    "msg": f"{value!r} is not {_TIME_HELP}",
                    "type": "value_error",
                }
            ]
        ) from None
    return moment


def time_range(
    request: Request,
    start: Annotated[
        str | None, Query(alias="from", max_length=TIME_MAX_CHARS, description=_TIME_HELP)
    ] = None,
    end: Annotated[
        str | None,
        Query(alias="to", max_length=TIME_MAX_CHARS, description=f"exclusive; {_TIME_HELP}"),
    ] = None,
) -> TimeRange:
    zone = ZoneInfo(request.app.state.settings.clinic_timezone)
    return TimeRange(
        start=clinic_time(start, zone, "from") if start else None,
        end=clinic_time(end, zone, "to") if end else None,
    )


TimeRangeDep = Annotated[TimeRange, Depends(time_range)]


def reject_unknown_query(request: Request) -> None:
    """App-wide dependency: 422 for a query parameter the endpoint does not declare."""
    route: Any = request.scope.get("route")
    if not isinstance(route, APIRoute) or not request.query_params:
        return
    known = _query_names(route.dependant)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        raise RequestValidationError(
            [
                {
                    "loc": ("query", name),
                    "msg": f"unknown query parameter; this endpoint takes: {allowed}",
                    "type": "extra_forbidden",
                }
                for name in unknown
            ]
        )


def _query_names(dependant: Any) -> set[str]:
    """The query parameters a route declares, its dependencies' included."""
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names
