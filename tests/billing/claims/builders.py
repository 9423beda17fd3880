"""Large synthetic claim files, built in memory (no real patients)."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "data" / "claims"
CODES = ("77412", "77387", "77427", "77336", "77300", "G6015")
MODIFIERS = ("", "26", "26:59", "TC")


def sample(name: str) -> bytes:
    return (DATA / name).read_bytes()


def csv_claims(lines: int) -> bytes:
    rows = ["claim_id,patient_id,service_date,cpt,modifiers,units"]
    start = date(2026, 1, 5)
    for i in range(lines):
        day = (start + timedelta(days=i % 300)).isoformat()
        rows.append(
            f"CLAIM{i // 20:06d},TESTPAT{i // 100:05d},{day},{CODES[i % len(CODES)]},"
            f"{MODIFIERS[i % len(MODIFIERS)]},{1 + i % 3}"
        )
    return ("\n".join(rows) + "\n").encode()


def x12_837p(claims: int, lines_per_claim: int = 50) -> bytes:
    """One 837P transaction set: ``claims`` claims of ``lines_per_claim`` service lines (the
    guide allows 50), with correct SE/GE/IEA counts."""
    segments = [
        "ST*837*0001*005010X222A1",
        "BHT*0019*00*RTOPSBATCH9*20260115*1200*CH",
        "NM1*41*2*RTOPS TEST CLINIC*****46*RTOPSTESTSUB",
        "PER*IC*TEST CONTACT*TE*5555550100",
        "NM1*40*2*TEST PAYER*****46*TESTPAYER",
        "HL*1**20*1",
        "NM1*85*2*RTOPS TEST CLINIC*****XX*1234567893",
        "N3*1 TEST STREET",
        "N4*TESTVILLE*NC*275010000",
        "REF*EI*999999999",
    ]
    for c in range(claims):
        segments += [
            f"HL*{c + 2}*1*22*0",
            "SBR*P*18*******MB",
            f"NM1*IL*1*TESTPATIENT*ALPHA****MI*TESTMBR{c:06d}",
            "NM1*PR*2*TEST PAYER*****PI*TESTPAYER",
            f"CLM*CLAIM{c:06d}*{250 * lines_per_claim}***11:B:1*Y*A*Y*Y",
            f"REF*EA*TESTPAT{c:06d}",
            "HI*ABK:C61",
        ]
        for i in range(lines_per_claim):
            code = CODES[i % len(CODES)]
            day = date(2026, 1, 5) + timedelta(days=i)
            segments += [
                f"LX*{i + 1}",
                f"SV1*HC:{code}*250*UN*1***1",
                f"DTP*472*D8*{day:%Y%m%d}",
            ]
    segments.append(f"SE*{len(segments) + 1}*0001")
    return interchange(segments, "HC", "005010X222A1")


def interchange(transaction: list[str], fic: str, guide: str) -> bytes:
    isa = (
        "ISA*00*          *00*          *ZZ*RTOPSTESTSUB   *ZZ*TESTPAYER      "
        "*260115*1200*^*00501*000000001*0*T*:"
    )
    envelope = [
        isa,
        f"GS*{fic}*RTOPSTESTSUB*TESTPAYER*20260115*1200*1*X*{guide}",
        *transaction,
        "GE*1*1",
        "IEA*1*000000001",
    ]
    return ("~\n".join(envelope) + "~\n").encode()


def hl7_dft(messages: int, charges_per_message: int = 10) -> bytes:
    out = []
    for m in range(messages):
        out += [
            f"MSH|^~\\&|RTOPS|TESTCLINIC|BILLING|TESTCLINIC|20260110120000||DFT^P03|MSG{m:06d}|P|2.5",
            "EVN|P03|20260110120000",
            f"PID|1||TESTPAT{m:06d}^^^RTOPS^MR||TESTPATIENT^ALPHA",
            f"PV1|1|O|||||||||||||||||CLAIM{m:06d}",
        ]
        for i in range(charges_per_message):
            code = CODES[i % len(CODES)]
            out.append(f"FT1|{i + 1}|||20260105||CG|{code}^^CPT4|||1||||||||||||||||26")
    return ("\r".join(out) + "\r").encode()
