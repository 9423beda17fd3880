"""Fuzz harness over the SCP's read-and-extract path (issue 15).

``check_one`` runs, on one received data set, what ``Ingestor.ingest`` runs before and after
its database writes: ``read_header``, the identity check, the reader of the object's SOP class
(``extract.extract_received``), then what the commit does with the results (the column values,
the event's JSON, the image series' facts as JSON). It returns the status class the SCP would
answer and raises only when that contract breaks: an exception the Ingestor does not map to
0xC210 / 0xA900 (answered 0x0110, a bug), or a value that a database column cannot hold
(PostgreSQL would refuse it: 0xA700, and the device retries forever).

Run the fuzzer (atheris, libFuzzer options pass through)::

    .venv/bin/python -m tests.fuzz.harness -max_total_time=60
    .venv/bin/python -m tests.fuzz.harness -atheris_runs=100000 some/corpus/dir

An input is one selector byte (SOP class and transfer syntax, see ``decode_input``) then the
data set bytes, as a device sends them; the harness adds the File Meta Information the SCP's
spool file holds. New inputs go to a temporary directory, never into ``tests/fuzz/corpus``.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # before pydicom is imported, as the SCP's entry point does
    from services.scp_listener.lean import keep_lean

    keep_lean()
    import atheris

    # Coverage feedback from the code under test only (instrumenting everything loaded,
    # SQLAlchemy and pydantic included, takes minutes).
    with atheris.instrument_imports(include=["pydicom", "services.scp_listener.extract"]):
        import pydicom  # noqa: F401

        import services.scp_listener.extract  # noqa: F401

import json
import os
import tempfile
import traceback
import warnings
import zlib
from pathlib import Path

from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from services.scp_listener import extract, sop
from services.scp_listener.service import (
    MALFORMED_DATA,
    Undecodable,
    WrongSopClass,
    _check_identity,
    _jsonable,
    _stored_object,
)
from shared.events import SourceDevice, envelope

# Every storage SOP class the SCP accepts, in a fixed order (the selector byte indexes it).
SOP_CLASSES: tuple[str, ...] = tuple(sorted(sop.STORAGE))
# The uncompressed transfer syntaxes; the compressed ones are Explicit VR Little Endian with
# encapsulated pixel data, which the SCP never decodes. A deflated input is given inflated:
# the harness deflates it (PS3.5 A.5), so mutations reach the data set, not zlib's framing.
TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
)
INSTANCE_UID = "1.2.826.0.1.3680043.8.498.1"  # the command's Affected SOP Instance UID
SOURCE = SourceDevice(ae_title="FUZZ", role="linac", machine=None)
CLINIC_TZ = "Europe/Zurich"
# dicom_object / image_series columns the commit writes from the data set (store.py).
COLUMN_LIMITS = {"patient_id": 64, "study_instance_uid": 64, "series_instance_uid": 64}

STORED = "stored"
CANNOT_UNDERSTAND = "0xC210"
DOES_NOT_MATCH = "0xA900"


class ContractViolation(AssertionError):
    """The SCP would answer something other than its contract allows (a bug in rtops)."""


def encode_input(sop_class_uid: str, transfer_syntax_uid: str, dataset: bytes) -> bytes:
    selector = SOP_CLASSES.index(sop_class_uid) * len(TRANSFER_SYNTAXES)
    return bytes([selector + TRANSFER_SYNTAXES.index(transfer_syntax_uid)]) + dataset


def decode_input(data: bytes) -> tuple[str, str, bytes]:
    """Selector byte -> (SOP class, transfer syntax), and the data set bytes after it."""
    selector = data[0] if data else 0
    klass, syntax = divmod(selector, len(TRANSFER_SYNTAXES))
    return SOP_CLASSES[klass % len(SOP_CLASSES)], TRANSFER_SYNTAXES[syntax], data[1:]


def spool_bytes(dataset: bytes, sop_class_uid: str, transfer_syntax_uid: str) -> bytes:
    """The file the SCP's spool holds: preamble, DICM, File Meta Information (what pynetdicom
    writes from the presentation context and the command), then the data set as received."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = INSTANCE_UID
    meta.TransferSyntaxUID = transfer_syntax_uid
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.2"
    out = DicomBytesIO()
    out.is_little_endian = True
    out.is_implicit_VR = False
    write_file_meta_info(out, meta, enforce_standard=True)
    if transfer_syntax_uid == DeflatedExplicitVRLittleEndian:
        packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        dataset = packer.compress(dataset) + packer.flush()
    return b"\0" * 128 + b"DICM" + out.getvalue() + dataset


def check_one(data: bytes, sop_class_uid: str, transfer_syntax_uid: str) -> str:
    """Run the ingest's read and extract path on one received data set (``data``: the data
    set bytes, no File Meta) and return the status class the SCP answers: ``STORED``,
    ``CANNOT_UNDERSTAND`` or ``DOES_NOT_MATCH``. Anything else escapes (a crash)."""
    with tempfile.TemporaryDirectory(prefix="rtops-fuzz-") as tmp:
        path = Path(tmp) / "received.dcm"
        path.write_bytes(spool_bytes(data, sop_class_uid, transfer_syntax_uid))
        return _ingest_path(path, sop_class_uid, transfer_syntax_uid)


