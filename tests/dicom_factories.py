"""Builders for SYNTHETIC DICOM test objects (pure pydicom, no numpy).

No public sample exists for RT Beams Treatment Records, RT Treatment Summary Records, Spatial
Registrations, Deformable Registrations, Elekta XVI "RPS" exports, linac CBCT series or kV RT
Images (see the sample README, ``tests/data/README.md``), so the objects built here follow
the IOD descriptions in ``../shared/docs/domain-dicom.md`` sections 4-7 instead of a vendor's
output. They are plausible, not authoritative: a test that passes on them proves the parser
handles the *standard's* layout, not that it handles every vendor's quirks. Real vendor files
live in ``tests/data`` and must be tested separately.

Conventions shared by every builder:

* All arguments are keyword-only and have defaults, except the links a test must state on
  purpose (for example ``plan_uid`` of a treatment record).
* Every builder returns a ``Dataset`` with a ``FileMetaDataset`` (Media Storage SOP Class and
  Instance UID, Transfer Syntax UID, Implementation Class UID), so that
  ``ds.save_as(path, enforce_file_format=True)`` (or :func:`write`) produces a Part 10 file.
  Pass ``transfer_syntax_uid=ImplicitVRLittleEndian`` to get the encoding many RT consoles send.
* UIDs come from :func:`pydicom.uid.generate_uid` unless given.
* Patient data is obviously fake (:data:`DEFAULT_PATIENT`); pass ``patient=`` to vary it.
* Dates are ``YYYYMMDD`` and times ``HHMMSS`` strings, exactly as they go into DA/TM elements, so
  a test can set an *empty* string where the standard allows a Type 2 value to be empty.

Elekta XVI RPS payload (:func:`elekta_rps`), a synthetic approximation of the XVI 5.x layout in
``domain-dicom.md`` 6.5 (third-party analysis: kkaan/learn-crawler,
``Docs/elekta_rps_format_documentation.md`` and ``extract_elekta_rps_matrices.py``):

* Raw Data Storage, Modality ``REG``, Manufacturer ``ELEKTA``, Series Description ``RPS``.
* Private creators ``(0021,0010) "Elekta: zip file"`` and ``(0021,0011) "Elekta: RPS data"``;
  the payload ``(0021,103A)`` (block 0x10, i.e. owned by "Elekta: zip file") has VR UN by default
  (``payload_vr="OB"`` is accepted) and holds a ZIP archive with exactly one member,
  ``<scan_uid>.INI.XVI``. The archive is padded to an even length with a ZIP comment, so the
  bytes read back are exactly the bytes written.
* The member is INI text (CRLF line ends by default, as XVI runs on Windows) laid out as::

      [IDENTIFICATION]
      PatientID=RTOPS-TEST-001
      ScanUID=<scan_uid>
      Software=NKI-XVI 5.103 (synthetic)
      IECAngleConvention=1
      IECLinearConvention=2

      [ALIGNMENT.20261123; 08:08:00]
      DateTime=20261123; 08:08:00
      RegistrationProtocol=Clipbox, Mask
      Align.clip1=<lat>, <long>, <vert>, <rotation>, <pitch>, <roll>
      Align.mask1=<lat>, <long>, <vert>, <rotation>, <pitch>, <roll>
      CouchShiftLat=0.12
      CouchShiftLong=-0.30
      CouchShiftHeight=0.05
      IsocX=0.000
      IsocY=0.000
      IsocZ=0.000
      OnlineToRefTransformUnMatched=<16 space-separated floats>
      OnlineToRefTransformCorrection=<16 space-separated floats>

  Couch shifts and alignment translations are in **cm**, rotations in degrees. The two matrices
  are 4x4, written row by row, with an identity rotation block and the translation (cm) in the
  **bottom row** (values 13-15, 1-based), because that is where the one real matrix printed in
  the third-party analysis carries it (its prose says column 4; the example disagrees). The
  correction translation defaults to ``couch_shift_cm`` (lat, long, height); the real mapping
  between matrix axes and couch axes is unknown, so a parser should take couch shifts from the
  ``CouchShift*`` keys, not from the matrix.
"""

from __future__ import annotations

import io
import math
import random
import struct
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    DeformableSpatialRegistrationStorage,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    RawDataStorage,
    RTBeamsTreatmentRecordStorage,
    RTBrachyTreatmentRecordStorage,
    RTDoseStorage,
    RTImageStorage,
    RTPlanStorage,
    RTStructureSetStorage,
    RTTreatmentSummaryRecordStorage,
    SpatialRegistrationStorage,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

__all__ = [
    "DEFAULT_PATIENT",
    "ELEKTA_RPS_PAYLOAD_TAG",
    "BrachyChannelSpec",
    "PatientSpec",
    "brachy_treatment_record",
    "cbct_series",
    "deformable_registration",
    "elekta_rps",
    "encapsulated_pdf",
    "garbage_dicom",
    "mr_image",
    "rigid_matrix",
    "rt_image",
    "rt_plan",
    "sim_ct_series",
    "spatial_registration",
    "treatment_record",
    "treatment_summary_record",
    "truncated_copy",
    "write",
    "write_series",
]

IMPLEMENTATION_VERSION_NAME = "RTOPS_TEST_1"
INSTITUTION = "RTOPS Test Clinic"
VARIAN = "Varian Medical Systems"
ELEKTA_RPS_PAYLOAD_TAG = 0x0021103A

Triple = tuple[float, float, float]


@dataclass(frozen=True)
class PatientSpec:
    """Identity of the fake patient written into every object."""

    patient_id: str = "RTOPS-TEST-001"
    issuer: str = "RTOPS-TEST"
    name: str = "Phantom^Pelvis"
    birth_date: str = "19600101"


DEFAULT_PATIENT = PatientSpec()


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _ds(value: float) -> str:
    """Format a number as a DS string of at most 16 characters.

    Rounding first keeps float noise (6.1e-17 from cos(90 deg)) out of the files, and the
    explicit string avoids pydicom's over-long-DS warning on write.
    """
    return format_number_as_ds(round(float(value), 10) + 0.0)


def _shift(date: str, time: str, seconds: float) -> tuple[str, str]:
    moment = datetime.strptime(date + time[:6], "%Y%m%d%H%M%S") + timedelta(seconds=seconds)
    return moment.strftime("%Y%m%d"), moment.strftime("%H%M%S")


def _new_dataset(
    sop_class_uid: str, sop_instance_uid: str | None, transfer_syntax_uid: str
) -> Dataset:
    uid = sop_instance_uid or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = transfer_syntax_uid
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME

    ds = Dataset()
    ds.file_meta = meta
    # Set before any text element so readers decode PN/LO with the declared repertoire.
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = uid
    return ds


def _patient_study_series(
    ds: Dataset,
    *,
    patient: PatientSpec,
    study_uid: str | None,
    series_uid: str | None,
    modality: str,
    series_number: int,
    series_description: str,
    study_date: str,
    study_time: str,
) -> None:
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = patient.issuer
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.StudyDate = study_date
    ds.StudyTime = study_time
    ds.StudyID = "RTOPS1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "RTOPS synthetic course"
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description


def _equipment(
    ds: Dataset,
    *,
    manufacturer: str,
    model: str,
    station: str,
    serial: str,
    software: str = "synthetic-1.0",
) -> None:
    ds.Manufacturer = manufacturer
    ds.InstitutionName = INSTITUTION
    ds.StationName = station
    ds.ManufacturerModelName = model
    ds.DeviceSerialNumber = serial
    ds.SoftwareVersions = software


