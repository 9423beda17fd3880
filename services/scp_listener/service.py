"""Use cases of the SCP: ingest one received object, publish quiet image series.

``ingest`` is the whole C-STORE path after the bytes arrived: decode and check the header,
make the file durable, then index it and queue its event in one transaction. Only when that
commits does the caller answer success.
"""

from __future__ import annotations

import functools
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from pathlib import Path
from typing import Any

import pydicom
import structlog
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import DeflatedExplicitVRLittleEndian
from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from services.scp_listener import extract, sop
from services.scp_listener.objectstore import ObjectStore, sha256_of
from services.scp_listener.store import DicomObject, ImageSeries, Outbox
from shared.events import (
    DicomEvent,
    ImageApproval,
    ImagingAcquired,
    Patient,
    SourceDevice,
    StoredObject,
    envelope,
)
from shared.outbox import add_to_outbox

log = structlog.get_logger(__name__)
EVENT_SOURCE = "rtops/scp_listener"


class Status(IntEnum):
    """C-STORE statuses (PS3.4 Table B.2-1 and PS3.7 C.4.2)."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700  # storage failed: the sender should retry
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC210
    SOP_CLASS_NOT_SUPPORTED = 0x0122


@dataclass(frozen=True)
class Outcome:
    status: Status
    reason: str
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    size: int = 0
    created: bool = False


class Undecodable(Exception):
    pass


class WrongSopClass(Exception):
    pass


_objects = DicomObject.__table__
_series = ImageSeries.__table__
# Built once: composing a statement per object costs more than executing it.
_INSERT_OBJECT = insert(_objects)
_SELECT_REVISIONS = select(_objects.c.revision, _objects.c.sha256).where(
    _objects.c.sop_instance_uid == bindparam("uid")
)


@functools.cache
def _upsert_series(dialect: str) -> Any:
    """A new series row, or mark the existing one changed (first instance's facts stay)."""
    stmt = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(_series)
    return stmt.on_conflict_do_update(
        index_elements=["series_instance_uid"],
        set_={"last_received_at": stmt.excluded.last_received_at, "dirty": True},
    )


def _check_identity(ds: Dataset, sop_class_uid: str, sop_instance_uid: str) -> str:
    """The dataset's SOP Instance UID, which is the object's identity."""
    uid = extract.text(ds, "SOPInstanceUID")
    if not uid:
        raise Undecodable("dataset has no SOP Instance UID")
    ds_class = extract.text(ds, "SOPClassUID")
    if ds_class != sop_class_uid:
        raise WrongSopClass(f"dataset SOP Class {ds_class} was sent as {sop_class_uid}")
    if uid != sop_instance_uid:
        # Seen in real exports (an Elekta iView file): the dataset is the authority.
        log.warning(
            "affected SOP Instance UID differs from the dataset's",
            command=sop_instance_uid,
            dataset=uid,
        )
    return uid


# Values larger than this (pixel data, dose grids) are skipped, not read: rtops needs headers
# only, and an object is never held whole in memory.
DEFER_BYTES = 64 * 1024


def read_header(path: Path) -> Dataset:
    """Decode the object's structure once; a malformed or truncated one raises
    ``Undecodable``. Large values stay on disk (``DEFER_BYTES``)."""
    try:
        with warnings.catch_warnings():
            # pydicom only warns when an undefined-length item runs into the end of the file.
            warnings.filterwarnings("error", message=".*[Ee]nd of file.*")
            ds = pydicom.dcmread(path, defer_size=DEFER_BYTES)
        if ds.file_meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            # A deflated dataset's offsets count inflated bytes; zlib checks its own end.
            check_complete(ds, path.stat().st_size)
        extract.decode_sequences(ds)
    except (
        InvalidDicomError,
        EOFError,
        OSError,
        ValueError,
        TypeError,
        KeyError,
        OverflowError,
        NotImplementedError,
        AttributeError,
        IndexError,
        struct.error,
        UserWarning,
    ) as exc:
        raise Undecodable(f"{type(exc).__name__}: {exc}") from exc
    return ds


_UNDEFINED = 0xFFFFFFFF


def check_complete(ds: Dataset, size: int) -> None:
    """pydicom decodes a truncated dataset silently (a short last value, fewer items), so
    check that every top-level value is as long as its header says and that the last one
    ends exactly at the end of the file. A cut that falls exactly between two top-level
    elements cannot be told from a complete object: DICOM carries no total length."""
    end = 0
    for elem in ds._dict.values():
        if not isinstance(elem, RawDataElement) or elem.value_tell is None:
            continue
        if elem.value is None and elem.length not in (0, _UNDEFINED):
            # a deferred (skipped) value: only its extent can be checked, against the end
            end = max(end, elem.value_tell + elem.length)
            continue
        value_len = len(elem.value) if elem.value is not None else 0
        if elem.length == _UNDEFINED:
            # value excludes the 8-byte delimiter that pydicom consumed after it
            end = max(end, elem.value_tell + value_len + 8)
            continue
        if value_len != elem.length:
            raise EOFError(
                f"element {elem.tag} is {value_len} bytes of the {elem.length} its "
                "header announces: the object is truncated"
            )
        end = max(end, elem.value_tell + elem.length)
    if end and end != size:
        raise EOFError(
            f"the dataset ends at byte {end} of {size}: the object is truncated or "
            "has trailing bytes"
        )


class Ingestor:
    def __init__(
        self,
        *,
        factory: sessionmaker[Session],
        store: ObjectStore,
        clinic_tz: str,
        on_commit: Callable[[], None] = lambda: None,
    ) -> None:
        self._factory = factory
        self._store = store
        self._tz = clinic_tz
        self._on_commit = on_commit

    def ingest(
        self,
        path: Path,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        source: SourceDevice,
    ) -> Outcome:
        try:
            ds = read_header(path)
            uid = _check_identity(ds, sop_class_uid, sop_instance_uid)
        except Undecodable as exc:
            return Outcome(Status.CANNOT_UNDERSTAND, str(exc), sop_class_uid, sop_instance_uid)
        except WrongSopClass as exc:
            return Outcome(
                Status.DATASET_DOES_NOT_MATCH_SOP_CLASS, str(exc), sop_class_uid, sop_instance_uid
            )
        try:
            sha, size = sha256_of(path)
            with self._factory() as session, session.begin():
                # Core statements on the connection: the ORM's unit of work costs more per
                # object than the fsyncs do.
                conn = session.connection()
                revisions = conn.execute(_SELECT_REVISIONS, {"uid": uid}).all()
                if any(row.sha256 == sha for row in revisions):
                    return Outcome(
                        Status.SUCCESS, "duplicate: already stored", sop_class_uid, uid, size
                    )
                revision = max((row.revision for row in revisions), default=0) + 1
                try:
                    event = self._event_for(
                        ds, sop_class_uid, uid, sha, revision, size, transfer_syntax_uid, source
                    )
                    facts = (
                        extract.image_facts(ds, sop_class_uid, source, self._tz)
                        if sop.STORAGE[sop_class_uid] == "image"
                        else None
                    )
                except Exception as exc:  # the tolerant readers failed: malformed object
                    log.exception("could not read the object's attributes", sop_instance_uid=uid)
                    return Outcome(
                        Status.CANNOT_UNDERSTAND,
                        f"attributes could not be read: {exc}",
                        sop_class_uid,
                        uid,
                    )
                if revision > 1:
                    log.warning(
                        "same SOP Instance UID with different content: kept as a new revision",
                        sop_instance_uid=uid,
                        revision=revision,
                    )
                # The file is durable before the row that names it commits.
                key = self._store.put(path, sha)
                now = datetime.now(UTC)
                approval = facts.pop("approval", None) if facts else None
                conn.execute(
                    _INSERT_OBJECT,
                    {
                        "sop_instance_uid": uid,
                        "revision": revision,
                        "sop_class_uid": sop_class_uid,
                        "sha256": sha,
                        "storage_key": key,
                        "size": size,
                        "transfer_syntax_uid": transfer_syntax_uid,
                        "study_instance_uid": extract.text(ds, "StudyInstanceUID"),
                        "series_instance_uid": extract.text(ds, "SeriesInstanceUID"),
                        "patient_id": extract.text(ds, "PatientID"),
                        "calling_ae": source.ae_title,
                        "received_at": now,
                        "acquired_at": facts.get("acquired_at") if facts else None,
                        "approval": approval.model_dump(mode="json") if approval else None,
                    },
                )
                if event is not None:
                    add_to_outbox(
                        session, Outbox, envelope(event, source=EVENT_SOURCE, subject=uid)
                    )
                if facts is not None:
                    self._touch_series(session, ds, sop_class_uid, facts, source, now)
        except (SQLAlchemyError, OSError) as exc:
            log.error(
                "storage failed; answering 0xA700 so the sender retries",
                sop_instance_uid=sop_instance_uid,
                error=str(exc),
            )
            return Outcome(
                Status.OUT_OF_RESOURCES, f"storage failed: {exc}", sop_class_uid, sop_instance_uid
            )
        self._on_commit()
        return Outcome(Status.SUCCESS, "stored", sop_class_uid, uid, size, created=True)

    def _event_for(
        self,
        ds: Dataset,
        sop_class_uid: str,
        uid: str,
        sha: str,
        revision: int,
        size: int,
        transfer_syntax_uid: str,
        source: SourceDevice,
    ) -> DicomEvent | None:
        route = sop.STORAGE[sop_class_uid]
        if route in ("image", "store_only"):
            return None
        obj = StoredObject(
            sop_class_uid=sop_class_uid,
            sop_instance_uid=uid,
            study_instance_uid=extract.text(ds, "StudyInstanceUID"),
            series_instance_uid=extract.text(ds, "SeriesInstanceUID"),
            storage_key=ObjectStore.key_for(sha),
            revision=revision,
            sha256=sha,
            transfer_syntax_uid=transfer_syntax_uid,
        )
        build = {
            "plan": extract.plan_received,
            "treatment": extract.treatment_recorded,
            "summary": extract.treatment_summarized,
            "registration": extract.registration_received,
        }[route]
        return build(ds, obj, source, self._tz)

    def _touch_series(
        self,
        session: Session,
        ds: Dataset,
        sop_class_uid: str,
        facts: dict[str, Any],
        source: SourceDevice,
        now: datetime,
    ) -> None:
        series_uid = extract.text(ds, "SeriesInstanceUID") or extract.text(ds, "SOPInstanceUID")
        first_facts = {k: v for k, v in facts.items() if k not in ("acquired_at",)}
        first_facts["patient"] = extract.patient(ds).model_dump(mode="json")
        first_facts["source"] = source.model_dump(mode="json")
        session.connection().execute(
            _upsert_series(session.get_bind().dialect.name),
            {
                "series_instance_uid": series_uid,
                "sop_class_uid": sop_class_uid,
                "facts": _jsonable(first_facts),
                "last_received_at": now,
                "dirty": True,
                "published_count": 0,
            },
        )

    # ------------------------------------------------------------ image series

    def publish_quiet_series(self, *, now: datetime, quiet: timedelta) -> int:
        """Queue an imaging event for every changed series quiet since ``now - quiet``."""
        published = 0
        with self._factory() as session, session.begin():
            series = session.scalars(
                select(ImageSeries)
                .where(ImageSeries.dirty.is_(True), ImageSeries.last_received_at <= now - quiet)
                .limit(500)
            ).all()
            for row in series:
                event = self._imaging_event(session, row)
                add_to_outbox(
                    session,
                    Outbox,
                    envelope(event, source=EVENT_SOURCE, subject=row.series_instance_uid),
                )
                session.execute(
                    update(ImageSeries)
                    .where(
                        ImageSeries.series_instance_uid == row.series_instance_uid,
                        ImageSeries.last_received_at == row.last_received_at,
                    )
                    .values(dirty=False, published_count=event.instance_count)
                )
                published += 1
        if published:
            self._on_commit()
        return published

    def _imaging_event(self, session: Session, row: ImageSeries) -> ImagingAcquired:
        # The latest revision of each instance; counting UIDs makes re-sends count once.
        latest = (
            select(DicomObject.sop_instance_uid, func.max(DicomObject.revision).label("rev"))
            .where(DicomObject.series_instance_uid == row.series_instance_uid)
            .group_by(DicomObject.sop_instance_uid)
            .subquery()
        )
        objects = session.execute(
            select(DicomObject.storage_key, DicomObject.acquired_at, DicomObject.approval)
            .join(
                latest,
                (DicomObject.sop_instance_uid == latest.c.sop_instance_uid)
                & (DicomObject.revision == latest.c.rev),
            )
            .order_by(DicomObject.storage_key)
        ).all()
        times = [o.acquired_at for o in objects if o.acquired_at]
        facts = dict(row.facts)
        return ImagingAcquired(
            patient=Patient.model_validate(facts.pop("patient")),
            source=SourceDevice.model_validate(facts.pop("source")),
            series_instance_uid=row.series_instance_uid,
            sop_class_uid=row.sop_class_uid,
            instance_count=len(objects),
            acquired_at=min(times) if times else None,
            last_acquired_at=max(times) if times else None,
            approvals=tuple(
                sorted(
                    (ImageApproval.model_validate(o.approval) for o in objects if o.approval),
                    key=lambda a: a.sop_instance_uid,
                )
            ),
            storage_keys=tuple(o.storage_key for o in objects),
            **facts,
        )


def _jsonable(facts: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in facts.items()}
