"""The referring-provider letter rendered to PDF: a Jinja2 template the clinic can edit (HTML,
in fpdf2's subset) drawn by fpdf2, pure Python, no system packages."""

from __future__ import annotations

import dataclasses
import unicodedata
from datetime import date
from pathlib import Path
from typing import Any

from fpdf import FPDF
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from services.documents.domain import LetterFacts

TEMPLATES = Path(__file__).parent / "templates"
DEFAULT_TEMPLATE = TEMPLATES / "letter.html.j2"


def _latin1(text: str) -> str:
    """fpdf2's core fonts are Latin-1: other characters are folded to their base letters
    (Dvořák -> Dvorak) and the rest replaced, so a name never stops a letter. A TTF font
    (``RTOPS_DOCUMENTS_LETTER_FONT``) draws them as they are."""
    folded = unicodedata.normalize("NFKD", text)
    kept = "".join(c for c in folded if not unicodedata.combining(c))
    return kept.encode("latin-1", "replace").decode("latin-1")


class LetterRenderer:
    def __init__(
        self,
        template: Path | None = None,
        *,
        department_name: str = "Radiation Oncology",
        font: Path | None = None,
    ) -> None:
        path = template or DEFAULT_TEMPLATE
        env = Environment(
            loader=FileSystemLoader(path.parent),
            autoescape=select_autoescape(default=True, default_for_string=True),
            undefined=StrictUndefined,
        )
        self._template = env.get_template(path.name)
        self._department = department_name
        self._font = font

    def html(self, facts: LetterFacts, *, today: date) -> str:
        context: dict[str, Any] = dataclasses.asdict(facts)
        return self._template.render(**context, today=today, department_name=self._department)

    def pdf(self, facts: LetterFacts, *, today: date) -> bytes:
        html = self.html(facts, today=today)
        pdf = FPDF(format="Letter")
        pdf.set_title(f"Letter to the referring provider: {facts.patient_id}")
        pdf.set_creator("rtops documents")
        pdf.add_page()
        if self._font is not None:
            pdf.add_font("letter", fname=str(self._font))
            pdf.set_font("letter", size=11)
        else:
            pdf.set_font("Helvetica", size=11)
            html = _latin1(html)
        pdf.write_html(html)
        return bytes(pdf.output())


def facts_from_json(data: dict[str, Any]) -> LetterFacts:
    """A letter's stored facts (``dataclasses.asdict`` through JSON) back as ``LetterFacts``."""
    values = dict(data)
    for name in ("birth_date", "start_date"):
        if values.get(name):
            values[name] = date.fromisoformat(values[name])
    values["plan_uids"] = tuple(values.get("plan_uids") or ())
    return LetterFacts(**values)


def facts_to_json(facts: LetterFacts) -> dict[str, Any]:
    out = dataclasses.asdict(facts)
    for name in ("birth_date", "start_date"):
        if out[name] is not None:
            out[name] = out[name].isoformat()
    out["plan_uids"] = list(out["plan_uids"])
    return out