def _ref(sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class_uid
    item.ReferencedSOPInstanceUID = sop_instance_uid
    return item


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _zero_pixels(rows: int, columns: int) -> bytes:
    return bytes(rows * columns * 2)


def _add_pixels(ds: Dataset, rows: int, columns: int, pixels: bytes) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    # Explicit OW avoids pydicom's "OB or OW" ambiguity resolution on every write.
    ds.add_new(0x7FE00010, "OW", pixels)


def rigid_matrix(
    translation_mm: Sequence[float] = (0.0, 0.0, 0.0),
    rotation_deg: Sequence[float] = (0.0, 0.0, 0.0),
) -> list[float]:
    """Return a row-major 4x4 homogeneous matrix as 16 floats.

    The rotation applies about x first, then y, then z (R = Rz @ Ry @ Rx, column vectors), and the
    translation is added after rotating, so ``p' = R p + t``: the DICOM PS3.17 O.5 model of a
    Frame of Reference Transformation Matrix.
    """
    ax, ay, az = (math.radians(a) for a in rotation_deg)
    rx = [[1.0, 0.0, 0.0], [0.0, math.cos(ax), -math.sin(ax)], [0.0, math.sin(ax), math.cos(ax)]]
    ry = [[math.cos(ay), 0.0, math.sin(ay)], [0.0, 1.0, 0.0], [-math.sin(ay), 0.0, math.cos(ay)]]
    rz = [[math.cos(az), -math.sin(az), 0.0], [math.sin(az), math.cos(az), 0.0], [0.0, 0.0, 1.0]]

    def mul(a: list[list[float]], b: list[list[float]]) -> list[list[float]]:
        return [[sum(a[i][k] * b[k][j] for k in range(3)) for j in range(3)] for i in range(3)]

    r = mul(rz, mul(ry, rx))
    t = [float(v) for v in translation_mm]
    rows = [[*r[i], t[i]] for i in range(3)] + [[0.0, 0.0, 0.0, 1.0]]
    return [value for row in rows for value in row]


def _matrix_registration(matrix: Sequence[float], type_code: Dataset | None) -> DicomSequence:
    matrix_item = Dataset()
    matrix_item.FrameOfReferenceTransformationMatrix = [_ds(v) for v in matrix]
    matrix_item.FrameOfReferenceTransformationMatrixType = "RIGID"
    reg = Dataset()
    # Type 2: present but empty when no registration method applies (the identity item).
    reg.RegistrationTypeCodeSequence = DicomSequence([type_code] if type_code else [])
    reg.MatrixSequence = DicomSequence([matrix_item])
    return DicomSequence([reg])


def _referenced_series(
    ds: Dataset, series: Iterable[tuple[str | None, str, Sequence[str]]]
) -> None:
    """Common Instance Reference module: every instance the object points at, by series."""
    items = []
    for series_uid, sop_class_uid, instance_uids in series:
        if series_uid is None or not instance_uids:
            continue
        item = Dataset()
        item.SeriesInstanceUID = series_uid
        item.ReferencedInstanceSequence = DicomSequence(
            [_ref(sop_class_uid, uid) for uid in instance_uids]
        )
        items.append(item)
    if items:
        ds.ReferencedSeriesSequence = DicomSequence(items)


# --------------------------------------------------------------------------------------------
# RT Beams Treatment Record and RT Treatment Summary Record
# --------------------------------------------------------------------------------------------


def treatment_record(
    *,
    plan_uid: str | None,
    fraction_number: int = 1,
    treatment_date: str = "20261123",
    treatment_time: str = "081500",
    machine: str = "TrueBeam1",
    beams: int = 2,
    delivered_fraction: float = 1.0,
    interruption_status: str = "OPERATOR",
    content_origin: str | None = "DEVICE",
    empty_treatment_date: bool = False,
    per_beam_fraction_numbers: list[int] | None = None,
    delivery_types: Sequence[str] | None = None,
    radiation_type: str = "PHOTON",
    meterset_mu: float = 120.0,
    override: bool = False,
    override_operator: str = "Therapist^Tina",
    override_reason: str = "Couch vertical outside tolerance after CBCT match; checked",
    couch: Triple = (-152.5, 987.0, 3.5),
    sop_instance_uid: str | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    instance_number: int = 1,
    fraction_group_number: int = 1,
    fractions_planned: int = 25,
    first_beam_number: int = 1,
    instance_creation_date: str | None = None,
    instance_creation_time: str | None = None,
    operator: str = "Therapist^Tina",
    patient: PatientSpec = DEFAULT_PATIENT,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
) -> Dataset:
    """RT Beams Treatment Record (1.2.840.10008.5.1.4.1.1.481.4), one session on one machine.

    Beam ``n`` (1-based) references plan beam ``n + first_beam_number - 1`` (so a record that
    resumes an interrupted fraction can start at the beam that was cut), starts 150 s after
    beam ``n-1`` and carries
    two control points 60 s apart. All beams deliver ``meterset_mu`` in full except the last,
    which delivers ``meterset_mu * delivered_fraction``; when that is below 1 the last beam ends
    with ``interruption_status`` (OPERATOR by default) instead of NORMAL.

    ``plan_uid=None`` writes an empty Referenced RT Plan Sequence (Type 2, seen in some exports).
    ``content_origin=None`` omits Treatment Record Content Origin (Type 3).
    ``empty_treatment_date`` keeps Treatment Date/Time present but empty; the control points
    still carry ``treatment_date`` as Treatment Control Point Date, which is the fallback the
    parser must use. ``couch`` is the recorded (vertical, longitudinal, lateral) table-top
    position in mm, written on every control point. ``override`` puts an Override Sequence item
    on the first control point of the first beam and marks that beam VERIFIED_OVR.
    """
    if beams < 1:
        raise ValueError("beams must be >= 1")
    if not 0.0 <= delivered_fraction <= 1.0:
        raise ValueError("delivered_fraction must be within [0, 1]")
    if per_beam_fraction_numbers is not None and len(per_beam_fraction_numbers) != beams:
        raise ValueError("per_beam_fraction_numbers needs one entry per beam")
    if delivery_types is not None and len(delivery_types) != beams:
        raise ValueError("delivery_types needs one entry per beam")

    ds = _new_dataset(RTBeamsTreatmentRecordStorage, sop_instance_uid, transfer_syntax_uid)
    _patient_study_series(
        ds,
        patient=patient,
        study_uid=study_uid,
        series_uid=series_uid,
        modality="RTRECORD",
        series_number=100,
        series_description="Treatment Record",
        study_date=treatment_date,
        study_time=treatment_time,
    )
    serial = f"SN-{machine}"
    _equipment(ds, manufacturer=VARIAN, model="TrueBeam", station=machine, serial=serial)
    ds.OperatorsName = operator

    # RT General Treatment Record
    ds.InstanceNumber = instance_number
    ds.TreatmentDate = "" if empty_treatment_date else treatment_date
    ds.TreatmentTime = "" if empty_treatment_date else treatment_time
    if content_origin is not None:
        ds.TreatmentRecordContentOrigin = content_origin
    ds.ReferencedRTPlanSequence = DicomSequence([_ref(RTPlanStorage, plan_uid)] if plan_uid else [])

    # RT Treatment Machine Record
    machine_item = Dataset()
    machine_item.TreatmentMachineName = machine
    machine_item.Manufacturer = VARIAN
    machine_item.InstitutionName = INSTITUTION
    machine_item.ManufacturerModelName = "TrueBeam"
    machine_item.DeviceSerialNumber = serial
    ds.TreatmentMachineSequence = DicomSequence([machine_item])

    # RT Beams Session Record
    ds.ReferencedFractionGroupNumber = fraction_group_number
    ds.NumberOfFractionsPlanned = fractions_planned
    ds.PrimaryDosimeterUnit = "MU"

    vert, long_, lat = couch
    items = []
    last_moment = (treatment_date, treatment_time)
    for index in range(beams):
        number = index + first_beam_number
        is_last = index == beams - 1
        fraction = delivered_fraction if is_last else 1.0
        delivered = meterset_mu * fraction
        start_offset = index * 150.0

        control_points = []
        for cp_index, (cp_offset, cp_meterset) in enumerate(((0.0, 0.0), (60.0, delivered))):
            cp_date, cp_time = _shift(treatment_date, treatment_time, start_offset + cp_offset)
            last_moment = (cp_date, cp_time)
            cp = Dataset()
            cp.ReferencedControlPointIndex = cp_index
            cp.TreatmentControlPointDate = cp_date
            cp.TreatmentControlPointTime = cp_time
            cp.SpecifiedMeterset = _ds(0.0 if cp_index == 0 else meterset_mu)
            cp.DeliveredMeterset = _ds(cp_meterset)
            cp.DoseRateSet = "600"
            cp.DoseRateDelivered = "600"
            cp.NominalBeamEnergy = "6"
            cp.GantryAngle = _ds((180.0 * index) % 360.0)
            cp.PatientSupportAngle = "0"
            cp.TableTopVerticalPosition = _ds(vert)
            cp.TableTopLongitudinalPosition = _ds(long_)
            cp.TableTopLateralPosition = _ds(lat)
            if override and index == 0 and cp_index == 0:
                ovr = Dataset()
                ovr.OverrideParameterPointer = 0x300A0128  # Table Top Vertical Position
                ovr.OperatorsName = override_operator
                ovr.OverrideReason = override_reason
                cp.OverrideSequence = DicomSequence([ovr])
            control_points.append(cp)

        beam = Dataset()
        beam.ReferencedBeamNumber = number
        beam.BeamName = f"Field {number}"
        beam.BeamType = "STATIC"
        beam.RadiationType = radiation_type
        beam.TreatmentDeliveryType = delivery_types[index] if delivery_types else "TREATMENT"
        beam.CurrentFractionNumber = (
            per_beam_fraction_numbers[index] if per_beam_fraction_numbers else fraction_number
        )
        beam.TreatmentTerminationStatus = (
            interruption_status if is_last and fraction < 1.0 else "NORMAL"
        )
        beam.TreatmentVerificationStatus = "VERIFIED_OVR" if override and index == 0 else "VERIFIED"
        beam.SpecifiedPrimaryMeterset = _ds(meterset_mu)
        beam.DeliveredPrimaryMeterset = _ds(delivered)
        beam.NumberOfControlPoints = len(control_points)
        beam.ControlPointDeliverySequence = DicomSequence(control_points)
        items.append(beam)
    ds.TreatmentSessionBeamSequence = DicomSequence(items)

    created_date, created_time = _shift(*last_moment, 60.0)
    ds.InstanceCreationDate = instance_creation_date or created_date
    ds.InstanceCreationTime = instance_creation_time or created_time
    ds.SeriesDate = ds.InstanceCreationDate
    ds.SeriesTime = treatment_time or ds.InstanceCreationTime
    return ds


def treatment_summary_record(
    *,
    plan_uid: str | None,
    status: str = "COMPLETED",
    fractions_planned: int = 25,
    fractions_delivered: int = 25,
    first_date: str = "20261026",
    last_date: str = "20261128",
    last_time: str = "081500",
    fraction_group_number: int = 1,
    fraction_dates: Sequence[str] | None = None,
    more_plan_uids: Sequence[str] = (),
    sop_instance_uid: str | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    instance_number: int = 1,
    patient: PatientSpec = DEFAULT_PATIENT,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
) -> Dataset:
    """RT Treatment Summary Record (1.2.840.10008.5.1.4.1.1.481.7) for one fraction group.

    Treatment Date/Time is the last fraction's (C.8.8.17 note). ``fraction_dates`` adds a
    Fraction Status Summary Sequence with one NORMAL item per date, numbered from 1.
    ``more_plan_uids`` are further Referenced RT Plan Sequence items after ``plan_uid``.
    """
    ds = _new_dataset(RTTreatmentSummaryRecordStorage, sop_instance_uid, transfer_syntax_uid)
    _patient_study_series(
        ds,
        patient=patient,
        study_uid=study_uid,
        series_uid=series_uid,
        modality="RTRECORD",
        series_number=101,
        series_description="Treatment Summary",
        study_date=first_date,
        study_time="080000",
    )
    _equipment(ds, manufacturer=VARIAN, model="ARIA", station="ARIA", serial="SN-ARIA")
    ds.InstanceNumber = instance_number
    ds.InstanceCreationDate = last_date
    ds.InstanceCreationTime = "200000"
    ds.TreatmentDate = last_date
    ds.TreatmentTime = last_time
    ds.ReferencedRTPlanSequence = DicomSequence(
        [_ref(RTPlanStorage, uid) for uid in ([plan_uid] if plan_uid else []) + [*more_plan_uids]]
    )

    ds.CurrentTreatmentStatus = status
    ds.FirstTreatmentDate = first_date
    ds.MostRecentTreatmentDate = last_date
    group = Dataset()
    group.ReferencedFractionGroupNumber = fraction_group_number
    group.FractionGroupType = "EXTERNAL_BEAM"
    group.NumberOfFractionsPlanned = fractions_planned
    group.NumberOfFractionsDelivered = fractions_delivered
    if fraction_dates is not None:
        statuses = []
        for number, date in enumerate(fraction_dates, start=1):
            item = Dataset()
            item.ReferencedFractionNumber = number
            item.TreatmentDate = date
            item.TreatmentTime = last_time
            item.TreatmentTerminationStatus = "NORMAL"
            statuses.append(item)
        group.FractionStatusSummarySequence = DicomSequence(statuses)
    ds.FractionGroupSummarySequence = DicomSequence([group])
    return ds


@dataclass(frozen=True)
class BrachyChannelSpec:
    """One recorded channel of an afterloader session: times in seconds."""

    number: int
    specified_time_s: float = 120.0
    delivered_time_s: float = 120.0
    source_number: int = 1


def brachy_treatment_record(
    *,
    plan_uid: str | None,
    channels: Sequence[BrachyChannelSpec] = (BrachyChannelSpec(1), BrachyChannelSpec(2)),
    application_setup_type: str = "INTRACAVITARY",
    isotope: str = "Ir-192",
    fraction_number: int = 1,
    treatment_date: str = "20261123",
    treatment_time: str = "101500",
    machine: str = "Flexitron1",
    sop_instance_uid: str | None = None,
    patient: PatientSpec = DEFAULT_PATIENT,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
) -> Dataset:
    """RT Brachy Treatment Record (1.2.840.10008.5.1.4.1.1.481.6): one HDR session with one
    application setup (domain-dicom.md 4.4). The Recorded Source Sequence holds source 1
    (``isotope``); each channel references its ``source_number`` and records specified and
    delivered Channel Total Time. A channel with ``delivered_time_s=0`` was not treated.
    """
    ds = _new_dataset(RTBrachyTreatmentRecordStorage, sop_instance_uid, transfer_syntax_uid)
    _patient_study_series(
        ds,
        patient=patient,
        study_uid=None,
        series_uid=None,
        modality="RTRECORD",
        series_number=102,
        series_description="Brachy Treatment Record",
        study_date=treatment_date,
        study_time=treatment_time,
    )
    _equipment(ds, manufacturer="Elekta", model="Flexitron", station=machine, serial="SN-HDR1")
    ds.InstanceNumber = 1
    ds.InstanceCreationDate = treatment_date
    ds.InstanceCreationTime = treatment_time
    ds.TreatmentDate = treatment_date
    ds.TreatmentTime = treatment_time
    ds.ReferencedRTPlanSequence = DicomSequence([_ref(RTPlanStorage, plan_uid)] if plan_uid else [])
    machine_item = Dataset()
    machine_item.TreatmentMachineName = machine
    machine_item.Manufacturer = "Elekta"
    machine_item.DeviceSerialNumber = "SN-HDR1"
    ds.TreatmentMachineSequence = DicomSequence([machine_item])

    source = Dataset()
    source.SourceNumber = 1
    source.SourceType = "POINT"
    source.SourceManufacturer = "Elekta"
    source.SourceIsotopeName = isotope
    source.SourceIsotopeHalfLife = "73.8"
    source.ReferenceAirKermaRate = "40800"
    source.SourceStrengthReferenceDate = treatment_date
    source.SourceStrengthReferenceTime = "000000"
    ds.RecordedSourceSequence = DicomSequence([source])

    ds.ReferencedFractionGroupNumber = 1
    ds.NumberOfFractionsPlanned = 4
    setup = Dataset()
    setup.ApplicationSetupType = application_setup_type
    setup.ReferencedBrachyApplicationSetupNumber = 1
    setup.CurrentFractionNumber = fraction_number
    delivered_all = all(c.delivered_time_s >= c.specified_time_s for c in channels)
    setup.TreatmentTerminationStatus = "NORMAL" if delivered_all else "OPERATOR"
    setup.TreatmentVerificationStatus = "VERIFIED"
    recorded = []
    for spec in channels:
        channel = Dataset()
        channel.ChannelNumber = spec.number
        channel.SpecifiedChannelTotalTime = _ds(spec.specified_time_s)
        channel.DeliveredChannelTotalTime = _ds(spec.delivered_time_s)
        channel.ReferencedSourceNumber = spec.source_number
        channel.NumberOfControlPoints = 2
        recorded.append(channel)
    setup.RecordedChannelSequence = DicomSequence(recorded)
    ds.TreatmentSessionApplicationSetupSequence = DicomSequence([setup])
    return ds


def encapsulated_pdf(
    *,
    document: bytes = b"%PDF-1.4\n% rtops synthetic plan report\n%%EOF\n",
    title: str = "Plan report PROST",
    plan_uid: str | None = None,
    plan_reference: Literal["rt_plan_sequence", "referenced_instance"] = "rt_plan_sequence",
    content_date: str = "20261020",
    content_time: str = "170000",
    sop_instance_uid: str | None = None,
    study_uid: str | None = None,
    patient: PatientSpec = DEFAULT_PATIENT,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
) -> Dataset:
    """Encapsulated PDF (1.2.840.10008.5.1.4.1.1.104.1), as a TPS sends a plan report.

    The PDF bytes go into Encapsulated Document (OB, padded to even length) with their true
    length in Encapsulated Document Length. ``plan_uid`` names the plan either in a Referenced
    RT Plan Sequence or as an RT Plan item of the Referenced Instance Sequence.
    """
    ds = _new_dataset(EncapsulatedPDFStorage, sop_instance_uid, transfer_syntax_uid)
    _patient_study_series(
        ds,
        patient=patient,
        study_uid=study_uid,
        series_uid=None,
        modality="DOC",
        series_number=900,
        series_description="Plan reports",
        study_date=content_date,
        study_time=content_time,
    )
    ds.ConversionType = "WSD"
    ds.Manufacturer = VARIAN
    ds.InstanceNumber = 1
    ds.ContentDate = content_date
    ds.ContentTime = content_time
    ds.AcquisitionDateTime = content_date + content_time
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = title
    ds.ConceptNameCodeSequence = DicomSequence([])
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    if plan_uid is not None:
        if plan_reference == "rt_plan_sequence":
            ds.ReferencedRTPlanSequence = DicomSequence([_ref(RTPlanStorage, plan_uid)])
        else:
            ds.ReferencedInstanceSequence = DicomSequence(
                [_ref(RTStructureSetStorage, generate_uid()), _ref(RTPlanStorage, plan_uid)]
            )
    ds.EncapsulatedDocumentLength = len(document)
    ds.EncapsulatedDocument = document + (b"\0" if len(document) % 2 else b"")
    return ds


# --------------------------------------------------------------------------------------------
# CT series (linac CBCT and simulation CT)
# --------------------------------------------------------------------------------------------


def _ct_series(
    *,
    n_slices: int,
    rows: int,
    columns: int,
    pixel_spacing_mm: float,
    slice_thickness_mm: float,
    manufacturer: str,
    model: str,
    station: str,
    serial: str,
    series_description: str,
    series_number: int,
    kvp: str,
    extra: dict[str, str],
    series_uid: str | None,
    study_uid: str | None,
    frame_of_reference_uid: str | None,
    acquisition_date: str,
    acquisition_time: str,
    patient: PatientSpec,
    transfer_syntax_uid: str,
) -> list[Dataset]:
    if n_slices < 1:
        raise ValueError("n_slices must be >= 1")
    # One shared immutable buffer: 200 x 512 x 512 slices would otherwise cost 100 MB and
    # most of the build time in allocation.
    pixels = _zero_pixels(rows, columns)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_of_reference_uid = frame_of_reference_uid or generate_uid()
    x0 = _ds(-(columns - 1) * pixel_spacing_mm / 2.0)
    y0 = _ds(-(rows - 1) * pixel_spacing_mm / 2.0)
    z_start = -(n_slices - 1) * slice_thickness_mm / 2.0
    spacing = [_ds(pixel_spacing_mm), _ds(pixel_spacing_mm)]
    thickness = _ds(slice_thickness_mm)
    content_date, content_time = _shift(acquisition_date, acquisition_time, 45.0)

    slices = []
    for index in range(n_slices):
        ds = _new_dataset(CTImageStorage, None, transfer_syntax_uid)
        _patient_study_series(
            ds,
            patient=patient,
            study_uid=study_uid,
            series_uid=series_uid,
            modality="CT",
            series_number=series_number,
            series_description=series_description,
            study_date=acquisition_date,
            study_time=acquisition_time,
        )
        _equipment(ds, manufacturer=manufacturer, model=model, station=station, serial=serial)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SeriesDate = acquisition_date
        ds.SeriesTime = acquisition_time
        ds.AcquisitionDate = acquisition_date
        ds.AcquisitionTime = acquisition_time
        ds.ContentDate = content_date
        ds.ContentTime = content_time
        ds.InstanceCreationDate = content_date
        ds.InstanceCreationTime = content_time
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.PatientPosition = "HFS"
        ds.KVP = kvp
        ds.SliceThickness = thickness
        ds.InstanceNumber = index + 1
        z = _ds(z_start + index * slice_thickness_mm)
        ds.ImagePositionPatient = [x0, y0, z]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.SliceLocation = z
        ds.PixelSpacing = spacing
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        for keyword, value in extra.items():
            setattr(ds, keyword, value)
        _add_pixels(ds, rows, columns, pixels)
        slices.append(ds)
    return slices


def cbct_series(
    *,
    n_slices: int = 3,
    rows: int = 64,
    columns: int = 64,
    machine_station: str = "TrueBeam1",
    series_uid: str | None = None,
    study_uid: str | None = None,
    acquisition_date: str = "20261123",
    acquisition_time: str = "080500",
    frame_of_reference_uid: str | None = None,
    series_description: str = "CBCT",
    pixel_spacing_mm: float = 0.908,
    slice_thickness_mm: float = 2.0,
    patient: PatientSpec = DEFAULT_PATIENT,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
) -> list[Dataset]:
    """A linac kV CBCT exported as CT Image Storage (1.2.840.10008.5.1.4.1.1.2), one per slice.

    Header values follow the classification heuristics of domain-dicom.md 6.1 (linac vendor,
    station = machine, "CBCT" description, 1500/1000 mm source distances); real Varian values are
    unconfirmed. Pixels are all zero and shared between slices, so 200 slices of 512x512 build
    in well under a second.
    """
    return _ct_series(
        n_slices=n_slices,
        rows=rows,
        columns=columns,
        pixel_spacing_mm=pixel_spacing_mm,
        slice_thickness_mm=slice_thickness_mm,
        manufacturer=VARIAN,
        model="On-Board Imager",
        station=machine_station,
        serial=f"SN-{machine_station}",
        series_description=series_description,
        series_number=1001,
        kvp="125",
        extra={
            "DistanceSourceToDetector": "1500",
            "DistanceSourceToPatient": "1000",
            "ReconstructionDiameter": _ds(columns * pixel_spacing_mm),
        },
        series_uid=series_uid,
        study_uid=study_uid,
        frame_of_reference_uid=frame_of_reference_uid,
        acquisition_date=acquisition_date,
        acquisition_time=acquisition_time,
        patient=patient,
        transfer_syntax_uid=transfer_syntax_uid,
    )


def sim_ct_series(
    *,
    n_slices: int = 3,
    rows: int = 64,
    columns: int = 64,
    station: str = "CTSIM1",
    series_uid: str | None = None,
    study_uid: str | None = None,
    acquisition_date: str = "20261102",
    acquisition_time: str = "101500",
    frame_of_reference_uid: str | None = None,
    series_description: str = "Sim CT Pelvis",
    pixel_spacing_mm: float = 1.172,
    slice_thickness_mm: float = 3.0,
    patient: PatientSpec = DEFAULT_PATIENT,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
) -> list[Dataset]:
    """A CT-simulator planning scan (CT Image Storage), same shape as :func:`cbct_series`."""
    return _ct_series(
        n_slices=n_slices,
        rows=rows,
        columns=columns,
        pixel_spacing_mm=pixel_spacing_mm,
        slice_thickness_mm=slice_thickness_mm,
        manufacturer="SIEMENS",
        model="SOMATOM Confidence",
        station=station,
        serial=f"SN-{station}",
        series_description=series_description,
        series_number=2,
        kvp="120",
        extra={"ProtocolName": "RT Pelvis", "ReconstructionDiameter": "600"},
        series_uid=series_uid,
        study_uid=study_uid,
        frame_of_reference_uid=frame_of_reference_uid,
        acquisition_date=acquisition_date,
        acquisition_time=acquisition_time,
        patient=patient,
        transfer_syntax_uid=transfer_syntax_uid,
    )


# --------------------------------------------------------------------------------------------
# Registrations
# --------------------------------------------------------------------------------------------


def spatial_registration(
    *,
    fixed_for_uid: str,
    moving_for_uid: str,
    moving_series_uid: str | None = None,
    moving_instance_uids: Sequence[str] = (),
    fixed_series_uid: str | None = None,
    fixed_instance_uids: Sequence[str] = (),
    translation_mm: Triple = (1.5, -2.0, 0.5),
    rotation_deg: Triple = (0.0, 0.0, 0.0),
    content_date: str = "20261123",
    content_time: str = "080900",
    creator: str = "Therapist^Tina",
    label: str = "CBCT_MATCH",
    description: str = "CBCT to planning CT match",
    comment: str | None = None,
    manufacturer: str = VARIAN,
    station: str = "TrueBeam1",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    instance_number: int = 1,
    patient: PatientSpec = DEFAULT_PATIENT,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
) -> Dataset:
    """Spatial Registration (1.2.840.10008.5.1.4.1.1.66.1), Modality REG.

    Registration Sequence item 1 is the fixed (planning CT) FoR with an identity matrix; item 2
    is the moving (CBCT) FoR with :func:`rigid_matrix` of ``translation_mm``/``rotation_deg``,
    mapping moving coordinates into the fixed FoR, which is also the object's own FoR. Images
    are referenced only where UIDs are given, both per item and in the Common Instance
    Reference module. Registration type codes are DCM 125024/125021 (recalled, unconfirmed).
    """
    ds = _new_dataset(SpatialRegistrationStorage, sop_instance_uid, transfer_syntax_uid)
    _patient_study_series(
        ds,
        patient=patient,
        study_uid=study_uid,
        series_uid=series_uid,
        modality="REG",
        series_number=500,
        series_description="Registration",
        study_date=content_date,
        study_time=content_time,
    )
    _equipment(
        ds,
        manufacturer=manufacturer,
        model="TrueBeam Imaging",
        station=station,
        serial=f"SN-{station}",
    )
    ds.SeriesDate = content_date
    ds.SeriesTime = content_time
    ds.FrameOfReferenceUID = fixed_for_uid
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = instance_number
    ds.ContentDate = content_date
    ds.ContentTime = content_time
    ds.InstanceCreationDate = content_date
    ds.InstanceCreationTime = content_time
    ds.ContentLabel = label
    ds.ContentDescription = description
    ds.ContentCreatorName = creator

    fixed = Dataset()
    fixed.FrameOfReferenceUID = fixed_for_uid
    if fixed_instance_uids:
        fixed.ReferencedImageSequence = DicomSequence(
            [_ref(CTImageStorage, uid) for uid in fixed_instance_uids]
        )
    fixed.MatrixRegistrationSequence = _matrix_registration(
        rigid_matrix(),
        _code("125021", "DCM", "Frame of Reference Identity"),
    )

    moving = Dataset()
    moving.FrameOfReferenceUID = moving_for_uid
    if moving_instance_uids:
        moving.ReferencedImageSequence = DicomSequence(
            [_ref(CTImageStorage, uid) for uid in moving_instance_uids]
        )
    moving.MatrixRegistrationSequence = _matrix_registration(
        rigid_matrix(translation_mm, rotation_deg),
        _code("125024", "DCM", "Image Content-based Alignment"),
    )
    if comment is not None:
        moving.MatrixRegistrationSequence[0].FrameOfReferenceTransformationComment = comment
    ds.RegistrationSequence = DicomSequence([fixed, moving])

    _referenced_series(
        ds,
        [
            (fixed_series_uid, CTImageStorage, fixed_instance_uids),
            (moving_series_uid, CTImageStorage, moving_instance_uids),
        ],
    )
    return ds


def deformable_registration(
    *,
    fixed_for_uid: str | None = None,
    moving_for_uid: str | None = None,
    moving_series_uid: str | None = None,
    moving_instance_uids: Sequence[str] = (),
    pre_translation_mm: Triple = (0.0, 0.0, 0.0),
    grid_dimensions: tuple[int, int, int] = (2, 2, 2),
    grid_resolution_mm: Triple = (10.0, 10.0, 10.0),
    content_date: str = "20261201",
    content_time: str = "140000",
    creator: str = "Dosimetrist^Dora",
    label: str = "DIR_ADAPT",
    description: str = "Deformable CBCT to planning CT for adaptive review",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    instance_number: int = 1,
    patient: PatientSpec = DEFAULT_PATIENT,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
) -> Dataset:
    """Deformable Spatial Registration (1.2.840.10008.5.1.4.1.1.66.3), minimal but plausible.

    One Deformable Registration Sequence item with the moving FoR as Source Frame of Reference,
    a rigid Pre Deformation matrix, an identity Post Deformation matrix and an all-zero vector
    grid of ``grid_dimensions``.
    """
    fixed_for_uid = fixed_for_uid or generate_uid()
    moving_for_uid = moving_for_uid or generate_uid()
    ds = _new_dataset(DeformableSpatialRegistrationStorage, sop_instance_uid, transfer_syntax_uid)
    _patient_study_series(
        ds,
        patient=patient,
        study_uid=study_uid,
        series_uid=series_uid,
        modality="REG",
        series_number=501,
        series_description="Deformable Registration",
        study_date=content_date,
        study_time=content_time,
    )
    # Enhanced General Equipment makes all four of these Type 1.
    _equipment(
        ds,
        manufacturer=VARIAN,
        model="Eclipse",
        station="ECLIPSE",
        serial="SN-TPS1",
        software="synthetic-1.0",
    )
    ds.SeriesDate = content_date
    ds.SeriesTime = content_time
    ds.FrameOfReferenceUID = fixed_for_uid
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = instance_number
    ds.ContentDate = content_date
    ds.ContentTime = content_time
    ds.InstanceCreationDate = content_date
    ds.InstanceCreationTime = content_time
    ds.ContentLabel = label
    ds.ContentDescription = description
    ds.ContentCreatorName = creator

    item = Dataset()
    item.SourceFrameOfReferenceUID = moving_for_uid
    if moving_instance_uids:
        item.ReferencedImageSequence = DicomSequence(
            [_ref(CTImageStorage, uid) for uid in moving_instance_uids]
        )
    item.RegistrationTypeCodeSequence = DicomSequence(
        [_code("125024", "DCM", "Image Content-based Alignment")]
    )
    pre = Dataset()
    pre.FrameOfReferenceTransformationMatrix = [_ds(v) for v in rigid_matrix(pre_translation_mm)]
    pre.FrameOfReferenceTransformationMatrixType = "RIGID"
    item.PreDeformationMatrixRegistrationSequence = DicomSequence([pre])
    post = Dataset()
    post.FrameOfReferenceTransformationMatrix = [_ds(v) for v in rigid_matrix()]
    post.FrameOfReferenceTransformationMatrixType = "RIGID"
    item.PostDeformationMatrixRegistrationSequence = DicomSequence([post])

    grid = Dataset()
    grid.ImagePositionPatient = ["-10", "-10", "-10"]
    grid.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    grid.GridDimensions = list(grid_dimensions)
    grid.GridResolution = [float(v) for v in grid_resolution_mm]
    n_vectors = grid_dimensions[0] * grid_dimensions[1] * grid_dimensions[2]
    grid.VectorGridData = struct.pack(f"<{3 * n_vectors}f", *([0.0] * (3 * n_vectors)))
    item.DeformableRegistrationGridSequence = DicomSequence([grid])
    ds.DeformableRegistrationSequence = DicomSequence([item])

    _referenced_series(ds, [(moving_series_uid, CTImageStorage, moving_instance_uids)])
    return ds


def _xvi_matrix(translation_cm: Sequence[float]) -> str:
    tx, ty, tz = (float(v) for v in translation_cm)
    values = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, tx, ty, tz, 1.0]
    return " ".join(f"{v:.4f}" for v in values)


