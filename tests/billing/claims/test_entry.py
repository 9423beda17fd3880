"""parse_claim_file: the format from the content, text decoding, and unreadable uploads."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from services.billing.claims import ClaimError, ClaimFile, parse_claim_file
from tests.billing.claims.builders import sample

CSV = b"claim_id,patient_id,service_date,cpt,modifiers,units\nC1,P1,2026-01-05,77412,,1\n"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("claims.csv", "csv"),
        ("dft_p03.hl7", "hl7"),
        ("dft_p03_batch.hl7", "hl7"),
        ("837p.x12", "x12-837p"),
        ("837i.x12", "x12-837i"),
        ("835.x12", "x12-835"),
    ],
)
def test_the_format_comes_from_the_content_not_the_name(name: str, expected: str) -> None:
    misleading = parse_claim_file(sample(name), "text/csv", "claims.hl7")
    assert misleading.format == expected and misleading.ok


def test_leading_blank_lines_and_a_bom_before_isa() -> None:
    content = "\ufeff\r\n".encode() + sample("837p.x12")
    parsed = parse_claim_file(content, None, None)
    assert parsed.format == "x12-837p" and parsed.ok


@pytest.mark.parametrize("content", [b"", b"   \r\n\n"])
def test_an_empty_file(content: bytes) -> None:
    assert parse_claim_file(content, None, "empty.csv") == ClaimFile(
        "unknown", errors=(ClaimError(1, None, "empty file"),)
    )


def test_binary_garbage() -> None:
    garbage = random.Random(11).randbytes(4096)
    parsed = parse_claim_file(garbage, "application/octet-stream", "claims.837")
    assert parsed.format == "unknown" and parsed.lines == ()
    (error,) = parsed.errors
    assert error.segment is None and error.line >= 1
    assert error.reason.startswith("not utf-8-sig text") or error.reason.startswith("binary")


def test_a_nul_inside_text_is_binary() -> None:
    parsed = parse_claim_file(CSV + b"C2,P1,2026-01-05,77412,,1\x00\n", None, None)
    assert parsed.errors == (ClaimError(3, None, "binary content: control character '\\x00'"),)


def test_an_undecodable_byte_names_its_line() -> None:
    parsed = parse_claim_file(CSV + b"C2,P\xe9,2026-01-05,77412,,1\n", None, None)
    assert parsed.errors[0].line == 3 and "utf-8" in parsed.errors[0].reason


def test_the_content_types_charset_decodes() -> None:
    content = CSV + "C2,PATIENT-É,2026-01-05,77412,,1\n".encode("latin-1")
    parsed = parse_claim_file(content, "text/csv; charset=ISO-8859-1", None)
    assert parsed.ok and parsed.lines[1].patient_id == "PATIENT-É"
    unknown = parse_claim_file(CSV, 'text/csv; charset="klingon"', None)
    assert unknown.errors == (ClaimError(1, None, "unknown charset 'klingon' in the content type"),)


def test_an_unknown_format_names_the_file() -> None:
    parsed = parse_claim_file(b"PATIENT;CODE\nP1;77412\n", "text/plain", "export.txt")
    assert parsed.format == "unknown"
    (error,) = parsed.errors
    assert error.line == 1 and "'export.txt'" in error.reason
    assert "ISA" in error.reason and "MSH|" in error.reason and "claim_id" in error.reason


def test_results_are_frozen() -> None:
    parsed = parse_claim_file(CSV, None, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.format = "hl7"  # type: ignore[misc]
    assert isinstance(parsed.lines, tuple) and isinstance(parsed.errors, tuple)


SAMPLES = ["claims.csv", "dft_p03.hl7", "dft_p03_batch.hl7", "837p.x12", "837i.x12", "835.x12"]
splices = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=6000),
        st.integers(min_value=0, max_value=30),
        st.binary(max_size=4) | st.sampled_from([b"*", b":", b"~", b"|", b"^", b"\n", b"\r"]),
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(SAMPLES), edits=splices)
# Found by hypothesis: a damaged MSH made hl7apy raise IndexError (a 500 once).
@example(name="dft_p03.hl7", edits=[(447, 12, b""), (447, 13, b"\x1c")])
def test_mangled_files_are_reported_never_raised(
    name: str, edits: list[tuple[int, int, bytes]]
) -> None:
    """Cut, overwrite or insert bytes anywhere in a good sample: the parser returns a result
    (errors at lines >= 1), it never raises."""
    data = bytearray(sample(name))
    for at, length, insert in edits:
        at = at % (len(data) + 1)
        data[at : at + length] = insert
    parsed = parse_claim_file(bytes(data), None, None)
    assert all(e.line >= 1 and e.reason for e in parsed.errors)
    assert parsed.format != "unknown" or parsed.errors  # an unread file is never accepted
