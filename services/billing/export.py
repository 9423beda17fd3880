"""Ready charges out as HL7 v2.5 DFT^P03 (post detail financial transaction), built by position
(pure: no I/O, no clock). ``GET /v1/charges/export.hl7`` writes it; ``POST /v1/claims`` (the
parser in ``services.billing.claims.hl7``) reads it back.

One batch (BHS ... BTS with the message count), one message per patient, one FT1 per charge:

| Segment / field | Value |
|---|---|
| MSH-3 / MSH-4 | ``RTOPS`` / ``RTOPS_BILLING`` |
| MSH-7, EVN-2 | the export's time, clinic zone, ``YYYYMMDDHHMMSS+ZZZZ`` |
| MSH-9 | ``DFT^P03^DFT_P03`` |
| MSH-10 | message control id: the export's id + the message's number (at most 20 characters) |
| MSH-11 / MSH-12 | ``P`` / ``2.5`` |
| EVN-1 | ``P03`` |
| PID-3 | patient id |
| PV1-2 | ``O`` (outpatient) |
| FT1-1 | set id within the message |
| FT1-2 | transaction id: the charge's id (``course|code|occurrence|modifiers``, escaped) |
| FT1-4 | transaction date: the date of service ``YYYYMMDD`` |
| FT1-5 | posting date: the export's time |
| FT1-6 | ``CG`` (charge) |
| FT1-7, FT1-25 | ``code^^C4`` (CPT) or ``code^^HCPCS`` (a letter code such as G6015) |
| FT1-10 | units |
| FT1-26 | modifiers, one repetition each (``26~TC``) |

Text is escaped as HL7 v2 requires (``\\F\\``, ``\\S\\``, ``\\T\\``, ``\\R\\``, ``\\E\\``; line
breaks as ``\\X0D\\`` / ``\\X0A\\``), so a charge id with ``|`` keeps every later field in place.
Segments end with CR.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime
from itertools import groupby
from typing import Protocol

SENDING_APPLICATION = "RTOPS"
SENDING_FACILITY = "RTOPS_BILLING"
VERSION = "2.5"
ENCODING = "^~\\&"
MAX_CONTROL_ID = 20  # MSH-10 (ST, 20) in v2.5
MEDIA_TYPE = "x-application/hl7-v2+er7"


class ExportedCharge(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def patient_id(self) -> str: ...
    @property
    def cpt(self) -> str: ...
    @property
    def modifiers(self) -> Sequence[str]: ...
    @property
    def units(self) -> int: ...
    @property
    def service_date(self) -> date: ...


def escape(value: str) -> str:
    """HL7 v2 escaping for the default encoding characters (v2.5 s. 2.7)."""
    out = value.replace("\\", "\\E\\")
    for char, code in (("|", "F"), ("^", "S"), ("&", "T"), ("~", "R")):
        out = out.replace(char, f"\\{code}\\")
    out = out.replace("\r", "\\X0D\\").replace("\n", "\\X0A\\")
    return "".join(c for c in out if c >= " ")


def dft_p03(charges: Iterable[ExportedCharge], *, at: datetime, export_id: str) -> str:
    """The charges as one HL7 batch of DFT^P03 messages, one per patient (by patient id), the
    FT1 segments in the order given. ``at`` (aware, in the clinic's zone) stamps the messages;
    ``export_id`` (at most 14 characters) makes each message's control id unique."""
    if len(export_id) > MAX_CONTROL_ID - 6:
        raise ValueError("export_id: at most 14 characters (MSH-10 holds 20)")
    stamp = _timestamp(at)
    by_patient = sorted(charges, key=lambda c: c.patient_id)  # stable: keeps the given order
    segments = [
        _segment(
            "BHS",
            ENCODING,
            SENDING_APPLICATION,
            SENDING_FACILITY,
            "",
            "",
            stamp,
            "",
            "",
            "",
            escape(export_id),
        )
    ]
    messages = 0
    for patient_id, group in groupby(by_patient, key=lambda c: c.patient_id):
        messages += 1
        segments += _message(patient_id, list(group), stamp, f"{export_id}{messages:06d}")
    segments.append(_segment("BTS", str(messages)))
    return "".join(s + "\r" for s in segments)


def _message(
    patient_id: str, charges: Sequence[ExportedCharge], stamp: str, control_id: str
) -> list[str]:
    out = [
        _segment(
            "MSH",
            ENCODING,
            SENDING_APPLICATION,
            SENDING_FACILITY,
            "",
            "",
            stamp,
            "",
            "DFT^P03^DFT_P03",
            escape(control_id),
            "P",
            VERSION,
        ),
        _segment("EVN", "P03", stamp),
        _segment("PID", "1", "", escape(patient_id)),
        _segment("PV1", "1", "O"),
    ]
    for number, charge in enumerate(charges, 1):
        fields = [""] * 26
        code = f"{escape(charge.cpt)}^^{'C4' if charge.cpt.isdigit() else 'HCPCS'}"
        fields[0] = str(number)
        fields[1] = escape(charge.id)
        fields[3] = charge.service_date.strftime("%Y%m%d")
        fields[4] = stamp
        fields[5] = "CG"
        fields[6] = code
        fields[9] = str(charge.units)
        fields[24] = code
        fields[25] = "~".join(escape(m) for m in charge.modifiers)
        out.append(_segment("FT1", *fields))
    return out


def _segment(name: str, *fields: str) -> str:
    """A segment, empty trailing fields left out. For MSH and BHS the first field given is
    MSH-2 / BHS-2: MSH-1 is the separator after the name."""
    return "|".join((name, *fields)).rstrip("|")


def _timestamp(at: datetime) -> str:
    if at.tzinfo is None:
        raise ValueError("at: an aware datetime (the clinic's zone)")
    return at.strftime("%Y%m%d%H%M%S%z")
