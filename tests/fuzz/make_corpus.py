"""Write the fuzz seed corpus (``tests/fuzz/corpus``): one input per accepted SOP class from
the test factories, in each uncompressed transfer syntax for a few of them, and the data set
bytes of the small vendor samples in ``tests/data`` (sources and licences in its README),
unchanged. Run ``.venv/bin/python -m tests.fuzz.make_corpus`` after changing a factory; the
corpus stays under 2 MB (the large samples, a structure set and two images, are left out)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from services.scp_listener import sop
from tests import dicom_factories as f
from tests.fuzz.harness import CORPUS, encode_input

REPO = Path(__file__).resolve().parents[2]
SAMPLES = (
    "tests/data/pinnacle/rtplan.dcm",
    "tests/data/eclipse-8.1-prostate-phantom/RP.1.2.246.352.71.5.2088656855.377401.20110920153647.dcm",
    "tests/data/ion-plans/aria11_MultpleFL.dcm",
    "tests/data/aria-verification/RP_verification_plan.dcm",
)
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def encode(ds: Dataset, syntax: str) -> bytes:
    """The data set's bytes in ``syntax``; a deflated one as the inflated explicit VR bytes
    (the harness deflates them)."""
    out = DicomBytesIO()
    out.is_little_endian = syntax != ExplicitVRBigEndian
    out.is_implicit_VR = syntax == ImplicitVRLittleEndian
    write_dataset(out, ds)
    return out.getvalue()


def store_only(sop_class_uid: str) -> Dataset:
    """A minimal object of a class the SCP only stores (no factory builds these)."""
    plan = f.rt_plan()
    ds = Dataset()
    for keyword in (
        "SpecificCharacterSet",
        "SOPClassUID",
        "SOPInstanceUID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "ReferencedRTPlanSequence",
    ):
        if keyword in plan:
            setattr(ds, keyword, plan.data_element(keyword).value)  # type: ignore[union-attr]
    ds.SOPClassUID = sop_class_uid
    ds.Modality = "RTSTRUCT" if sop_class_uid == sop.RT_STRUCTURE_SET else "RTDOSE"
    return ds


def factory_objects() -> list[tuple[str, Dataset]]:
    plan = f.rt_plan(beams=2, control_points_per_beam=3, mlc_leaf_pairs=4, modulated=True)
    uid = str(plan.SOPInstanceUID)
    fraction = f.imaged_fraction(cbct_slices=1)
    objects: list[tuple[str, Dataset]] = [
        (sop.RT_PLAN, plan),
        (sop.RT_BEAMS_RECORD, f.treatment_record(plan_uid=uid)),
        (sop.RT_BRACHY_RECORD, f.brachy_treatment_record(plan_uid=uid)),
        (sop.RT_SUMMARY_RECORD, f.treatment_summary_record(plan_uid=uid)),
        (sop.SPATIAL_REGISTRATION, fraction.registration),
        (sop.DEFORMABLE_REGISTRATION, f.deformable_registration()),
        (sop.RAW_DATA, f.elekta_rps()),
        (sop.CT_IMAGE, f.cbct_series(n_slices=1, rows=4, columns=4)[0]),
        (sop.RT_IMAGE, f.rt_image(approved=True, plan_uid=uid, rows=4, columns=4)),
        (sop.ENCAPSULATED_PDF, f.encapsulated_pdf(plan_uid=uid)),
        (sop.RT_STRUCTURE_SET, store_only(sop.RT_STRUCTURE_SET)),
        (sop.RT_DOSE, store_only(sop.RT_DOSE)),
    ]
    return objects


def sample_inputs() -> list[bytes]:
    out = []
    for name in SAMPLES:
        path = REPO / name
        ds = pydicom.dcmread(path, force=True)
        data = path.read_bytes()
        meta = ds.file_meta
        syntax = str(meta.TransferSyntaxUID)
        if syntax == DeflatedExplicitVRLittleEndian:
            continue
        start = f._dataset_offset(data) if data[128:132] == b"DICM" else 0
        out.append(encode_input(str(ds.SOPClassUID), syntax, data[start:]))
    return out


def build() -> list[bytes]:
    inputs = sample_inputs()
    for n, (sop_class_uid, ds) in enumerate(factory_objects()):
        syntaxes: tuple[str, ...] = (ExplicitVRLittleEndian,)
        if n % 3 == 0:
            syntaxes = (*_UNCOMPRESSED, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian)
        elif n % 3 == 1:
            syntaxes = _UNCOMPRESSED
        for syntax in syntaxes:
            inputs.append(encode_input(sop_class_uid, syntax, encode(ds, syntax)))
    return inputs


def main() -> None:
    if CORPUS.exists():
        shutil.rmtree(CORPUS)
    CORPUS.mkdir(parents=True)
    total = 0
    for data in build():
        name = hashlib.sha1(data).hexdigest()  # libFuzzer's own corpus naming
        (CORPUS / name).write_bytes(data)
        total += len(data)
    print(f"{len(list(CORPUS.iterdir()))} seeds, {total} bytes")


if __name__ == "__main__":
    main()
