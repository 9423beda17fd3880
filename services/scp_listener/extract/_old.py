"""Read the attributes rtops needs from a stored DICOM header and turn them into event payloads.

Every Type 2 attribute may be present but empty, and many exports omit Type 3 ones: each
reader tolerates both and follows the fallbacks of ``../shared/docs/domain-dicom.md`` (s. 11).
Pure functions over a pydicom ``Dataset``: no I/O, no clock, no settings lookups.
"""

from __future__ import annotations

import io
import math
import re
import zipfile
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from services.scp_listener import sop
from shared.events import (
    BeamDelivery,
    CouchPosition,
    DoseReference,
    FractionGroup,
    FractionGroupSummary,
    ImageApproval,
    Override,
    Patient,
    PlannedBeam,
    PlanReceived,
    PlanReference,
    RegistrationItem,
    RegistrationReceived,
    SourceDevice,
    StoredObject,
    TreatmentRecorded,
    TreatmentSummarized,
    Vector3,
)

# ---------------------------------------------------------------- primitive readers


def text(ds: Dataset | None, keyword: str) -> str | None:
    """A string value, ``None`` when absent or empty (Type 2 attributes may be empty)."""
    if ds is None:
        return None
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, list | tuple | MultiValue):
        value = "\\".join(str(v) for v in value)
    out = str(value).strip()
    return out or None


def number(ds: Dataset | None, keyword: str) -> float | None:
    value = ds.get(keyword) if ds is not None else None
    if value is None or value == "":
        return None
    if isinstance(value, list | tuple | MultiValue):
        value = value[0] if len(value) else None
        if value is None:
            return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def integer(ds: Dataset | None, keyword: str) -> int | None:
    value = number(ds, keyword)
    return int(value) if value is not None else None


def items(ds: Dataset | None, keyword: str) -> Sequence | list[Dataset]:
    value = ds.get(keyword) if ds is not None else None
    return value if value else []


def first(ds: Dataset | None, keyword: str) -> Dataset | None:
    seq = items(ds, keyword)
    return seq[0] if seq else None


