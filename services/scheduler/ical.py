"""iCalendar (RFC 5545) feeds of a room's or a person's bookings, built with ``icalendar``.

Each booking is one VEVENT whose UID is stable (the booking id, and ``-procedure`` for the
proceduralist appointment), so a calendar client that refreshes the feed updates an event
instead of duplicating it; a rescheduled booking is a new booking (new UID) and the old one
leaves the feed. Summaries carry the patient id, not the name: feeds end up on phones."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from icalendar import Calendar, Event

from .store import BookingRow

PRODID = "-//rtops//scheduler//EN"


def feed(
    name: str, bookings: Iterable[BookingRow], *, now: datetime, procedures_of: str | None = None
) -> bytes:
    """``procedures_of``: a proceduralist's id; their appointments are the events then."""
    cal = Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    cal.add("x-wr-calname", name)
    for b in bookings:
        event = Event()
        if procedures_of is not None:
            if b.procedure_start is None or b.procedure_end is None:
                continue
            event.add("uid", f"{b.id}-procedure@rtops")
            event.add("summary", f"Procedure before simulation: {b.patient_id}")
            event.add("dtstart", b.procedure_start)
            event.add("dtend", b.procedure_end)
        else:
            event.add("uid", f"{b.id}@rtops")
            event.add("summary", f"Simulation CT: {b.patient_id}")
            event.add("dtstart", b.start)
            event.add("dtend", b.end)
            event.add("location", b.room_id)
            event.add("description", "Therapists: " + ", ".join(b.therapists))
        event.add("dtstamp", now)
        event.add("last-modified", b.updated_at)
        event.add("status", "CONFIRMED")
        cal.add_component(event)
    return cal.to_ical()
