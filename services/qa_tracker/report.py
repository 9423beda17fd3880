"""The weekly compliance report as a printable HTML page, with an inline SVG bar chart of the
week by machine (no JavaScript, no external assets: it prints and e-mails as it is); its CSV;
and the compliance trend over ISO weeks (week buckets and an SVG line chart) for the pages."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from html import escape
from typing import Any

from services.qa_tracker import domain
from shared.calendar import iso_week_of

_SEGMENTS = (
    ("reviewed_on_time", "Reviewed on time", "#2e7d32"),
    ("reviewed_late", "Reviewed late", "#f9a825"),
    ("reviewed_backdated", "Backdated", "#8e24aa"),
    ("overdue", "Overdue", "#c62828"),
    ("pending", "Pending", "#90a4ae"),
)
_COLUMNS = (
    ("imaged_fractions", "Imaged"),
    ("reviewed_on_time", "On time"),
    ("reviewed_late", "Late"),
    # Documented after the due time, dated before it (issue 15): not on time.
    ("reviewed_backdated", "Backdated"),
    ("overdue", "Overdue"),
    ("pending", "Pending"),
    ("overrides_required", "Overrides required"),
    ("overrides_documented", "documented"),
    ("compliance_pct", "Compliance %"),
    ("attested_compliance_pct", "with backdated %"),
)
COLUMN_LABELS = dict(_COLUMNS)


def _chart(by_machine: dict[str, dict[str, Any]]) -> str:
    width, bar, gap, label = 640, 22, 10, 120
    rows = list(by_machine.items())
    height = max(1, len(rows)) * (bar + gap) + 30
    scale = max([t["imaged_fractions"] for _, t in rows] + [1])
    parts = [
        f'<svg role="img" aria-label="Reviews by machine" width="{width}" '
        f'height="{height}" xmlns="http://www.w3.org/2000/svg" font-size="12">'
    ]
    for i, (name, tally) in enumerate(rows):
        y = i * (bar + gap)
        parts.append(f'<text x="0" y="{y + 15}">{escape(name)}</text>')
        x = float(label)
        for key, title, colour in _SEGMENTS:
            w = (width - label - 10) * tally[key] / scale
            if w:
                parts.append(
                    f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar}" '
                    f'fill="{colour}"><title>{title}: {tally[key]}</title></rect>'
                )
            x += w
    legend_y = height - 10
    for i, (_, title, colour) in enumerate(_SEGMENTS):
        parts.append(
            f'<rect x="{label + i * 100}" y="{legend_y - 10}" width="10" height="10" '
            f'fill="{colour}"/><text x="{label + i * 100 + 14}" y="{legend_y}">'
            f"{title}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _table(title: str, rows: dict[str, dict[str, Any]]) -> str:
    head = "".join(f"<th>{escape(label)}</th>" for _, label in _COLUMNS)
    body = "".join(
        f"<tr><td>{escape(name)}</td>"
        + "".join(f"<td>{'' if t[k] is None else t[k]}</td>" for k, _ in _COLUMNS)
        + "</tr>"
        for name, t in rows.items()
    )
    return f"<h2>{escape(title)}</h2><table><tr><th></th>{head}</tr>{body}</table>"


def weekly_html(body: dict[str, Any]) -> str:
    total = {k: body[k] for k, _ in _COLUMNS}
    pct = body["compliance_pct"]
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>IGRT review compliance {escape(body['week'])}</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #999;padding:4px 8px;text-align:right}"
        "td:first-child{text-align:left}@media print{body{margin:0}}</style></head><body>"
        f"<h1>IGRT image-review compliance, week {escape(body['week'])}</h1>"
        f"<p>{escape(body['from'][:10])} to {escape(body['to'][:10])} (exclusive). "
        f"Compliance: <strong>{'n/a' if pct is None else f'{pct}%'}</strong> of "
        f"{body['imaged_fractions']} imaged fractions reviewed on time"
        f"{_backdated_note(body)}.</p>"
        f"{_chart(body['by_machine'])}"
        f"{_table('Total', {'All machines': total})}"
        f"{_table('By machine', body['by_machine'])}"
        f"{_table('By physician', body['by_physician'])}"
        "</body></html>"
    )


def _backdated_note(body: dict[str, Any]) -> str:
    if not body["reviewed_backdated"]:
        return ""
    return (
        f"; {body['reviewed_backdated']} more documented late but dated on time (backdated), "
        f"{body['attested_compliance_pct']}% with them"
    )


def weekly_chart(by_machine: dict[str, dict[str, Any]]) -> str:
    """The week's reviews by machine as an inline SVG (stacked bars), for the pages."""
    return _chart(by_machine)


def weekly_body(
    week: str, start: datetime, end: datetime, summary: domain.WeeklySummary
) -> dict[str, Any]:
    """The weekly report as ``GET /v1/compliance/weekly`` answers it in JSON."""
    return {
        "week": week,
        "from": start.isoformat(),
        "to": end.isoformat(),
        **summary.total.as_dict(),
        "by_machine": {k: v.as_dict() for k, v in summary.by_machine.items()},
        "by_physician": {k: v.as_dict() for k, v in summary.by_physician.items()},
    }


