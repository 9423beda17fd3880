"""RT Plan and RT Ion Plan -> ``PlanReceived`` (domain-dicom.md s. 5 and s. 11)."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.tag import Tag

from services.scp_listener import sop
from services.scp_listener.extract.readers import (
    integer,
    items,
    number,
    numbers,
    parse_date,
    patient,
    referenced_uids,
    stamp,
    text,
)
from shared.events import (
    DoseReference,
    FractionGroup,
    PlannedBeam,
    PlanReceived,
    PlanReference,
    SourceDevice,
    StoredObject,
)

_ARC_DIRECTIONS = frozenset({"CW", "CC"})
_MLC_TYPES = frozenset({"MLCX", "MLCY"})
# Leaf/jaw positions are DS in mm; a TPS rewriting the same position may round differently.
_POSITION_TOLERANCE_MM = 1e-3


def plan_received(
    ds: Dataset, obj: StoredObject, source: SourceDevice, clinic_tz: str
) -> PlanReceived:
    ion = obj.sop_class_uid == sop.RT_ION_PLAN
    per_fraction = _referenced_beam_values(ds)
    beams = [
        _planned_beam(beam, ion, per_fraction)
        for beam in items(ds, "IonBeamSequence" if ion else "BeamSequence")
    ]
    setups = items(ds, "PatientSetupSequence")
    structure_sets = referenced_uids(ds, "ReferencedStructureSetSequence")
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
        fraction_groups=_fraction_groups(ds),
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
        isocenter_count=len(_isocenters(ds, ion)),
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
        referring_physician=text(ds, "ReferringPhysicianName"),
        structure_set_uid=structure_sets[0] if structure_sets else None,
        dose_uids=referenced_uids(ds, "ReferencedDoseSequence"),
    )


# ---------------------------------------------------------------- beams


def _referenced_beam_values(ds: Dataset) -> dict[int | None, tuple[float | None, float | None]]:
    """Beam number -> (Beam Meterset, Beam Dose) per fraction, from the fraction groups'
    Referenced Beam Sequence (s. 5.3): the first group stating a value wins."""
    out: dict[int | None, tuple[float | None, float | None]] = {}
    for fg in items(ds, "FractionGroupSequence"):
        for rb in items(fg, "ReferencedBeamSequence"):
            beam = integer(rb, "ReferencedBeamNumber")
            mu, dose = out.get(beam, (None, None))
            out[beam] = (
                mu if mu is not None else number(rb, "BeamMeterset"),
                dose if dose is not None else number(rb, "BeamDose"),
            )
    return out


def _planned_beam(
    beam: Dataset, ion: bool, per_fraction: dict[int | None, tuple[float | None, float | None]]
) -> PlannedBeam:
    cps = items(beam, "IonControlPointSequence" if ion else "ControlPointSequence")
    number_ = integer(beam, "BeamNumber")
    mu, dose = per_fraction.get(number_, (None, None))
    return PlannedBeam(
        number=number_,
        name=text(beam, "BeamName"),
        machine=text(beam, "TreatmentMachineName"),
        beam_type=text(beam, "BeamType"),
        radiation_type=text(beam, "RadiationType"),
        delivery_type=text(beam, "TreatmentDeliveryType"),
        energies=tuple(
            sorted({e for cp in cps if (e := number(cp, "NominalBeamEnergy")) is not None})
        ),
        control_points=integer(beam, "NumberOfControlPoints"),
        meterset=mu,
        gantry_rotation=gantry_rotation(cps),
        mlc_modulated=mlc_modulated(cps),
        wedge_count=integer(beam, "NumberOfWedges"),
        block_count=integer(beam, "NumberOfBlocks"),
        compensator_count=integer(beam, "NumberOfCompensators"),
        bolus_count=_bolus_count(beam),
        applicator_count=_item_count(beam, "ApplicatorSequence"),
        beam_dose_gy=dose,
        source_axis_distance_mm=None if ion else number(beam, "SourceAxisDistance"),
        scan_mode=text(beam, "ScanMode") if ion else None,
        range_shifter_count=integer(beam, "NumberOfRangeShifters") if ion else None,
        range_modulator=_range_modulator(beam) if ion else None,
    )


def gantry_rotation(cps: list[Dataset]) -> str | None:
    """Gantry Rotation Direction (300A,011F) is stated on the first control point and again
    wherever it changes: CW or CC on any of them makes the beam an arc."""
    directions = {d for cp in cps if (d := text(cp, "GantryRotationDirection"))}
    if directions & _ARC_DIRECTIONS:
        return "arc"
    return "static" if "NONE" in directions else None


def mlc_modulated(cps: list[Dataset]) -> bool:
    """Control points after the first carry a Beam Limiting Device Position item only for a
    device that moves, so any MLC positions that differ from the device's previous ones mean
    the leaves move during the beam (IMRT, VMAT)."""
    last: dict[str, tuple[float, ...]] = {}
    for cp in cps:
        for device in items(cp, "BeamLimitingDevicePositionSequence"):
            kind = text(device, "RTBeamLimitingDeviceType")
            positions = numbers(device, "LeafJawPositions")
            if kind not in _MLC_TYPES or positions is None:
                continue
            before = last.get(kind)
            if before is not None and (
                len(before) != len(positions)
                or any(
                    abs(a - b) > _POSITION_TOLERANCE_MM
                    for a, b in zip(before, positions, strict=True)
                )
            ):
                return True
            last[kind] = positions
    return False


def _moved(before: tuple[float, ...], after: tuple[float, ...]) -> bool:
    if len(before) != len(after):
        return True
    return any(abs(a - b) > _POSITION_TOLERANCE_MM for a, b in zip(before, after, strict=True))


def _item_count(ds: Dataset, keyword: str) -> int | None:
    """How many items a Type 3 sequence has; ``None`` when it is not there at all."""
    return len(items(ds, keyword)) if keyword in ds else None


def _bolus_count(beam: Dataset) -> int | None:
    stated = integer(beam, "NumberOfBoli")
    if stated is not None:
        return stated
    # Number of Boli is Type 1 in the RT Beams module but some exports only list the boli.
    return (
        len(items(beam, "ReferencedBolusSequence")) if "ReferencedBolusSequence" in beam else None
    )


def _range_modulator(beam: Dataset) -> bool | None:
    count = integer(beam, "NumberOfRangeModulators")
    if count is not None:
        return count > 0 or bool(items(beam, "RangeModulatorSequence"))
    return True if items(beam, "RangeModulatorSequence") else None


def _isocenters(ds: Dataset, ion: bool) -> set[tuple[float, ...]]:
    beam_kw, cp_kw = (
        ("IonBeamSequence", "IonControlPointSequence")
        if ion
        else ("BeamSequence", "ControlPointSequence")
    )
    return {
        tuple(round(v, 1) for v in iso)
        for beam in items(ds, beam_kw)
        for cp in items(beam, cp_kw)
        if (iso := numbers(cp, "IsocenterPosition")) is not None and len(iso) == 3
    }


# ---------------------------------------------------------------- fraction groups


def _fraction_groups(ds: Dataset) -> tuple[FractionGroup, ...]:
    groups = items(ds, "FractionGroupSequence")
    plan_doses = {
        integer(dr, "DoseReferenceNumber"): number(dr, "TargetPrescriptionDose")
        for dr in items(ds, "DoseReferenceSequence")
        if text(dr, "DoseReferenceType") == "TARGET"
    }
    stated_targets = [d for d in plan_doses.values() if d is not None]
    out = []
    for fg in groups:
        refs = items(fg, "ReferencedDoseReferenceSequence")
        numbers_ = tuple(
            n for r in refs if (n := integer(r, "ReferencedDoseReferenceNumber")) is not None
        )
        prescription = next(
            (dose for r in refs if (dose := _group_dose(r, plan_doses)) is not None), None
        )
        if not refs and len(groups) == 1 and len(stated_targets) == 1:
            # One group, one stated target dose: the prescription can only be that one.
            prescription = stated_targets[0]
        fractions = integer(fg, "NumberOfFractionsPlanned")
        out.append(
            FractionGroup(
                number=integer(fg, "FractionGroupNumber") or 0,
                fractions_planned=fractions,
                beam_count=integer(fg, "NumberOfBeams"),
                description=text(fg, "FractionGroupDescription"),
                pattern_digits_per_day=integer(fg, "NumberOfFractionPatternDigitsPerDay"),
                repeat_cycle_length=integer(fg, "RepeatFractionCycleLength"),
                pattern=text(fg, "FractionPattern"),
                dose_reference_numbers=numbers_,
                prescription_dose_gy=prescription,
                dose_per_fraction_gy=(
                    round(prescription / fractions, 6)
                    if prescription is not None and fractions
                    else None
                ),
            )
        )
    return tuple(out)


def _group_dose(ref: Dataset, plan_doses: dict[int | None, float | None]) -> float | None:
    """A group's own Target Prescription Dose on its Referenced Dose Reference item (s. 5.3),
    else the one of the plan's TARGET dose reference it names (s. 5.2)."""
    own = number(ref, "TargetPrescriptionDose")
    return own if own is not None else plan_doses.get(integer(ref, "ReferencedDoseReferenceNumber"))


def _retired_treatment_sites(ds: Dataset) -> str | None:
    # Treatment Sites (300A,000B) is retired; older planning systems still send it (s. 5.1).
    elem = ds.get(Tag(0x300A, 0x000B))
    value = getattr(elem, "value", None)
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).strip() or None if value else None
