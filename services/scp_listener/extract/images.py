"""Images (CT, Enhanced CT, RT Image): classification and the per-instance facts that an
image series' ``ImagingAcquired`` event aggregates (domain-dicom.md s. 6.1, 6.2 and s. 11)."""

from __future__ import annotations

import re
from typing import Any

from pydicom.dataset import Dataset

from services.scp_listener import sop
from services.scp_listener.extract.readers import first, get_value, integer, stamp, text
from shared.events import ImageApproval, SourceDevice


def classify(ds: Dataset, sop_class_uid: str, device_role: str) -> str:
    """CBCT vs simulation CT by the sender's registry role first (architecture: scp_listener
    decides), then by attributes; 2D images by RT Image Image Type."""
    if sop_class_uid == sop.RT_IMAGE:
        image_type = [str(v).upper() for v in (get_value(ds, "ImageType") or [])]
        kind = image_type[2] if len(image_type) > 2 else ""
        if kind == "DRR":
            return "drr"
        if kind == "PORTAL":
            return "mv_portal"
        return "kv_2d"
    if sop_class_uid in sop.CT_CLASSES:
        if device_role == "ct_simulator":
            return "sim_ct"
        if device_role == "linac":
            return "cbct"
        hint = " ".join(
            filter(
                None,
                (text(ds, "SeriesDescription"), text(ds, "ProtocolName"), text(ds, "Manufacturer")),
            )
        ).upper()
        if re.search(r"\bCBCT\b|\bCB\b|XVI|OBI|CONE|VARIAN|ELEKTA|ACCURAY", hint):
            return "cbct"
        return "sim_ct"
    return "other"


def image_facts(
    ds: Dataset, sop_class_uid: str, source: SourceDevice, clinic_tz: str
) -> dict[str, Any]:
    """The per-instance facts of an image that its series' imaging event aggregates."""
    acquired = (
        stamp(ds, "AcquisitionDate", "AcquisitionTime", clinic_tz)
        or stamp(ds, "ContentDate", "ContentTime", clinic_tz)
        or stamp(ds, "SeriesDate", "SeriesTime", clinic_tz)
    )
    plan_ref = first(ds, "ReferencedRTPlanSequence")
    approval = None
    status = text(ds, "ApprovalStatus")
    if status:
        approval = ImageApproval(
            sop_instance_uid=text(ds, "SOPInstanceUID") or "",
            status=status,
            reviewer_name=text(ds, "ReviewerName"),
            reviewed_at=stamp(ds, "ReviewDate", "ReviewTime", clinic_tz),
        )
    station = text(ds, "StationName")
    return {
        "study_instance_uid": text(ds, "StudyInstanceUID"),
        "modality": text(ds, "Modality"),
        "classification": classify(ds, sop_class_uid, source.role),
        "acquired_at": acquired,
        "frame_of_reference_uid": text(ds, "FrameOfReferenceUID"),
        "machine": source.machine or text(ds, "RadiationMachineName") or station,
        "station_name": station,
        "manufacturer": text(ds, "Manufacturer"),
        "model_name": text(ds, "ManufacturerModelName"),
        "series_description": text(ds, "SeriesDescription"),
        "study_description": text(ds, "StudyDescription"),
        "protocol_name": text(ds, "ProtocolName"),
        # Accession Number (0008,0050) is Type 2 in General Study: often present but empty.
        "accession_number": text(ds, "AccessionNumber"),
        "referenced_plan_uid": text(plan_ref, "ReferencedSOPInstanceUID"),
        "fraction_number": integer(ds, "FractionNumber"),
        "beam_number": integer(ds, "ReferencedBeamNumber"),
        "approval": approval,
    }