CSV_COLUMNS = tuple(key for key, _ in _COLUMNS)


def weekly_csv(body: dict[str, Any]) -> str:
    """The weekly report as CSV, the same as the API's ``Accept: text/csv`` answer."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["week", "group", "name", *CSV_COLUMNS])
    writer.writerow([body["week"], "total", "", *(body[c] for c in CSV_COLUMNS)])
    for group in ("by_machine", "by_physician"):
        for name, tally in body[group].items():
            writer.writerow(
                [body["week"], group.removeprefix("by_"), name, *(tally[c] for c in CSV_COLUMNS)]
            )
    return out.getvalue()


# ---------------------------------------------------------------- the trend over ISO weeks


def last_weeks(today: date, count: int) -> list[str]:
    """The ``count`` full ISO weeks before ``today``'s week, oldest first."""
    monday = today - timedelta(days=today.weekday())
    return [iso_week_of(monday - timedelta(weeks=n)) for n in range(count, 0, -1)]


@dataclass(frozen=True)
class Trend:
    weeks: list[str]
    total: dict[str, domain.Tally]  # week -> tally
    by_machine: dict[str, dict[str, domain.Tally]]  # machine -> week -> tally
    by_physician: dict[str, dict[str, domain.Tally]]


def trend(rows: Iterable[tuple[str, domain.SummaryRow]], weeks: Sequence[str]) -> Trend:
    """Tally rows (each with its ISO week, of the treatment day in the clinic's zone) per week,
    per machine and per physician. Weeks outside ``weeks`` are left out; a week without
    fractions is empty (its compliance None)."""
    buckets: dict[str, list[domain.SummaryRow]] = defaultdict(list)
    for week, row in rows:
        buckets[week].append(row)

    def group(key: str) -> dict[str, dict[str, domain.Tally]]:
        names = sorted({getattr(r, key) or "unassigned" for w in weeks for r in buckets[w]})
        return {
            name: {
                w: domain.tally(r for r in buckets[w] if (getattr(r, key) or "unassigned") == name)
                for w in weeks
            }
            for name in names
        }

    return Trend(
        weeks=list(weeks),
        total={w: domain.tally(buckets[w]) for w in weeks},
        by_machine=group("machine"),
        by_physician=group("physician"),
    )


_PALETTE = ("#1565c0", "#2e7d32", "#c62828", "#6a1b9a", "#ef6c00", "#00838f", "#5d4037", "#ad1457")


def trend_chart(
    title: str, weeks: Sequence[str], series: dict[str, dict[str, domain.Tally]]
) -> str:
    """Compliance % per week as an inline SVG line chart, one line per name; a week without
    imaged fractions breaks the line (no point)."""
    width, height, left, top, bottom, right = 720, 260, 40, 10, 40, 170
    plot_w, plot_h = width - left - right, height - top - bottom
    step = plot_w / max(1, len(weeks) - 1)

    def x(i: int) -> float:
        return left + i * step

    def y(pct: float) -> float:
        return top + plot_h * (1 - pct / 100)

    parts = [
        f'<svg role="img" aria-label="{escape(title)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" font-size="11">'
    ]
    for pct in (0, 25, 50, 75, 100):
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y(pct):.1f}" y2="{y(pct):.1f}" '
            f'stroke="#ddd"/><text x="{left - 6}" y="{y(pct) + 4:.1f}" '
            f'text-anchor="end">{pct}%</text>'
        )
    for i, week in enumerate(weeks):
        parts.append(
            f'<text x="{x(i):.1f}" y="{height - bottom + 16}" text-anchor="middle">'
            f"{escape(week[-3:])}</text>"
        )
    for n, (name, by_week) in enumerate(series.items()):
        colour = _PALETTE[n % len(_PALETTE)]
        segment: list[str] = []
        segments = [segment]
        for i, week in enumerate(weeks):
            pct = by_week[week].compliance_pct
            if pct is None:
                segment = []
                segments.append(segment)
                continue
            segment.append(f"{x(i):.1f},{y(pct):.1f}")
            parts.append(
                f'<circle cx="{x(i):.1f}" cy="{y(pct):.1f}" r="3" fill="{colour}">'
                f"<title>{escape(name)} {escape(week)}: {pct}% of "
                f"{by_week[week].imaged_fractions}</title></circle>"
            )
        for points in segments:
            if len(points) > 1:
                parts.append(
                    f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
                    f'points="{" ".join(points)}"/>'
                )
        ly = top + 14 * n + 8
        parts.append(
            f'<rect x="{left + plot_w + 14}" y="{ly - 8}" width="10" height="10" '
            f'fill="{colour}"/><text x="{left + plot_w + 28}" y="{ly + 1}">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
