"""Every association is logged: refusals with their true reason (and counted), accepted ones
with the device, and C-ECHOs; refused presentation contexts name their SOP classes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from structlog.testing import capture_logs

from tests.support import RunningScp, pynetdicom_echo, storescu

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"


def rejections(scp: RunningScp) -> dict[str, float]:
    text = httpx.get(f"{scp.http}/metrics").text
    found = {}
    for line in text.splitlines():
        if line.startswith("rtops_scp_rejections_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            found[reason] = float(line.rsplit(" ", 1)[1])
    return found


def warnings(logs: list[dict[str, object]]) -> list[dict[str, object]]:
    return [e for e in logs if e["log_level"] == "warning"]


def test_a_plain_echoscu_is_told_both_of_its_problems(
    scp: RunningScp, dcmtk: dict[str, str]
) -> None:
    with capture_logs() as logs:
        out = subprocess.run(
            [dcmtk["echoscu"], "127.0.0.1", str(scp.dicom_port)], capture_output=True, text=True
        )
    assert out.returncode != 0
    (entry,) = warnings(logs)
    assert entry["reason"] == "wrong_called_ae"  # what pynetdicom sent: called AE last wins
    assert entry["calling_ae"] == "ECHOSCU" and entry["called_ae"] == "ANY-SCP"
    assert str(entry["event"]).startswith("refused an association from 'ECHOSCU' at 127.0.0.1:")
    assert (
        "it called AE title 'ANY-SCP', but this SCP is 'RTOPS'; set the called AE title "
        "(echoscu/storescu: -aec RTOPS); and its AE title 'ECHOSCU' is not in the device "
        "registry"
    ) in str(entry["event"])
    assert rejections(scp) == {"wrong_called_ae": 1.0}


def test_a_title_that_differs_only_in_case_gets_a_hint(scp: RunningScp) -> None:
    with capture_logs() as logs:
        assert pynetdicom_echo(scp.dicom_port, calling="truebeam1").is_rejected
        assert pynetdicom_echo(scp.dicom_port, calling="TRUEBEAM1", called="rtops").is_rejected
    first, second = warnings(logs)
    assert first["reason"] == "unknown_calling_ae"
    assert "did you mean TRUEBEAM1? AE titles are case-sensitive" in str(first["event"])
    assert second["reason"] == "wrong_called_ae"
    assert "it called AE title 'rtops', but this SCP is 'RTOPS' (did you mean RTOPS?" in str(
        second["event"]
    )
    assert rejections(scp) == {"unknown_calling_ae": 1.0, "wrong_called_ae": 1.0}


def test_accepted_associations_and_echoes_are_logged_with_the_device(
    scp: RunningScp, dcmtk: dict[str, str]
) -> None:
    with capture_logs() as logs:
        out = subprocess.run(
            [
                dcmtk["echoscu"],
                "-aet",
                "TRUEBEAM1",
                "-aec",
                "RTOPS",
                "127.0.0.1",
                str(scp.dicom_port),
            ],
            capture_output=True,
            text=True,
        )
    assert out.returncode == 0, out.stderr
    accepted = next(e for e in logs if e["event"] == "association accepted")
    assert accepted["calling_ae"] == "TRUEBEAM1"
    assert accepted["role"] == "linac" and accepted["machine"] == "TrueBeam1"
    assert accepted["accepted_contexts"] == 1
    assert str(accepted["peer"]).startswith("127.0.0.1:")
    echo = next(e for e in logs if e["event"] == "C-ECHO answered")
    assert echo["calling_ae"] == "TRUEBEAM1" and echo["role"] == "linac"
    assert rejections(scp) == {}


def test_an_unsupported_sop_class_is_logged_and_counted(
    scp: RunningScp, dcmtk: dict[str, str], tmp_path: Path
) -> None:
    ds = pydicom.Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = MR_IMAGE, generate_uid()
    ds.PatientID, ds.Modality = "RTOPS-TEST-001", "MR"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "mr.dcm"
    ds.save_as(path, enforce_file_format=True)

    with capture_logs() as logs:
        out = storescu(dcmtk["storescu"], scp.dicom_port, [path])
    assert out.returncode != 0  # nothing could be sent
    (entry,) = warnings(logs)
    assert str(entry["event"]).startswith(
        "accepted an association from 'TRUEBEAM1' but refused every presentation context"
    )
    assert entry["accepted_contexts"] == 0
    assert entry["refused_contexts"] == {"sop_class_not_supported": ["MR Image Storage"]}
    assert rejections(scp) == {"sop_class_not_supported": 1.0}


def test_a_long_list_of_refused_classes_is_shortened_for_the_problems_page() -> None:
    from services.scp_listener.scp import _first_of

    names = [f"Class {n}" for n in range(1, 101)]
    assert _first_of(names) == "Class 1, Class 2, Class 3, Class 4, Class 5 and 95 more"
    assert _first_of(names[:2]) == "Class 1, Class 2"
