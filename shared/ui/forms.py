"""What a page's filter form sends, read the way staff type it: a bad value becomes a line on
the page (``errors``), not a 422 problem, so the form comes back with what was typed."""

from __future__ import annotations

from datetime import date


def form_day(value: str | None, name: str, errors: list[str]) -> date | None:
    """An ISO date (``2026-11-24``, what ``<input type=date>`` sends); empty is None."""
    if not value or not value.strip():
        return None
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        errors.append(f"{name} {value!r} is not a date (2026-11-24)")
        return None
