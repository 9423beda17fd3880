"""End to end, from DICOM to charges: ``rtops run`` (NATS, migrations, every service), DCMTK's
storescu sends an RT Plan and its RT Beams Treatment Records to the SCP; the SCP publishes
``rtops.dicom.plan.received`` / ``rtops.dicom.treatment.recorded``, the QA tracker assesses the
fractions, and billing's consumer turns them into charges that ``GET /v1/charges`` shows."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import dicom_factories as f
from tests.support import storescu, wait_for
from tests.test_suite_run import running_suite

pytestmark = [pytest.mark.e2e, pytest.mark.dcmtk]

# 8 weekdays of a past fortnight (Mon 2026-11-02 .. Wed 11-11): the 2026 code set; the course
# closes when its 8 planned fractions are delivered.
DAYS = [
    "20261102",
    "20261103",
    "20261104",
    "20261105",
    "20261106",
    "20261109",
    "20261110",
    "20261111",
]
DELIVERY = {"77402", "77407", "77412"}  # CPT 2026 linac delivery, levels 1-3


def test_plan_and_records_sent_with_storescu_become_charges(
    tmp_path: Path, isolation: dict[str, str], dcmtk: dict[str, str]
) -> None:
    plan = f.rt_plan(fractions=len(DAYS), dose_per_fraction_gy=2.5, review_date="20261026")
    plan_uid = str(plan.SOPInstanceUID)
    plan_file = f.write(plan, tmp_path / "plan.dcm")
    records = [
        f.write(
            f.treatment_record(
                plan_uid=plan_uid,
                fraction_number=number,
                fractions_planned=len(DAYS),
                treatment_date=day,
                treatment_time="080000",
            ),
            tmp_path / f"rec-{number}.dcm",
        )
        for number, day in enumerate(DAYS, start=1)
    ]
    patient_id = f.DEFAULT_PATIENT.patient_id

    with running_suite(tmp_path, isolation) as suite:
        billing = f"http://127.0.0.1:{suite.env['RTOPS_BILLING_HTTP_PORT']}"
        wait_for(lambda: _ready(billing), timeout=60, interval=0.2, message="billing /readyz")
        sent = storescu(dcmtk["storescu"], suite.dicom_port, [plan_file], calling="TPS1")
        assert sent.returncode == 0, sent.stdout + sent.stderr
        sent = storescu(dcmtk["storescu"], suite.dicom_port, records)
        assert sent.returncode == 0, sent.stdout + sent.stderr

        headers = suite.token("billing", "bea.biller")

        def charges() -> list[dict[str, Any]]:
            response = httpx.get(
                f"{billing}/v1/charges",
                params={"patient_id": patient_id, "limit": 500},
                headers=headers,
                timeout=5,
            )
            assert response.status_code == 200, response.text
            items: list[dict[str, Any]] = response.json()["items"]
            delivered = [i for i in items if i["cpt"] in DELIVERY]
            management = [i for i in items if i["cpt"] == "77427"]
            return items if len(delivered) == len(DAYS) and len(management) == 2 else []

        items = wait_for(
            charges, timeout=120, interval=0.5, message="8 deliveries and 2 x 77427 (see log)"
        )
        by_code = Counter(i["cpt"] for i in items)
        course = f"course:{plan_uid}"
        # One delivery per session: 77407 (CPT 2026 level 2: a volumetric 3D photon plan, one
        # isocenter), never per fraction group or per record.
        delivery = [i for i in items if i["cpt"] in DELIVERY]
        assert {i["cpt"] for i in delivery} == {"77407"}
        assert sorted(i["service_date"] for i in delivery) == [
            f"{d[:4]}-{d[4:6]}-{d[6:]}" for d in DAYS
        ]
        assert all(i["status"] == "ready" and i["course_id"] == course for i in delivery)
        # CMS Pub 100-04 Ch. 13 s. 70: 8 fractions earn 2 x 77427 (5 + a 3-fraction remainder
        # at the course's end); held without the weekly face-to-face note (no documents sent).
        management = sorted((i for i in items if i["cpt"] == "77427"), key=lambda i: i["id"])
        assert [(m["units"], m["status"], m["hold_reason"]) for m in management] == [
            (1, "hold", "missing_management_note")
        ] * 2
        assert [(m["period_start"], m["period_end"]) for m in management] == [
            ("2026-11-02", "2026-11-06"),
            ("2026-11-09", "2026-11-11"),
        ]
        # No CBCT or other imaging sent: the QA tracker tracks the 8 fractions, none imaged, so
        # its rtops.qa.fraction.assessed states give no IGRT.
        qa = httpx.get(
            f"{suite.qa_http}/v1/fractions",
            params={"limit": 50},
            headers=suite.token("physicist", "pat.physicist"),
            timeout=5,
        ).json()["items"]
        assert sorted((q["fraction_number"], q["imaged"], q["review_status"]) for q in qa) == [
            (n, False, "not_imaged") for n in range(1, len(DAYS) + 1)
        ]
        assert by_code["77387"] == 0
        assert by_code["77431"] == 0  # never for the leftover of a longer course
        # The rest of the course: planning once, the plan, physics per five (8 -> 2, the
        # remainder policy mirroring 77427).
        assert {c: by_code[c] for c in ("77261", "77295", "77300", "77336")} == {
            "77261": 1,
            "77295": 1,
            "77300": 1,
            "77336": 2,
        }
        assert all(i["hold_reason"] != "course_kind_unconfirmed" for i in items)

        course_out = httpx.get(f"{billing}/v1/courses/{course}", headers=headers, timeout=5).json()
        assert (course_out["status"], course_out["fractions_delivered"]) == ("closed", 8)
        assert (course_out["kind"], course_out["kind_status"]) == ("conventional", "default")
        assert course_out["closures"][-1]["reason"] == "planned_delivered"


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