def parse_date(value: str | None) -> date | None:
    if not value or len(value) < 8:
        return None
    try:
        return date(int(value[0:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        return None


def parse_datetime(
    da: str | None, tm: str | None, *, offset: str | None, clinic_tz: str
) -> datetime | None:
    """DA + TM to UTC. DICOM dates carry no zone: use Timezone Offset From UTC when the object
    has one, else the clinic's zone."""
    day = parse_date(da)
    if day is None:
        return None
    tm = (tm or "").strip()
    match = re.match(r"^(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?", tm.replace(":", ""))
    hh, mm, ss, frac = match.groups() if match else (None, None, None, None)
    try:
        local = datetime(
            day.year,
            day.month,
            day.day,
            int(hh or 0),
            int(mm or 0),
            int(ss or 0),
            int((frac or "0").ljust(6, "0")),
        )
    except ValueError:
        return None
    tz = _offset_zone(offset) or ZoneInfo(clinic_tz)
    return local.replace(tzinfo=tz).astimezone(UTC)


def _offset_zone(offset: str | None) -> timezone | None:
    match = re.fullmatch(r"([+-])(\d{2})(\d{2})", (offset or "").strip())
    if not match:
        return None
    sign = 1 if match.group(1) == "+" else -1
    return timezone(sign * timedelta(hours=int(match.group(2)), minutes=int(match.group(3))))


def stamp(
    ds: Dataset, date_kw: str, time_kw: str, clinic_tz: str, root: Dataset | None = None
) -> datetime | None:
    offset = text(root if root is not None else ds, "TimezoneOffsetFromUTC")
    return parse_datetime(text(ds, date_kw), text(ds, time_kw), offset=offset, clinic_tz=clinic_tz)


def patient(ds: Dataset) -> Patient:
    return Patient(
        id=text(ds, "PatientID") or "",
        issuer=text(ds, "IssuerOfPatientID"),
        name=text(ds, "PatientName"),
        birth_date=parse_date(text(ds, "PatientBirthDate")),
    )


def decode_sequences(ds: Dataset) -> None:
    """Decode every sequence, nested ones included, so that a malformed item raises here.

    Plain values stay raw until something reads them: converting every element of a CBCT
    slice costs more than storing it, and pydicom only warns about bad plain values anyway.
    """
    # _dict, not get_item(): get_item() would read deferred values (pixel data) from disk.
    for tag, elem in list(ds._dict.items()):
        if not _is_sequence(tag, elem.VR, getattr(elem, "length", 0)):
            continue
        for item in ds[tag].value:
            decode_sequences(item)


_UNDEFINED_LENGTH = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010


def _is_sequence(tag: int, vr: str | None, length: int) -> bool:
    if vr is not None:
        return vr == "SQ"
    try:  # implicit VR: the data dictionary knows public tags
        return dictionary_VR(tag) == "SQ"
    except KeyError:  # private or unknown: undefined length means a sequence
        return length == _UNDEFINED_LENGTH and tag != _PIXEL_DATA


# ---------------------------------------------------------------- RT Plan / RT Ion Plan


def plan_received(
    ds: Dataset, obj: StoredObject, source: SourceDevice, clinic_tz: str
) -> PlanReceived:
    ion = obj.sop_class_uid == sop.RT_ION_PLAN
    beam_kw = "IonBeamSequence" if ion else "BeamSequence"
    cp_kw = "IonControlPointSequence" if ion else "ControlPointSequence"
    beams: list[PlannedBeam] = []
    isocenters: set[tuple[float, ...]] = set()
    meterset = {
        (integer(fg, "FractionGroupNumber"), integer(rb, "ReferencedBeamNumber")): number(
            rb, "BeamMeterset"
        )
        for fg in items(ds, "FractionGroupSequence")
        for rb in items(fg, "ReferencedBeamSequence")
    }
    for beam in items(ds, beam_kw):
        energies: set[float] = set()
        for cp in items(beam, cp_kw):
            energy = number(cp, "NominalBeamEnergy")
            if energy is not None:
                energies.add(energy)
            iso = cp.get("IsocenterPosition")
            if iso and len(iso) == 3:
                isocenters.add(tuple(round(float(v), 1) for v in iso))
        beam_number = integer(beam, "BeamNumber")
        mu = next((v for (_, b), v in meterset.items() if b == beam_number and v is not None), None)
        beams.append(
            PlannedBeam(
                number=beam_number,
                name=text(beam, "BeamName"),
                machine=text(beam, "TreatmentMachineName"),
                beam_type=text(beam, "BeamType"),
                radiation_type=text(beam, "RadiationType"),
                delivery_type=text(beam, "TreatmentDeliveryType"),
                energies=tuple(sorted(energies)),
                control_points=integer(beam, "NumberOfControlPoints"),
                meterset=mu,
            )
        )
    setups = items(ds, "PatientSetupSequence")
    return PlanReceived(
        patient=patient(ds),
        source=source,
        object=obj,
        ion=ion,
        label=text(ds, "RTPlanLabel"),
        name=text(ds, "RTPlanName"),
        description=text(ds, "RTPlanDescription"),
        plan_date=parse_date(text(ds, "RTPlanDate")),
        plan_time=text(ds, "RTPlanTime"),
        intent=text(ds, "PlanIntent"),
        treatment_site=text(ds, "TreatmentSite") or _retired_treatment_sites(ds),
        geometry=text(ds, "RTPlanGeometry"),
        approval_status=text(ds, "ApprovalStatus"),
        reviewer_name=text(ds, "ReviewerName"),
        reviewed_at=stamp(ds, "ReviewDate", "ReviewTime", clinic_tz),
        frame_of_reference_uid=text(ds, "FrameOfReferenceUID"),
        prescription_description=text(ds, "PrescriptionDescription"),
        referenced_plans=tuple(
            PlanReference(sop_instance_uid=uid, relationship=text(ref, "RTPlanRelationship"))
            for ref in items(ds, "ReferencedRTPlanSequence")
            if (uid := text(ref, "ReferencedSOPInstanceUID"))
        ),
        fraction_groups=tuple(
            FractionGroup(
                number=integer(fg, "FractionGroupNumber") or 0,
                fractions_planned=integer(fg, "NumberOfFractionsPlanned"),
                beam_count=integer(fg, "NumberOfBeams"),
                description=text(fg, "FractionGroupDescription"),
                pattern_digits_per_day=integer(fg, "NumberOfFractionPatternDigitsPerDay"),
                repeat_cycle_length=integer(fg, "RepeatFractionCycleLength"),
                pattern=text(fg, "FractionPattern"),
            )
            for fg in items(ds, "FractionGroupSequence")
        ),
        dose_references=tuple(
            DoseReference(
                number=integer(dr, "DoseReferenceNumber"),
                uid=text(dr, "DoseReferenceUID"),
                type=text(dr, "DoseReferenceType"),
                structure_type=text(dr, "DoseReferenceStructureType"),
                description=text(dr, "DoseReferenceDescription"),
                target_prescription_dose_gy=number(dr, "TargetPrescriptionDose"),
            )
            for dr in items(ds, "DoseReferenceSequence")
        ),
        beams=tuple(beams),
        machines=tuple(sorted({b.machine for b in beams if b.machine})),
        radiation_types=tuple(sorted({b.radiation_type for b in beams if b.radiation_type})),
        isocenter_count=len(isocenters),
        motion_management=any("MotionSynchronizationSequence" in s for s in setups),
        fixation_devices=tuple(
            sorted(
                {
                    t
                    for s in setups
                    for f in items(s, "FixationDeviceSequence")
                    if (t := text(f, "FixationDeviceType"))
                }
            )
        ),
    )


def _retired_treatment_sites(ds: Dataset) -> str | None:
    # Treatment Sites (300A,000B) is retired; older planning systems still send it.
    elem = ds.get(Tag(0x300A, 0x000B))
    value = getattr(elem, "value", None)
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).strip() or None if value else None


# ---------------------------------------------------------------- treatment records

_THERAPEUTIC = {"TREATMENT", "CONTINUATION"}


def treatment_recorded(
    ds: Dataset, obj: StoredObject, source: SourceDevice, clinic_tz: str
) -> TreatmentRecorded:
    kind, session_kw, cp_kw = {
        sop.RT_ION_BEAMS_RECORD: (
            "ion_beams",
            "TreatmentSessionIonBeamSequence",
            "IonControlPointDeliverySequence",
        ),
        sop.RT_BRACHY_RECORD: ("brachy", "TreatmentSessionApplicationSetupSequence", ""),
    }.get(
        obj.sop_class_uid, ("beams", "TreatmentSessionBeamSequence", "ControlPointDeliverySequence")
    )
    offset = text(ds, "TimezoneOffsetFromUTC")
    beams: list[BeamDelivery] = []
    operators: set[str] = set()
    if name := text(ds, "OperatorsName"):
        operators.update(name.split("\\"))
    for item in items(ds, session_kw):
        cps = items(item, cp_kw) if cp_kw else []
        times = [
            t
            for cp in cps
            if (
                t := parse_datetime(
                    text(cp, "TreatmentControlPointDate"),
                    text(cp, "TreatmentControlPointTime"),
                    offset=offset,
                    clinic_tz=clinic_tz,
                )
            )
        ]
        overrides = [
            Override(
                parameter=_tag_text(ov.get("OverrideParameterPointer")),
                operator=text(ov, "OperatorsName"),
                reason=text(ov, "OverrideReason"),
            )
            for cp in cps
            for ov in items(cp, "OverrideSequence")
        ]
        operators.update(o.operator for o in overrides if o.operator)
        cp0 = cps[0] if cps else None
        couch = None
        if cp0 is not None and any(
            k in cp0
            for k in (
                "TableTopVerticalPosition",
                "TableTopLongitudinalPosition",
                "TableTopLateralPosition",
            )
        ):
            couch = CouchPosition(
                vertical_mm=number(cp0, "TableTopVerticalPosition"),
                longitudinal_mm=number(cp0, "TableTopLongitudinalPosition"),
                lateral_mm=number(cp0, "TableTopLateralPosition"),
            )
        beams.append(
            BeamDelivery(
                beam_number=integer(item, "ReferencedBeamNumber"),
                beam_name=text(item, "BeamName"),
                delivery_type=text(item, "TreatmentDeliveryType"),
                radiation_type=text(item, "RadiationType"),
                current_fraction_number=integer(item, "CurrentFractionNumber"),
                termination_status=text(item, "TreatmentTerminationStatus"),
                verification_status=text(item, "TreatmentVerificationStatus"),
                specified_meterset=number(item, "SpecifiedPrimaryMeterset"),
                delivered_meterset=number(item, "DeliveredPrimaryMeterset"),
                started_at=min(times) if times else None,
                ended_at=max(times) if times else None,
                couch=couch,
                overrides=tuple(overrides),
            )
        )
    treated_at, source_of_time = _treated_at(ds, beams, clinic_tz)
    machine = first(ds, "TreatmentMachineSequence")
    plan_ref = first(ds, "ReferencedRTPlanSequence")
    therapeutic = [b for b in beams if (b.delivery_type or "TREATMENT") in _THERAPEUTIC]
    return TreatmentRecorded(
        patient=patient(ds),
        source=source,
        object=obj,
        record_kind=kind,  # type: ignore[arg-type]
        treated_at=treated_at,
        treated_at_source=source_of_time,  # type: ignore[arg-type]
        content_origin=text(ds, "TreatmentRecordContentOrigin"),
        plan_uid=text(plan_ref, "ReferencedSOPInstanceUID"),
        referenced_record_uids=tuple(
            uid
            for ref in items(ds, "ReferencedTreatmentRecordSequence")
            if (uid := text(ref, "ReferencedSOPInstanceUID"))
        ),
        machine=text(machine, "TreatmentMachineName") or source.machine,
        machine_serial=text(machine, "DeviceSerialNumber"),
        manufacturer=text(machine, "Manufacturer") or text(ds, "Manufacturer"),
        fraction_group_number=integer(ds, "ReferencedFractionGroupNumber"),
        fractions_planned=integer(ds, "NumberOfFractionsPlanned"),
        fraction_numbers=tuple(
            sorted(
                {b.current_fraction_number for b in beams if b.current_fraction_number is not None}
            )
        ),
        delivered=any((b.delivered_meterset or 0) > 0 for b in therapeutic),
        partial=any(_partial(b) for b in therapeutic),
        operators=tuple(sorted(operators)),
        overrides=any(b.overrides or b.verification_status == "VERIFIED_OVR" for b in beams),
        beams=tuple(beams),
    )


def _partial(beam: BeamDelivery) -> bool:
    if beam.termination_status not in (None, "NORMAL"):
        return True
    spec, done = beam.specified_meterset, beam.delivered_meterset
    return spec is not None and done is not None and done < spec - 1e-6


def _treated_at(
    ds: Dataset, beams: list[BeamDelivery], clinic_tz: str
) -> tuple[datetime | None, str]:
    # Treatment Date (3008,0250) is Type 2 and may be empty: fall back to the first control
    # point's timestamp, then to Instance Creation Date (domain-dicom.md s. 4.1).
    if (at := stamp(ds, "TreatmentDate", "TreatmentTime", clinic_tz)) is not None:
        return at, "treatment_date"
    starts = [b.started_at for b in beams if b.started_at]
    if starts:
        return min(starts), "control_point"
    if (at := stamp(ds, "InstanceCreationDate", "InstanceCreationTime", clinic_tz)) is not None:
        return at, "instance_creation"
    return None, "none"


def _tag_text(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return str(Tag(value))
    except (TypeError, ValueError, OverflowError):
        return str(value)


def treatment_summarized(
    ds: Dataset, obj: StoredObject, source: SourceDevice, clinic_tz: str
) -> TreatmentSummarized:
    plan_ref = first(ds, "ReferencedRTPlanSequence")
    return TreatmentSummarized(
        patient=patient(ds),
        source=source,
        object=obj,
        plan_uid=text(plan_ref, "ReferencedSOPInstanceUID"),
        current_status=text(ds, "CurrentTreatmentStatus"),
        first_treatment_date=parse_date(text(ds, "FirstTreatmentDate")),
        most_recent_treatment_date=parse_date(text(ds, "MostRecentTreatmentDate")),
        fraction_groups=tuple(
            FractionGroupSummary(
                number=integer(fg, "ReferencedFractionGroupNumber"),
                type=text(fg, "FractionGroupType"),
                fractions_planned=integer(fg, "NumberOfFractionsPlanned"),
                fractions_delivered=integer(fg, "NumberOfFractionsDelivered"),
            )
            for fg in items(ds, "FractionGroupSummarySequence")
        ),
    )


# ---------------------------------------------------------------- registrations

_IDENTITY = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def registration_received(
    ds: Dataset, obj: StoredObject, source: SourceDevice, clinic_tz: str
) -> RegistrationReceived | None:
    """A standard or deformable registration, or an Elekta XVI "RPS" Raw Data export.
    ``None`` for Raw Data that is not a registration (stored, but no event)."""
    common: dict[str, Any] = {
        "patient": patient(ds),
        "source": source,
        "object": obj,
        "content_at": stamp(ds, "ContentDate", "ContentTime", clinic_tz),
        "creator_name": text(ds, "ContentCreatorName"),
        "label": text(ds, "ContentLabel"),
        "description": text(ds, "ContentDescription"),
        "frame_of_reference_uid": text(ds, "FrameOfReferenceUID"),
    }
    if obj.sop_class_uid == sop.RAW_DATA:
        shift = elekta_couch_shift_mm(ds)
        if shift is None:
            return None
        return RegistrationReceived(
            kind="elekta_rps",
            couch_shift_mm=shift,
            description=common.pop("description") or text(ds, "SeriesDescription"),
            **common,
        )
    index = _series_index(ds)
    if obj.sop_class_uid == sop.DEFORMABLE_REGISTRATION:
        regs = [
            RegistrationItem(
                frame_of_reference_uid=text(reg, "SourceFrameOfReferenceUID"),
                referenced_series_uids=_series_uids(reg, index),
                referenced_instance_count=len(items(reg, "ReferencedImageSequence")),
                matrix_type=text(pre, "FrameOfReferenceTransformationMatrixType"),
                matrix=_matrix(pre),
            )
            for reg in items(ds, "DeformableRegistrationSequence")
            for pre in [first(reg, "PreDeformationMatrixRegistrationSequence")]
        ]
        return RegistrationReceived(
            kind="deformable", items=tuple(regs), moving_series_uids=_moving(regs), **common
        )
    regs = []
    for reg in items(ds, "RegistrationSequence"):
        matrix_item = first(reg, "MatrixRegistrationSequence")
        matrices = items(matrix_item, "MatrixSequence")
        combined = _compose([m for mi in matrices if (m := _matrix(mi))])
        regs.append(
            RegistrationItem(
                frame_of_reference_uid=text(reg, "FrameOfReferenceUID"),
                referenced_series_uids=_series_uids(reg, index),
                referenced_instance_count=len(items(reg, "ReferencedImageSequence")),
                matrix_type=text(matrices[0], "FrameOfReferenceTransformationMatrixType")
                if matrices
                else None,
                matrix=combined,
            )
        )
    moving = next((r for r in regs if r.matrix and not _is_identity(r.matrix)), None)
    translation = rotation = None
    if moving and moving.matrix and (moving.matrix_type or "RIGID") == "RIGID":
        translation, rotation = rigid_components(moving.matrix)
    return RegistrationReceived(
        kind="rigid",
        items=tuple(regs),
        moving_series_uids=_moving(regs),
        translation_mm=translation,
        rotation_deg=rotation,
        **common,
    )


def _series_index(ds: Dataset) -> dict[str, str]:
    """Instance UID -> series UID from the Common Instance Reference module, which is where a
    registration says which series its Referenced Image Sequence instances belong to."""
    series = list(items(ds, "ReferencedSeriesSequence"))
    for study in items(ds, "StudiesContainingOtherReferencedInstancesSequence"):
        series.extend(items(study, "ReferencedSeriesSequence"))
    return {
        uid: series_uid
        for s in series
        if (series_uid := text(s, "SeriesInstanceUID"))
        for ref in items(s, "ReferencedInstanceSequence")
        if (uid := text(ref, "ReferencedSOPInstanceUID"))
    }


def _series_uids(reg: Dataset, index: dict[str, str]) -> tuple[str, ...]:
    uids = {
        index.get(text(ref, "ReferencedSOPInstanceUID") or "")
        for ref in items(reg, "ReferencedImageSequence")
    }
    uids.update(text(s, "SeriesInstanceUID") for s in items(reg, "ReferencedSeriesSequence"))
    return tuple(sorted(u for u in uids if u))


def _moving(regs: list[RegistrationItem]) -> tuple[str, ...]:
    moving = [r for r in regs if r.matrix is None or not _is_identity(r.matrix)] or regs
    return tuple(sorted({u for r in moving for u in r.referenced_series_uids}))


def _matrix(ds: Dataset | None) -> tuple[float, ...] | None:
    value = ds.get("FrameOfReferenceTransformationMatrix") if ds is not None else None
    if not value or len(value) != 16:
        return None
    return tuple(float(v) for v in value)


def _compose(matrices: list[tuple[float, ...]]) -> tuple[float, ...] | None:
    # Matrix Sequence items apply in order: M = Mn x ... x M1.
    if not matrices:
        return None
    out = matrices[0]
    for m in matrices[1:]:
        out = tuple(
            sum(m[r * 4 + k] * out[k * 4 + c] for k in range(4)) for r in range(4) for c in range(4)
        )
    return out


def _is_identity(m: tuple[float, ...]) -> bool:
    return all(abs(a - b) < 1e-9 for a, b in zip(m, _IDENTITY, strict=True))


def rigid_components(m: tuple[float, ...]) -> tuple[Vector3, Vector3]:
    """Translation (mm) and rotation about x, y, z (degrees, R = Rz Ry Rx) of a rigid 4x4."""
    ry = math.degrees(math.asin(max(-1.0, min(1.0, -m[8]))))
    rx = math.degrees(math.atan2(m[9], m[10]))
    rz = math.degrees(math.atan2(m[4], m[0]))
    return (
        Vector3(x=m[3], y=m[7], z=m[11]),
        Vector3(x=round(rx, 6), y=round(ry, 6), z=round(rz, 6)),
    )


def elekta_couch_shift_mm(ds: Dataset) -> Vector3 | None:
    """Couch shift from an Elekta XVI "RPS" export: a ZIP in private (0021,xx3A) holding
    ``*.INI.XVI`` with CouchShiftLat/Long/Height in cm (domain-dicom.md s. 6.5; best effort,
    a layout we cannot read gives None and the object is only stored)."""
    block = _private_block(ds, 0x0021, "Elekta: zip file")
    if block is None:
        return None
    payload = ds.get(Tag(0x0021, (block << 8) | 0x3A))
    raw = getattr(payload, "value", None)
    if not isinstance(raw, bytes):
        return None
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            name = next((n for n in zf.namelist() if n.upper().endswith(".INI.XVI")), None)
            if name is None:
                return None
            ini = zf.read(name).decode("latin-1")
    except (zipfile.BadZipFile, OSError, KeyError):
        return None
    values = dict(re.findall(r"(?im)^\s*(CouchShift\w+)\s*=\s*([-+0-9.eE]+)\s*$", ini))
    keys = {k.lower(): v for k, v in values.items()}
    try:
        lat, lng, vert = (
            float(keys[k]) * 10.0 for k in ("couchshiftlat", "couchshiftlong", "couchshiftheight")
        )
    except (KeyError, ValueError):
        return None
    return Vector3(x=lat, y=lng, z=vert)


def _private_block(ds: Dataset, group: int, creator: str) -> int | None:
    for element in range(0x10, 0x100):
        elem = ds.get(Tag(group, element))
        if elem is None:
            continue
        value = elem.value.decode("latin-1") if isinstance(elem.value, bytes) else elem.value
        if str(value).strip() == creator:
            return element
    return None


# ---------------------------------------------------------------- images


def classify(ds: Dataset, sop_class_uid: str, device_role: str) -> str:
    """CBCT vs simulation CT by the sender's registry role first (architecture: scp_listener
    decides), then by attributes; 2D images by RT Image Image Type."""
    if sop_class_uid == sop.RT_IMAGE:
        image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
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
        "referenced_plan_uid": text(plan_ref, "ReferencedSOPInstanceUID"),
        "fraction_number": integer(ds, "FractionNumber"),
        "beam_number": integer(ds, "ReferencedBeamNumber"),
        "approval": approval,
    }
