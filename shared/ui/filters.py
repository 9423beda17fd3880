"""Template filters: names as people write them, times in the clinic's zone. Pure functions,
registered on every service's page environment by ``shared.ui.pages``."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo


def person_name(value: str | None) -> str:
    """A DICOM Person Name (PS3.5 6.2: family^given^middle^prefix^suffix, then ``=`` groups for
    ideographic and phonetic forms) as people write it: "Oncologist^Olga" -> "Olga Oncologist",
    "Smith^John^A^Dr.^MD" -> "Dr. John A Smith, MD". Anything without a caret is kept."""
    if not value:
        return ""
    text = value.split("=", 1)[0].strip()
    if "^" not in text:
        return text
    parts = [p.strip() for p in text.split("^")] + [""] * 5
    family, given, middle, prefix, suffix = parts[:5]
    name = " ".join(p for p in (prefix, given, middle, family) if p)
    return f"{name}, {suffix}" if suffix and name else (name or suffix)


def clinic_time(value: datetime | None, zone: ZoneInfo | str, fmt: str = "%a %d %b %H:%M") -> str:
    """An instant in the clinic's wall-clock time ("Mon 23 Nov 07:00"); a naive value is UTC
    (what the databases store)."""
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    tz = zone if isinstance(zone, ZoneInfo) else ZoneInfo(zone)
    return value.astimezone(tz).strftime(fmt)


def iso_instant(value: datetime | None) -> str:
    """For ``<time datetime=...>``: the instant with its UTC offset."""
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat()