def _rps_ini(
    *,
    patient_id: str,
    scan_uid: str,
    alignment_date: str,
    alignment_time: str,
    couch_shift_cm: Triple,
    correction_cm: Sequence[float],
    clipbox: Sequence[float],
    mask: Sequence[float],
    registration_protocol: str,
    newline: str,
) -> str:
    clock = f"{alignment_time[0:2]}:{alignment_time[2:4]}:{alignment_time[4:6]}"
    lat, long_, height = couch_shift_cm
    lines = [
        "[IDENTIFICATION]",
        f"PatientID={patient_id}",
        f"ScanUID={scan_uid}",
        "Software=NKI-XVI 5.103 (synthetic)",
        "IECAngleConvention=1",
        "IECLinearConvention=2",
        "",
        f"[ALIGNMENT.{alignment_date}; {clock}]",
        f"DateTime={alignment_date}; {clock}",
        f"RegistrationProtocol={registration_protocol}",
        "Align.clip1=" + ", ".join(f"{v:.2f}" for v in clipbox),
        "Align.mask1=" + ", ".join(f"{v:.2f}" for v in mask),
        f"CouchShiftLat={lat:.2f}",
        f"CouchShiftLong={long_:.2f}",
        f"CouchShiftHeight={height:.2f}",
        "IsocX=0.000",
        "IsocY=0.000",
        "IsocZ=0.000",
        f"OnlineToRefTransformUnMatched={_xvi_matrix((0.0, 0.0, 0.0))}",
        f"OnlineToRefTransformCorrection={_xvi_matrix(correction_cm)}",
        "",
    ]
    return newline.join(lines)


