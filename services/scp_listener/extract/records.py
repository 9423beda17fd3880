"""RT Beams / Ion Beams / Brachy Treatment Records -> ``TreatmentRecorded``, and RT Treatment
Summary Records -> ``TreatmentSummarized`` (domain-dicom.md s. 4 and s. 11)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydicom.dataset import Dataset
from pydicom.tag import Tag

from services.scp_listener import sop
from services.scp_listener.extract.readers import (
    first,
    get_value,
    integer,
    items,
    number,
    parse_date,
    parse_datetime,
    patient,
    referenced_uids,
    stamp,
    text,
)
from shared.events import (
    BeamDelivery,
    CouchPosition,
    FractionGroupSummary,
    Override,
    SourceDevice,
    StoredObject,
    TreatmentRecorded,
    TreatmentSummarized,
)
from shared.events.dicom import BrachyApplicationSetup, BrachyChannel, FractionStatus

_THERAPEUTIC = {"TREATMENT", "CONTINUATION"}
_COUCH = ("TableTopVerticalPosition", "TableTopLongitudinalPosition", "TableTopLateralPosition")


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
    beams = [_beam_delivery(item, cp_kw, offset, clinic_tz) for item in items(ds, session_kw)]
    operators = {o.operator for b in beams for o in b.overrides if o.operator}
    if name := text(ds, "OperatorsName"):
        operators.update(name.split("\\"))
    setups = brachy_setups(ds) if kind == "brachy" else ()
    treated_at, source_of_time = _treated_at(ds, beams, clinic_tz)
    machine = first(ds, "TreatmentMachineSequence")
    therapeutic = [b for b in beams if (b.delivery_type or "TREATMENT") in _THERAPEUTIC]
    if kind == "brachy":
        delivered = any(_channel_delivered(c) for s in setups for c in s.channels)
    else:
        delivered = any((b.delivered_meterset or 0) > 0 for b in therapeutic)
    return TreatmentRecorded(
        patient=patient(ds),
        source=source,
        object=obj,
        record_kind=kind,  # type: ignore[arg-type]
        treated_at=treated_at,
        treated_at_source=source_of_time,  # type: ignore[arg-type]
        content_origin=text(ds, "TreatmentRecordContentOrigin"),
        plan_uid=text(first(ds, "ReferencedRTPlanSequence"), "ReferencedSOPInstanceUID"),
        referenced_record_uids=referenced_uids(ds, "ReferencedTreatmentRecordSequence"),
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
        delivered=delivered,
        partial=any(_partial(b) for b in therapeutic),
        operators=tuple(sorted(operators)),
        overrides=any(b.overrides or b.verification_status == "VERIFIED_OVR" for b in beams),
        beams=tuple(beams),
        application_setups=setups,
        source_isotopes=tuple(
            sorted({i for s in items(ds, "RecordedSourceSequence") if (i := _isotope(s))})
        ),
    )


def _beam_delivery(item: Dataset, cp_kw: str, offset: str | None, clinic_tz: str) -> BeamDelivery:
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
    cp0 = cps[0] if cps else None
    couch = None
    if cp0 is not None and any(k in cp0 for k in _COUCH):
        couch = CouchPosition(
            vertical_mm=number(cp0, "TableTopVerticalPosition"),
            longitudinal_mm=number(cp0, "TableTopLongitudinalPosition"),
            lateral_mm=number(cp0, "TableTopLateralPosition"),
        )
    return BeamDelivery(
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
        overrides=tuple(
            Override(
                parameter=_tag_text(get_value(ov, "OverrideParameterPointer")),
                operator=text(ov, "OperatorsName"),
                reason=text(ov, "OverrideReason"),
            )
            for cp in cps
            for ov in items(cp, "OverrideSequence")
        ),
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


# ---------------------------------------------------------------- brachy


def brachy_setups(ds: Dataset) -> tuple[BrachyApplicationSetup, ...]:
    """The RT Brachy Session Record's application setups and their recorded channels
    (s. 4.4): Treatment Session Application Setup Sequence (3008,0110) > Recorded Channel
    Sequence (3008,0130); a channel's isotope is the Recorded Source Sequence (3008,0100) item
    its Referenced Source Number names."""
    isotopes = {
        integer(s, "SourceNumber"): _isotope(s) for s in items(ds, "RecordedSourceSequence")
    }
    return tuple(
        BrachyApplicationSetup(
            number=integer(setup, "ReferencedBrachyApplicationSetupNumber"),
            setup_type=text(setup, "ApplicationSetupType"),
            current_fraction_number=integer(setup, "CurrentFractionNumber"),
            termination_status=text(setup, "TreatmentTerminationStatus"),
            channels=tuple(
                _channel(ch, isotopes) for ch in items(setup, "RecordedChannelSequence")
            ),
        )
        for setup in items(ds, "TreatmentSessionApplicationSetupSequence")
    )


def _channel(ch: Dataset, isotopes: dict[int | None, str | None]) -> BrachyChannel:
    source_number = integer(ch, "ReferencedSourceNumber")
    return BrachyChannel(
        number=integer(ch, "ChannelNumber"),
        source_number=source_number,
        source_isotope=isotopes.get(source_number) if source_number is not None else None,
        specified_total_time_s=number(ch, "SpecifiedChannelTotalTime"),
        delivered_total_time_s=number(ch, "DeliveredChannelTotalTime"),
        specified_pulses=integer(ch, "SpecifiedNumberOfPulses"),
        delivered_pulses=integer(ch, "DeliveredNumberOfPulses"),
    )


def _isotope(source: Dataset) -> str | None:
    return text(source, "SourceIsotopeName")


def _channel_delivered(channel: BrachyChannel) -> bool:
    # A source that dwelt in a channel for any time (or any pulse, for pulsed dose rate) means
    # dose was delivered in this session.
    return (channel.delivered_total_time_s or 0) > 0 or (channel.delivered_pulses or 0) > 0


# ---------------------------------------------------------------- summary records


def treatment_summarized(
    ds: Dataset, obj: StoredObject, source: SourceDevice, clinic_tz: str
) -> TreatmentSummarized:
    plans = referenced_uids(ds, "ReferencedRTPlanSequence")
    return TreatmentSummarized(
        patient=patient(ds),
        source=source,
        object=obj,
        plan_uid=plans[0] if plans else None,
        plan_uids=plans,
        current_status=text(ds, "CurrentTreatmentStatus"),
        first_treatment_date=parse_date(text(ds, "FirstTreatmentDate")),
        most_recent_treatment_date=parse_date(text(ds, "MostRecentTreatmentDate")),
        fraction_groups=tuple(
            FractionGroupSummary(
                number=integer(fg, "ReferencedFractionGroupNumber"),
                type=text(fg, "FractionGroupType"),
                fractions_planned=integer(fg, "NumberOfFractionsPlanned"),
                fractions_delivered=integer(fg, "NumberOfFractionsDelivered"),
                # Fraction Status Summary Sequence (3008,0240) is Type 3 (s. 4.3).
                fractions=tuple(
                    FractionStatus(
                        number=integer(fx, "ReferencedFractionNumber"),
                        treated_at=stamp(fx, "TreatmentDate", "TreatmentTime", clinic_tz, ds),
                        termination_status=text(fx, "TreatmentTerminationStatus"),
                    )
                    for fx in items(fg, "FractionStatusSummarySequence")
                ),
            )
            for fg in items(ds, "FractionGroupSummarySequence")
        ),
    )
