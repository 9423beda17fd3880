"""The weekly compliance report as a printable HTML page, with an inline SVG bar chart of the
week by machine (no JavaScript, no external assets: it prints and e-mails as it is)."""

from __future__ import annotations

from html import escape
from typing import Any

_SEGMENTS = (
    ("reviewed_on_time", "Reviewed on time", "#2e7d32"),
    ("reviewed_late", "Reviewed late", "#f9a825"),
    ("overdue", "Overdue", "#c62828"),
    ("pending", "Pending", "#90a4ae"),
)
_COLUMNS = (
    ("imaged_fractions", "Imaged"),
    ("reviewed_on_time", "On time"),
    ("reviewed_late", "Late"),
    ("overdue", "Overdue"),
    ("pending", "Pending"),
    ("overrides_required", "Overrides required"),
    ("overrides_documented", "documented"),
    ("compliance_pct", "Compliance %"),
)


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
            f'<rect x="{label + i * 130}" y="{legend_y - 10}" width="10" height="10" '
            f'fill="{colour}"/><text x="{label + i * 130 + 14}" y="{legend_y}">'
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
        f"{body['imaged_fractions']} imaged fractions reviewed on time.</p>"
        f"{_chart(body['by_machine'])}"
        f"{_table('Total', {'All machines': total})}"
        f"{_table('By machine', body['by_machine'])}"
        f"{_table('By physician', body['by_physician'])}"
        "</body></html>"
    )