def elekta_rps(
    *,
    couch_shift_cm: Triple = (0.12, -0.3, 0.05),
    correction_translation_cm: Triple | None = None,
    clipbox: Sequence[float] = (0.10, -0.28, 0.06, 0.3, 359.8, 0.1),
    mask: Sequence[float] = (0.12, -0.30, 0.05, 0.2, 359.9, 0.1),
    registration_protocol: str = "Clipbox, Mask",
    alignment_date: str = "20261123",
    alignment_time: str = "080800",
    scan_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    crlf: bool = True,
    payload_vr: Literal["UN", "OB"] = "UN",
    station: str = "XVI1",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    instance_number: int = 1,
    patient: PatientSpec = DEFAULT_PATIENT,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
) -> Dataset:
    """Elekta XVI "RPS" registration export: Raw Data Storage (1.2.840.10008.5.1.4.1.1.66).

    ``couch_shift_cm`` is (lateral, longitudinal, height) in cm. The private payload layout is
    described in the module docstring (a synthetic approximation of XVI 5.x).
    """
    if payload_vr not in ("UN", "OB"):
        raise ValueError("payload_vr must be 'UN' or 'OB'")
    scan_uid = scan_uid or generate_uid()
    ini = _rps_ini(
        patient_id=patient.patient_id,
        scan_uid=scan_uid,
        alignment_date=alignment_date,
        alignment_time=alignment_time,
        couch_shift_cm=couch_shift_cm,
        correction_cm=correction_translation_cm or couch_shift_cm,
        clipbox=clipbox,
        mask=mask,
        registration_protocol=registration_protocol,
        newline="\r\n" if crlf else "\n",
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{scan_uid}.INI.XVI", ini.encode("ascii"))
    payload = buffer.getvalue()
    if len(payload) % 2:
        # DICOM pads odd values with a NUL; a 1-byte archive comment keeps the ZIP exact instead.
        buffer = io.BytesIO(payload)
        with zipfile.ZipFile(buffer, "a") as archive:
            archive.comment = b" "
        payload = buffer.getvalue()

    ds = _new_dataset(RawDataStorage, sop_instance_uid, transfer_syntax_uid)
    _patient_study_series(
        ds,
        patient=patient,
        study_uid=study_uid,
        series_uid=series_uid,
        modality="REG",
        series_number=600,
        series_description="RPS",
        study_date=alignment_date,
        study_time=alignment_time,
    )
    _equipment(
        ds,
        manufacturer="ELEKTA",
        model="XVI",
        station=station,
        serial=f"SN-{station}",
        software="NKI-XVI 5.103",
    )
    ds.SeriesDate = alignment_date
    ds.SeriesTime = alignment_time
    ds.InstanceNumber = instance_number
    ds.ContentDate = alignment_date
    ds.ContentTime = alignment_time
    ds.InstanceCreationDate = alignment_date
    ds.InstanceCreationTime = alignment_time
    if frame_of_reference_uid is not None:
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
    zip_block = ds.private_block(0x0021, "Elekta: zip file", create=True)
    ds.private_block(0x0021, "Elekta: RPS data", create=True)
    zip_block.add_new(0x3A, payload_vr, payload)
    return ds


# --------------------------------------------------------------------------------------------
# RT Image, RT Plan, MR
# --------------------------------------------------------------------------------------------

_RT_IMAGE_KINDS: dict[str, tuple[list[str], str, str, str]] = {
    # kind: (Image Type, default label, Conversion Type, Reported Values Origin)
    "kv": (["ORIGINAL", "PRIMARY", "RADIOGRAPH"], "kV AP", "DI", "ACTUAL"),
    "mv_portal": (["ORIGINAL", "PRIMARY", "PORTAL"], "MV PORTAL", "DI", "ACTUAL"),
    "drr": (["DERIVED", "SECONDARY", "DRR"], "DRR AP", "WSD", "PLAN"),
}


def rt_image(
    *,
    kind: Literal["kv", "mv_portal", "drr"] = "kv",
    approved: bool = False,
    reviewer: str = "Oncologist^Olga",
    review_date: str = "20261123",
    review_time: str = "120000",
    plan_uid: str | None = None,
    fraction_number: int | None = None,
    beam_number: int | None = None,
    machine: str = "TrueBeam1",
    series_uid: str | None = None,
    study_uid: str | None = None,
    sop_instance_uid: str | None = None,
    label: str | None = None,
    acquisition_date: str = "20261123",
    acquisition_time: str = "080300",
    gantry_angle: float = 0.0,
    rows: int = 32,
    columns: int = 32,
    instance_number: int = 1,
    patient: PatientSpec = DEFAULT_PATIENT,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
) -> Dataset:
    """RT Image (1.2.840.10008.5.1.4.1.1.481.1): kV setup radiograph, MV portal image or DRR.

    Image Type value 3 is RADIOGRAPH / PORTAL / DRR for ``kind`` kv / mv_portal / drr. The plan,
    fraction and beam links are written only when given. ``approved`` adds the Approval module
    (APPROVED with review date, time and reviewer); otherwise the module is absent.
    """
    if kind not in _RT_IMAGE_KINDS:
        raise ValueError(f"kind must be one of {sorted(_RT_IMAGE_KINDS)}")
    image_type, default_label, conversion, origin = _RT_IMAGE_KINDS[kind]
    is_drr = kind == "drr"

    ds = _new_dataset(RTImageStorage, sop_instance_uid, transfer_syntax_uid)
    _patient_study_series(
        ds,
        patient=patient,
        study_uid=study_uid,
        series_uid=series_uid,
        modality="RTIMAGE",
        series_number=700 if is_drr else 300,
        series_description="DRR" if is_drr else "Setup images",
        study_date=acquisition_date,
        study_time=acquisition_time,
    )
    if is_drr:
        _equipment(ds, manufacturer=VARIAN, model="Eclipse", station="ECLIPSE", serial="SN-TPS1")
    else:
        _equipment(
            ds,
            manufacturer=VARIAN,
            model="TrueBeam Imaging",
            station=machine,
            serial=f"SN-{machine}",
        )
        ds.AcquisitionDate = acquisition_date
        ds.AcquisitionTime = acquisition_time
    ds.ImageType = list(image_type)
    ds.SeriesDate = acquisition_date
    ds.SeriesTime = acquisition_time
    ds.ContentDate = acquisition_date
    ds.ContentTime = acquisition_time
    ds.InstanceCreationDate = acquisition_date
    ds.InstanceCreationTime = acquisition_time
    ds.InstanceNumber = instance_number
    ds.ConversionType = conversion
    ds.PatientOrientation = ""
    ds.PatientPosition = "HFS"

    ds.RTImageLabel = label or default_label
    ds.ReportedValuesOrigin = origin
    ds.RTImagePlane = "NORMAL"
    ds.RadiationMachineName = machine
    ds.PrimaryDosimeterUnit = "MU"
    ds.RadiationMachineSAD = "1000"
    ds.RTImageSID = "1500"
    ds.ImagePlanePixelSpacing = ["0.392", "0.392"]
    ds.RTImagePosition = [_ds(-(columns - 1) * 0.196), _ds((rows - 1) * 0.196)]
    ds.GantryAngle = _ds(gantry_angle)
    ds.IsocenterPosition = ["0", "0", "0"]
    if not is_drr:
        exposure = Dataset()
        exposure.ReferencedFrameNumber = 1
        if kind == "kv":
            exposure.KVP = "100"
            exposure.XRayTubeCurrent = 80
            exposure.ExposureTime = 25
        else:
            exposure.KVP = "6000"
            exposure.MetersetExposure = "2"
        ds.ExposureSequence = DicomSequence([exposure])
    if plan_uid is not None:
        ds.ReferencedRTPlanSequence = DicomSequence([_ref(RTPlanStorage, plan_uid)])
        ds.ReferencedFractionGroupNumber = 1
    if beam_number is not None:
        ds.ReferencedBeamNumber = beam_number
    if fraction_number is not None:
        ds.FractionNumber = fraction_number
    if approved:
        ds.ApprovalStatus = "APPROVED"
        ds.ReviewDate = review_date
        ds.ReviewTime = review_time
        ds.ReviewerName = reviewer

    _add_pixels(ds, rows, columns, _zero_pixels(rows, columns))
    return ds


def rt_plan(
    *,
    plan_uid: str | None = None,
    label: str = "PROST",
    name: str = "Prostate VMAT",
    intent: str = "CURATIVE",
    fractions: int = 25,
    dose_per_fraction_gy: float = 2.0,
    machine: str = "TrueBeam1",
    beams: int = 2,
    control_points_per_beam: int = 2,
    meterset_mu: float = 120.0,
    couch: Triple = (-152.5, 987.0, 3.5),
    predecessor_uid: str | None = None,
    approval: str = "APPROVED",
    reviewer: str = "Oncologist^Olga",
    review_date: str = "20261020",
    review_time: str = "163000",
    plan_date: str = "20261020",
    plan_time: str = "120000",
    frame_of_reference_uid: str | None = None,
    treatment_site: str = "Prostate",
    arc: bool = False,
    mlc_leaf_pairs: int = 0,
    modulated: bool = False,
    wedges: int = 0,
    blocks: int = 0,
    compensators: int = 0,
    boli: int = 0,
    applicators: int = 0,
    referring_physician: str = "",
    dose_uids: Sequence[str] = (),
    group_dose_reference: bool = False,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient: PatientSpec = DEFAULT_PATIENT,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
) -> Dataset:
    """Minimal RT Plan (1.2.840.10008.5.1.4.1.1.481.5): one fraction group, ``beams`` beams.

    Technique options (defaults keep the plain static plan): ``arc`` makes every beam a CW
    arc (Gantry Rotation Direction on control point 0, DYNAMIC beam type); ``mlc_leaf_pairs``
    adds an MLCX device with that many leaf pairs, whose positions are written on every control
    point and, with ``modulated``, change from one control point to the next (else they are
    repeated unchanged); ``wedges`` / ``blocks`` / ``compensators`` / ``boli`` set the Number of
    ... attributes and ``applicators`` adds that many Applicator Sequence items.
    ``group_dose_reference`` makes the fraction group reference dose reference 1 through a
    Referenced Dose Reference Sequence; ``dose_uids`` fill the Referenced Dose Sequence.

    Beams default to 2 control points each because the RT Beams module requires at least two
    (the last one reaching the Final Cumulative Meterset Weight); ``control_points_per_beam=1``
    builds the degenerate variant. Control point 0 carries ``couch`` (vertical, longitudinal,
    lateral, mm), the same default as :func:`treatment_record`, so the recorded-minus-planned
    couch shift is zero unless a test changes one side. ``predecessor_uid`` adds a Referenced
    RT Plan Sequence item with RT Plan Relationship PREDECESSOR. Review attributes are written
    for APPROVED and REJECTED only, as the Approval module requires.
    """
    if control_points_per_beam < 1:
        raise ValueError("control_points_per_beam must be >= 1")
    ds = _new_dataset(RTPlanStorage, plan_uid, transfer_syntax_uid)
    _patient_study_series(
        ds,
        patient=patient,
        study_uid=study_uid,
        series_uid=series_uid,
        modality="RTPLAN",
        series_number=10,
        series_description="RT Plan",
        study_date=plan_date,
        study_time=plan_time,
    )
    _equipment(ds, manufacturer=VARIAN, model="Eclipse", station="ECLIPSE", serial="SN-TPS1")
    ds.SeriesDate = plan_date
    ds.SeriesTime = plan_time
    ds.InstanceCreationDate = plan_date
    ds.InstanceCreationTime = plan_time
    ds.FrameOfReferenceUID = frame_of_reference_uid or generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = 1

    ds.RTPlanLabel = label
    ds.RTPlanName = name
    ds.RTPlanDate = plan_date
    ds.RTPlanTime = plan_time
    ds.PlanIntent = intent
    ds.TreatmentSite = treatment_site
    ds.RTPlanGeometry = "PATIENT"
    ds.ReferencedStructureSetSequence = DicomSequence([_ref(RTStructureSetStorage, generate_uid())])
    ds.ReferringPhysicianName = referring_physician
    if dose_uids:
        ds.ReferencedDoseSequence = DicomSequence([_ref(RTDoseStorage, u) for u in dose_uids])
    if predecessor_uid is not None:
        predecessor = _ref(RTPlanStorage, predecessor_uid)
        predecessor.RTPlanRelationship = "PREDECESSOR"
        ds.ReferencedRTPlanSequence = DicomSequence([predecessor])

    total_dose = fractions * dose_per_fraction_gy
    ds.PrescriptionDescription = f"{_ds(total_dose)} Gy in {fractions} fractions"
    dose_ref = Dataset()
    dose_ref.DoseReferenceNumber = 1
    dose_ref.DoseReferenceUID = generate_uid()
    dose_ref.DoseReferenceStructureType = "SITE"
    dose_ref.DoseReferenceDescription = "PTV"
    dose_ref.DoseReferenceType = "TARGET"
    dose_ref.TargetPrescriptionDose = _ds(total_dose)
    ds.DoseReferenceSequence = DicomSequence([dose_ref])

    setup = Dataset()
    setup.PatientSetupNumber = 1
    setup.PatientPosition = "HFS"
    setup.SetupTechnique = "ISOCENTRIC"
    ds.PatientSetupSequence = DicomSequence([setup])

    group = Dataset()
    group.FractionGroupNumber = 1
    group.NumberOfFractionsPlanned = fractions
    group.NumberOfBeams = beams
    group.NumberOfBrachyApplicationSetups = 0
    if group_dose_reference:
        ref_dose = Dataset()
        ref_dose.ReferencedDoseReferenceNumber = 1
        group.ReferencedDoseReferenceSequence = DicomSequence([ref_dose])
    referenced_beams = []
    for number in range(1, beams + 1):
        ref_beam = Dataset()
        ref_beam.ReferencedBeamNumber = number
        ref_beam.BeamMeterset = _ds(meterset_mu)
        ref_beam.BeamDose = _ds(dose_per_fraction_gy / beams)
        referenced_beams.append(ref_beam)
    group.ReferencedBeamSequence = DicomSequence(referenced_beams)
    ds.FractionGroupSequence = DicomSequence([group])

    vert, long_, lat = couch
    beam_items = []
    for index in range(beams):
        beam = Dataset()
        beam.BeamNumber = index + 1
        beam.BeamName = f"Field {index + 1}"
        beam.TreatmentMachineName = machine
        beam.PrimaryDosimeterUnit = "MU"
        beam.SourceAxisDistance = "1000"
        beam.BeamType = "DYNAMIC" if arc or modulated else "STATIC"
        beam.RadiationType = "PHOTON"
        beam.TreatmentDeliveryType = "TREATMENT"
        beam.NumberOfWedges = wedges
        beam.NumberOfCompensators = compensators
        beam.NumberOfBoli = boli
        beam.NumberOfBlocks = blocks
        if applicators:
            applicator_items = []
            for number in range(1, applicators + 1):
                applicator = Dataset()
                applicator.ApplicatorID = f"A10x10-{number}"
                applicator.ApplicatorType = "ELECTRON_SQUARE"
                applicator_items.append(applicator)
            beam.ApplicatorSequence = DicomSequence(applicator_items)
        if mlc_leaf_pairs:
            mlc = Dataset()
            mlc.RTBeamLimitingDeviceType = "MLCX"
            mlc.NumberOfLeafJawPairs = mlc_leaf_pairs
            mlc.LeafPositionBoundaries = [
                _ds(-5.0 * mlc_leaf_pairs + 10.0 * i) for i in range(mlc_leaf_pairs + 1)
            ]
            beam.BeamLimitingDeviceSequence = DicomSequence([mlc])
        beam.FinalCumulativeMetersetWeight = "1"
        beam.ReferencedPatientSetupNumber = 1
        control_points = []
        for cp_index in range(control_points_per_beam):
            cp = Dataset()
            cp.ControlPointIndex = cp_index
            last = control_points_per_beam - 1
            cp.CumulativeMetersetWeight = _ds(cp_index / last if last else 1.0)
            if cp_index == 0:
                cp.NominalBeamEnergy = "6"
                cp.DoseRateSet = "600"
                cp.GantryAngle = _ds((180.0 * index) % 360.0)
                cp.GantryRotationDirection = "CW" if arc else "NONE"
                cp.BeamLimitingDeviceAngle = "0"
                cp.BeamLimitingDeviceRotationDirection = "NONE"
                cp.PatientSupportAngle = "0"
                cp.PatientSupportRotationDirection = "NONE"
                cp.TableTopEccentricAngle = "0"
                cp.TableTopEccentricRotationDirection = "NONE"
                cp.TableTopVerticalPosition = _ds(vert)
                cp.TableTopLongitudinalPosition = _ds(long_)
                cp.TableTopLateralPosition = _ds(lat)
                cp.IsocenterPosition = ["0", "0", "0"]
            if mlc_leaf_pairs:
                opening = 10.0 + (5.0 * cp_index if modulated else 0.0)
                device = Dataset()
                device.RTBeamLimitingDeviceType = "MLCX"
                device.LeafJawPositions = [_ds(-opening)] * mlc_leaf_pairs + [
                    _ds(opening)
                ] * mlc_leaf_pairs
                cp.BeamLimitingDevicePositionSequence = DicomSequence([device])
            control_points.append(cp)
        beam.NumberOfControlPoints = len(control_points)
        beam.ControlPointSequence = DicomSequence(control_points)
        beam_items.append(beam)
    ds.BeamSequence = DicomSequence(beam_items)

    ds.ApprovalStatus = approval
    if approval in ("APPROVED", "REJECTED"):
        ds.ReviewDate = review_date
        ds.ReviewTime = review_time
        ds.ReviewerName = reviewer
    return ds


def mr_image(
    *,
    rows: int = 32,
    columns: int = 32,
    acquisition_date: str = "20261030",
    acquisition_time: str = "093000",
    series_uid: str | None = None,
    study_uid: str | None = None,
    sop_instance_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    patient: PatientSpec = DEFAULT_PATIENT,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
) -> Dataset:
    """One MR Image (1.2.840.10008.5.1.4.1.1.4): a valid object of a SOP class rtops refuses."""
    ds = _new_dataset(MRImageStorage, sop_instance_uid, transfer_syntax_uid)
    _patient_study_series(
        ds,
        patient=patient,
        study_uid=study_uid,
        series_uid=series_uid,
        modality="MR",
        series_number=3,
        series_description="Sim MR T2 Pelvis",
        study_date=acquisition_date,
        study_time=acquisition_time,
    )
    _equipment(
        ds, manufacturer="SIEMENS", model="MAGNETOM Sola", station="MRSIM1", serial="SN-MRSIM1"
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NORM"]
    ds.SeriesDate = acquisition_date
    ds.SeriesTime = acquisition_time
    ds.AcquisitionDate = acquisition_date
    ds.AcquisitionTime = acquisition_time
    ds.ContentDate = acquisition_date
    ds.ContentTime = acquisition_time
    ds.InstanceNumber = 1
    ds.FrameOfReferenceUID = frame_of_reference_uid or generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "SK"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.RepetitionTime = "4000"
    ds.EchoTime = "100"
    ds.EchoTrainLength = 16
    ds.MagneticFieldStrength = "1.5"
    ds.ImagedNucleus = "1H"
    ds.SliceThickness = "3"
    ds.PixelSpacing = ["1", "1"]
    ds.ImagePositionPatient = [_ds(-(columns - 1) / 2.0), _ds(-(rows - 1) / 2.0), "0"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    _add_pixels(ds, rows, columns, _zero_pixels(rows, columns))
    return ds


# --------------------------------------------------------------------------------------------
# Files: writing, truncating, garbage
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImagedFraction:
    """A plan, the CBCT of one fraction, its registration onto the plan, and the record."""

    plan: Dataset
    cbct: list[Dataset]
    registration: Dataset
    record: Dataset

    def write(self, folder: Path) -> list[Path]:
        """Files in sending order: plan, CBCT slices, registration, treatment record."""
        return [
            write(self.plan, folder / "plan.dcm"),
            *write_series(self.cbct, folder / "cbct"),
            write(self.registration, folder / "reg.dcm"),
            write(self.record, folder / "rec.dcm"),
        ]


def imaged_fraction(
    *, fractions: int = 25, fraction_number: int = 1, cbct_slices: int = 4
) -> ImagedFraction:
    plan = rt_plan(fractions=fractions)
    cbct = cbct_series(n_slices=cbct_slices)
    registration = spatial_registration(
        fixed_for_uid=str(plan.FrameOfReferenceUID),
        moving_for_uid=str(cbct[0].FrameOfReferenceUID),
        moving_series_uid=str(cbct[0].SeriesInstanceUID),
        moving_instance_uids=[str(s.SOPInstanceUID) for s in cbct],
    )
    record = treatment_record(plan_uid=str(plan.SOPInstanceUID), fraction_number=fraction_number)
    return ImagedFraction(plan, cbct, registration, record)


def write(ds: Dataset, path: str | Path) -> Path:
    """Save ``ds`` as a DICOM Part 10 file (preamble, DICM, file meta) and return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=True)
    return target


def write_series(datasets: Iterable[Dataset], folder: str | Path) -> list[Path]:
    """Write each dataset as ``<folder>/<Modality>.<SOPInstanceUID>.dcm`` (Varian-style names)."""
    directory = Path(folder)
    return [
        write(ds, directory / f"{ds.get('Modality', 'OT')}.{ds.SOPInstanceUID}.dcm")
        for ds in datasets
    ]


_LONG_LENGTH_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)


def _dataset_offset(data: bytes) -> int:
    """Byte offset of the first dataset element after the preamble and file meta group."""
    if data[128:132] != b"DICM":
        raise ValueError("not a DICOM Part 10 file (no DICM prefix)")
    offset = 132
    # File meta is always explicit VR little endian; walk it rather than trust the group length,
    # which some writers omit or get wrong.
    while offset + 8 <= len(data):
        group = int.from_bytes(data[offset : offset + 2], "little")
        if group != 0x0002:
            break
        vr = data[offset + 4 : offset + 6]
        if vr in _LONG_LENGTH_VRS:
            length = int.from_bytes(data[offset + 8 : offset + 12], "little")
            offset += 12 + length
        else:
            length = int.from_bytes(data[offset + 6 : offset + 8], "little")
            offset += 8 + length
    return offset


def truncated_copy(src: str | Path, dst: str | Path, keep_fraction: float = 0.6) -> Path:
    """Copy ``src`` to ``dst`` keeping preamble and file meta intact but cutting the dataset.

    ``keep_fraction`` is the share of the *dataset* bytes (after the file meta) that survive, so
    the cut always lands inside the dataset (inside Pixel Data for a CT slice, inside the Treatment
    Session Beam Sequence for a default treatment record).

    pydicom 3.0.2 does NOT reliably notice truncation: it reads short values as they are, parses
    a cut sequence into fewer or partial items, and stops quietly when fewer than 8 bytes remain.
    ``dcmread`` raises only when the cut splits the 4-byte extended length of an OB/OW/SQ/UN/UT
    header (``struct.error``) or leaves an undefined-length sequence unterminated (``OSError``).
    A reader that must refuse truncated files has to compare the last top-level element's
    declared end (``value_tell + length`` of the raw element) with the file size itself.
    """
    if not 0.0 < keep_fraction < 1.0:
        raise ValueError("keep_fraction must be strictly between 0 and 1")
    data = Path(src).read_bytes()
    start = _dataset_offset(data)
    cut = start + max(1, int((len(data) - start) * keep_fraction))
    target = Path(dst)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data[:cut])
    return target


def _short_element(tag: int, vr: bytes, value: bytes) -> bytes:
    """Explicit VR little endian element with a 2-byte length (CS, UI, IS, ...)."""
    if len(value) % 2:
        value += b"\0" if vr == b"UI" else b" "
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


GarbageKind = Literal["unterminated_sequence", "overrun", "random"]


def garbage_dicom(
    dst: str | Path,
    *,
    kind: GarbageKind = "unterminated_sequence",
    sop_class_uid: str = RTBeamsTreatmentRecordStorage,
    seed: int = 1234,
) -> Path:
    """Write a valid preamble and file meta (RT Beams Treatment Record, explicit VR little
    endian) followed by a dataset that cannot be decoded properly.

    What pydicom 3.0.2 does with each ``kind`` (``dcmread(path)`` then touching every element):

    * ``"unterminated_sequence"`` (default): Specific Character Set and SOP Class UID, then a
      Treatment Session Beam Sequence of undefined length whose undefined-length item runs into
      end of file with no delimiters. ``dcmread`` raises ``OSError("No tag to read at file
      position ...")``. The only kind that reliably raises.
    * ``"overrun"``: the same sequence with a *defined* length of 1 MiB and an item of ~1 MiB,
      over 6 bytes of a partial element header. pydicom reads it WITHOUT error: the sequence
      decodes to one empty item. Use it to test a reader's own length check.
    * ``"random"``: 512 seeded random bytes. pydicom usually warns "Expected explicit VR, but
      found implicit VR" and returns a dataset with one or two nonsense elements; some seeds
      raise ``NotImplementedError("Unknown Value Representation ...")`` on element access.
    """
    meta_source = _new_dataset(sop_class_uid, None, ExplicitVRLittleEndian)
    buffer = io.BytesIO()
    meta_source.save_as(buffer, enforce_file_format=True)
    head = buffer.getvalue()
    head = head[: _dataset_offset(head)]

    prefix = _short_element(0x00080005, b"CS", b"ISO_IR 192")
    prefix += _short_element(0x00080016, b"UI", sop_class_uid.encode("ascii"))
    sequence_header = struct.pack("<HH2s2x", 0x3008, 0x0020, b"SQ")
    item_tag = struct.pack("<HH", 0xFFFE, 0xE000)
    if kind == "unterminated_sequence":
        body = prefix + sequence_header + struct.pack("<I", 0xFFFFFFFF)
        body += item_tag + struct.pack("<I", 0xFFFFFFFF)
        body += _short_element(0x300C0006, b"IS", b"1")
    elif kind == "overrun":
        body = prefix + sequence_header + struct.pack("<I", 0x00100000)
        body += item_tag + struct.pack("<I", 0x000FFFF0) + struct.pack("<HH2s", 0x300C, 6, b"IS")
    elif kind == "random":
        body = random.Random(seed).randbytes(512)
    else:
        raise ValueError(f"unknown garbage kind {kind!r}")

    target = Path(dst)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(head + body)
    return target
