"""Claim files: CSV, HL7 v2 DFT^P03, ASC X12 5010 837P / 837I and 835, read into claim lines.

Pure parsers (no database, no web framework): :func:`parse_claim_file` takes the uploaded
bytes and returns a :class:`ClaimFile` with the reconciliation's :class:`ClaimLine` items, the
835's denied and adjusted :class:`RemittanceLine` items, and every :class:`ClaimError` found.
The caller rejects a file with any error as a whole. The format is told by the content (``ISA``
for X12, ``MSH|`` for HL7, a CSV header otherwise), never by the file's name or type.
"""

from __future__ import annotations

import codecs
import re

from services.billing.claims.csvfile import COLUMNS, looks_like_csv_header, parse_csv, write_csv
from services.billing.claims.hl7 import parse_hl7
from services.billing.claims.model import (
    Adjustment,
    ClaimError,
    ClaimFile,
    ClaimFormat,
    RemittanceLine,
)
from services.billing.claims.x12 import parse_x12
from services.billing.domain.reconcile import ClaimLine

__all__ = [
    "Adjustment",
    "ClaimError",
    "ClaimFile",
    "ClaimFormat",
    "ClaimLine",
    "RemittanceLine",
    "decode",
    "parse_claim_file",
    "parse_csv",
    "parse_hl7",
    "parse_x12",
    "write_csv",
]

# Control characters that have no place in any of the text formats (TAB, LF, CR and the MLLP
# framing bytes VT and FS are allowed). Their presence means a binary upload.
_BINARY = re.compile("[\x00-\x08\x0c\x0e-\x1b\x1d-\x1f\x7f]")


def parse_claim_file(content: bytes, content_type: str | None, filename: str | None) -> ClaimFile:
    """Read a claim file. ``content_type`` is used only for its ``charset`` parameter and
    ``filename`` only to word an error; the format comes from the content."""
    text, error = decode(content, content_type)
    if error is not None:
        return ClaimFile("unknown", errors=(error,))
    assert text is not None
    start = text.lstrip("\ufeff \t\r\n\x0b")
    if start.startswith("ISA"):
        return parse_x12(text)
    if start.startswith("MSH|") or start.startswith(("FHS|", "BHS|")):
        return parse_hl7(text)
    first_line = start.split("\n", 1)[0].rstrip("\r")
    if looks_like_csv_header(first_line):
        return parse_csv(text.lstrip("\ufeff"))
    named = f" (named {filename!r})" if filename else ""
    reason = (
        f"unrecognised claim file{named}: expected an X12 interchange (ISA), HL7 v2 (MSH|) "
        f"or CSV with the header {','.join(COLUMNS)}"
    )
    return ClaimFile("unknown", errors=(ClaimError(1, None, reason),))


def decode(content: bytes, content_type: str | None) -> tuple[str | None, ClaimError | None]:
    """The text of an upload: the content type's charset, else UTF-8 (a BOM is dropped)."""
    if not content.strip():
        return None, ClaimError(1, None, "empty file")
    charset = _charset(content_type) or "utf-8-sig"
    try:
        codecs.lookup(charset)
    except LookupError:
        return None, ClaimError(1, None, f"unknown charset {charset!r} in the content type")
    try:
        text = content.decode(charset)
    except UnicodeDecodeError as exc:
        line = content.count(b"\n", 0, exc.start) + 1
        return None, ClaimError(line, None, f"not {charset} text (binary file?): {exc.reason}")
    if found := _BINARY.search(text):
        line = text.count("\n", 0, found.start()) + 1
        return None, ClaimError(line, None, f"binary content: control character {found[0]!r}")
    return text, None


def _charset(content_type: str | None) -> str | None:
    if not content_type:
        return None
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip():
            return value.strip().strip('"')
    return None