def _ingest_path(path: Path, sop_class_uid: str, transfer_syntax_uid: str) -> str:
    # Ingestor.ingest: these two, with only these two exceptions mapped.
    try:
        ds = extract.read_header(path, extract.MAX_SEQUENCE_DEPTH)
        uid = _check_identity(ds, sop_class_uid, INSTANCE_UID)
    except Undecodable:
        return CANNOT_UNDERSTAND
    except WrongSopClass:
        return DOES_NOT_MATCH
    # Ingestor._index, before its MALFORMED_DATA guard: nothing here may raise.
    route = sop.STORAGE[sop_class_uid]
    series_uid = (extract.text(ds, "SeriesInstanceUID") or uid) if route == "image" else None
    patient_id = extract.text(ds, "PatientID")
    if route in ("image", "store_only"):
        # no event, so its row's study and series are read first by the insert, unguarded
        extract.text(ds, "StudyInstanceUID")
        extract.text(ds, "SeriesInstanceUID")
    sha = "0" * 64
    try:
        obj = _stored_object(ds, sop_class_uid, uid, sha, 1, transfer_syntax_uid)
        extracted = extract.extract_received(ds, obj, SOURCE, CLINIC_TZ)
    except MALFORMED_DATA:
        return CANNOT_UNDERSTAND
    # The commit: rows, the event's JSON, the series' facts as JSON. Nothing may raise.
    columns = {
        "patient_id": patient_id,
        "study_instance_uid": extract.text(ds, "StudyInstanceUID"),
        "series_instance_uid": extract.text(ds, "SeriesInstanceUID"),
    }
    for column, value in columns.items():
        if value is not None and len(value) > COLUMN_LIMITS[column]:
            raise ContractViolation(
                f"{column} of {len(value)} characters passed the read: a String("
                f"{COLUMN_LIMITS[column]}) column refuses it on PostgreSQL (0xA700, retried)"
            )
    if extracted.event is not None:
        envelope(extracted.event, source="rtops/scp_listener", subject=uid).to_json()
    if extracted.facts is not None:
        facts = dict(extracted.facts)
        approval = facts.pop("approval", None)
        if approval is not None:
            approval.model_dump(mode="json")
        facts["patient"] = extract.patient(ds).model_dump(mode="json")
        facts["source"] = SOURCE.model_dump(mode="json")
        json.dumps(_jsonable(facts))
        if series_uid is not None and len(series_uid) > COLUMN_LIMITS["series_instance_uid"]:
            raise ContractViolation(f"series key of {len(series_uid)} characters")
    return STORED


def check_input(data: bytes) -> str:
    """``check_one`` on a fuzz input (selector byte, then the data set)."""
    sop_class_uid, transfer_syntax_uid, dataset = decode_input(data)
    return check_one(dataset, sop_class_uid, transfer_syntax_uid)


# ---------------------------------------------------------------- atheris entry point

CORPUS = Path(__file__).resolve().parent / "corpus"
ADDRESS_SPACE_BYTES = 1 << 30  # as -rss_limit_mb; a 9-minute run's process held 126 MB


def _fuzz_one(data: bytes) -> None:
    check_input(data)


def _fuzz_one_keep_going(data: bytes) -> None:
    """A long campaign's target: a crash is saved (one input per exception type and place,
    under ``RTOPS_FUZZ_CRASH_DIR``) and the run goes on."""
    try:
        check_input(data)
    except Exception as exc:
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        place = f"{type(exc).__name__}-{Path(frame.filename).stem}-{frame.lineno}"
        target = Path(os.environ["RTOPS_FUZZ_CRASH_DIR"]) / place
        if not target.exists():
            target.write_bytes(data)
            print(f"CRASH {place}: {exc!s:.200}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> None:
    import logging
    import resource

    import atheris
    import structlog

    from tests.fuzz.mutator import mutate

    warnings.simplefilter("ignore")  # pydicom warns about every odd value it reads
    # the ingest's own log lines (a command UID unlike the data set's) cost more than a run
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    # New inputs go to the first corpus directory: a temporary one, so the seeds stay put.
    args = [a for a in argv[1:] if a.startswith("-")]
    dirs = [a for a in argv[1:] if not a.startswith("-")]
    if not dirs:
        dirs = [tempfile.mkdtemp(prefix="rtops-fuzz-corpus-"), str(CORPUS)]
    if not any(a.startswith("-artifact_prefix=") for a in args):
        args.append(f"-artifact_prefix={tempfile.mkdtemp(prefix='rtops-fuzz-crash-')}/")
    if not any(a.startswith("-max_len=") for a in args):
        args.append("-max_len=262144")
    if not any(a.startswith("-rss_limit_mb=") for a in args):
        args.append("-rss_limit_mb=1024")
    # An allocation sized by a length field rather than the bytes there raises MemoryError at
    # once, with its input and traceback, instead of passing unnoticed (the kernel hands out
    # untouched pages lazily) or ending the run as an out-of-memory with no input saved.
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY or soft > ADDRESS_SPACE_BYTES:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_BYTES, hard))
    target = _fuzz_one_keep_going if os.environ.get("RTOPS_FUZZ_CRASH_DIR") else _fuzz_one
    atheris.Setup([argv[0], *args, *dirs], target, custom_mutator=mutate)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
