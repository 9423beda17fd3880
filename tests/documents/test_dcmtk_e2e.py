"""End to end, from DICOM to the documents service: ``rtops run`` (NATS, migrations, every
service); DCMTK's storescu sends an RT Plan, the TPS's plan report as an Encapsulated PDF and
three RT Beams Treatment Records to the SCP. The documents service versions the plan, fetches
the report's PDF from the SCP and files it for the plan, marks the plan treated, flags the
fractions (no written directive, no physics check) and drafts one letter to the referring
physician, whose PDF names the prescription."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import pypdf
import pytest

from tests import dicom_factories as f
from tests.support import storescu, wait_for
from tests.test_suite_run import _ready, running_suite

pytestmark = [pytest.mark.e2e, pytest.mark.dcmtk]

DAYS = ["20261102", "20261103", "20261104"]


def test_plan_report_and_records_sent_with_storescu(
    tmp_path: Path, isolation: dict[str, str], dcmtk: dict[str, str]
) -> None:
    plan = f.rt_plan(
        fractions=25,
        dose_per_fraction_gy=2.0,
        review_date="20261026",
        referring_physician="Referrer^Rita^^Dr.",
    )
    plan_uid = str(plan.SOPInstanceUID)
    report = f.encapsulated_pdf(title="Plan report PROST", plan_uid=plan_uid)
    files = [f.write(plan, tmp_path / "plan.dcm"), f.write(report, tmp_path / "report.dcm")]
    records = [
        f.write(
            f.treatment_record(
                plan_uid=plan_uid,
                fraction_number=n,
                fractions_planned=25,
                treatment_date=day,
                treatment_time="080000",
            ),
            tmp_path / f"rec-{n}.dcm",
        )
        for n, day in enumerate(DAYS, start=1)
    ]
    patient_id = f.DEFAULT_PATIENT.patient_id

    with running_suite(tmp_path, isolation) as suite:
        base = f"http://127.0.0.1:{suite.env['RTOPS_DOCUMENTS_HTTP_PORT']}"
        wait_for(lambda: _ready(base), timeout=60, interval=0.2, message="documents /readyz")
        sent = storescu(dcmtk["storescu"], suite.dicom_port, files, calling="TPS1")
        assert sent.returncode == 0, sent.stdout + sent.stderr
        sent = storescu(dcmtk["storescu"], suite.dicom_port, records)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        headers = suite.token("physician", "olga")

        def version() -> dict[str, Any] | None:
            answer = httpx.get(
                f"{base}/v1/plans", params={"patient_id": patient_id}, headers=headers, timeout=5
            )
            assert answer.status_code == 200, answer.text
            items = answer.json()
            ready = (
                items
                and items[0]["fractions_delivered"] == len(DAYS)
                and items[0]["documents"]
                and len(items[0]["flags"]) > 0
            )
            return items[0] if ready else None

        v = wait_for(version, timeout=120, interval=0.5, message="the version (see log)")
        assert (v["plan_uid"], v["version"], v["approval_status"]) == (plan_uid, 1, "APPROVED")
        assert v["treated"] and v["fractions"] == 25
        [doc] = v["documents"]
        assert (doc["doc_type"], doc["source"]) == ("dosimetry_plan_report", "dicom")
        content = httpx.get(f"{base}/v1/documents/{doc['id']}/content", headers=headers)
        assert content.content.startswith(b"%PDF-1.4")
        assert "written_directive" in v["missing_documents"]
        assert "plan_approval" not in v["missing_documents"]  # DICOM APPROVED, reviewer, time
        assert v["flags"] == ["documents_incomplete"]

        letters = httpx.get(
            f"{base}/v1/letters", params={"patient_id": patient_id}, headers=headers
        ).json()
        assert [(x["status"], x["facts"]["start_date"]) for x in letters] == [
            ("draft", "2026-11-02")
        ]
        pdf = httpx.get(f"{base}/v1/letters/{letters[0]['id']}/pdf", headers=headers).content
        text = pypdf.PdfReader(io.BytesIO(pdf)).pages[0].extract_text()
        assert "Dr. Rita Referrer" in text and "50 Gy in 25 fractions" in text
