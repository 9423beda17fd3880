"""Query parameters every list endpoint treats alike: a time range in the clinic's zone, and no
parameter the endpoint does not know (a misspelt filter must not silently list everyone)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from shared.calendar import local_midnight

_TIME_HELP = (
    "a date (2026-11-24: midnight in the clinic's zone), a time without offset "
    "(2026-11-24T09:00, clinic time) or with one (2026-11-24T09:00:00-05:00)"
)


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
            return local_midnight(date.fromisoformat(text), zone)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise RequestValidationError(
            [
                {
                    "loc": ("query", name),
                    "msg": f"{value!r} is not {_TIME_HELP}",
                    "type": "value_error",
                }
            ]
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=zone)


def time_range(
    request: Request,
    start: Annotated[str | None, Query(alias="from", description=_TIME_HELP)] = None,
    end: Annotated[str | None, Query(alias="to", description=f"exclusive; {_TIME_HELP}")] = None,
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
