"""Use cases of the SCP: ingest one received object, publish image series (when the
association that delivered them is released, or once they have been quiet).

``ingest`` is the whole C-STORE path after the bytes arrived: decode and check the header,
make the file durable, then index it and queue its event in one transaction. Only when that
commits does the caller answer success. The file is the durable record; the index commit does
not wait for its own flush, and ``restore`` / ``confirm`` are what the reconciliation
(reconcile.py) rebuilds and confirms it with (docs/scp_durability.md).
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from functools import partial
from pathlib import Path
from typing import Any

import structlog
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException
from pydicom.filereader import read_file_meta_info
from sqlalchemy import (
    JSON,
    Connection,
    Engine,
    bindparam,
    func,
    insert,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from services.scp_listener import extract, sop
from services.scp_listener.extract import MalformedObject, Undecodable, read_header
from services.scp_listener.objectstore import (
    Flushing,
    ObjectStore,
    Recent,
    crash_point,
    sha256_of,
)
from services.scp_listener.store import (
    DicomObject,
    DurabilityMark,
    ImageSeries,
)
from shared.db import UtcDateTime, durable_commit, relaxed_commit
from shared.events import (
    DicomEvent,
    ImageApproval,
    ImagingAcquired,
    Patient,
    SourceDevice,
    StoredObject,
)
from shared.outbox import emit

log = structlog.get_logger(__name__)


class Status(IntEnum):
    """C-STORE statuses (PS3.4 Table B.2-1 and PS3.7 C.4.2)."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700  # storage failed: the sender should retry
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC210
    # PS3.7 C.4.2 / PS3.4 Annex B general failure: our fault, not the object's.
    PROCESSING_FAILURE = 0x0110
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    # PS3.4 Table B.2-1 leaves Cxxx ("Cannot understand") to the implementation: this one is
    # a UID already stored for another patient or SOP class (never a revision of it).
    UID_CONFLICT = 0xC220


@dataclass(frozen=True)
class Outcome:
    status: Status
    reason: str
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    size: int = 0
    created: bool = False
    # The image series the object belongs to (None for other objects): its association's
    # release publishes it.
    series_instance_uid: str | None = None


class WrongSopClass(Exception):
    pass


# What a reader raises on a decodable object whose values make no sense: pydicom's value
# conversions raise ValueError / TypeError, pydantic's ValidationError is a ValueError, and a
# reader may raise MalformedObject itself. Anything else (AttributeError, KeyError, NameError,
# ...) is a bug in rtops, which the device must not be told is its object's fault.
MALFORMED_DATA: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    BytesLengthException,
    MalformedObject,
)

# Same content serialises (from the revision lookup to the commit), so that a failed
# transaction can remove the file it placed without racing another ingest of that file.
LOCK_STRIPES = 64

__all__ = [
    "MALFORMED_DATA",
    "Ingestor",
    "Outcome",
    "Status",
    "Undecodable",
    "WrongSopClass",
    "read_header",
]


_objects = DicomObject.__table__
_SELECT_REVISIONS = select(
    _objects.c.revision, _objects.c.sha256, _objects.c.sop_class_uid, _objects.c.patient_id
).where(_objects.c.sop_instance_uid == bindparam("uid"))

# One statement writes an object's index row, counts it in its device's, class's and hour's
# arrivals and marks its image series changed (a new series row takes the facts given; an
# existing one keeps its first instance's): the view's INSTEAD OF trigger (migration 0007).
# An image's write is then one statement in its own transaction (``Ingestor`` gets an engine
# for them), and SQLite's write lock is never held while the thread waits for the GIL between
# statements: with ten associations, those waits made the write lock the queue every store
# stood in (docs/scp_performance.md). Text, built once: composing a statement per object costs more
# than executing it.
_ARRIVAL_COLUMNS = (
    "sop_instance_uid",
    "revision",
    "sop_class_uid",
    "sha256",
    "storage_key",
    "size",
    "transfer_syntax_uid",
    "study_instance_uid",
    "series_instance_uid",
    "patient_id",
    "calling_ae",
    "received_at",
    "acquired_at",
    "approval",
    "image_series_uid",
    "image_series_facts",
)
_INSERT_ARRIVAL = text(
    f"INSERT INTO object_arrival ({', '.join(_ARRIVAL_COLUMNS)}) "
    f"VALUES ({', '.join(':' + c for c in _ARRIVAL_COLUMNS)})"
).bindparams(
    bindparam("received_at", type_=UtcDateTime),
    bindparam("acquired_at", type_=UtcDateTime),
    bindparam("approval", type_=JSON),
)
# The routes whose objects queue no event: they write through the images' engine. An event is
# queued in the same transaction as its object's row.
_NO_EVENT = frozenset({"image", "store_only"})
# Keeps an index write for after the C-STORE's answer (after_answer.later, bound to its
# association).
Later = Callable[[Callable[[], None]], None]
_SERIES_SEEN = 1024  # a department's series of the last hours, in this process


# PS3.5 9.1: a UID is numeric components separated by dots, no component with a leading zero
# (except "0" itself), at most 64 characters.
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_UID_MAX = 64


def _check_identity(ds: Dataset, sop_class_uid: str, sop_instance_uid: str) -> str:
    """The dataset's SOP Instance UID, which is the object's identity."""
    uid = extract.text(ds, "SOPInstanceUID")
    if not uid:
        raise Undecodable("dataset has no SOP Instance UID")
    if len(uid) > _UID_MAX or not _UID.fullmatch(uid):
        shown = uid if len(uid) <= _UID_MAX else f"{uid[:_UID_MAX]}... ({len(uid)} characters)"
        raise Undecodable(
            f"SOP Instance UID {shown!r} is not a valid UID (PS3.5 9.1: at most 64 characters, "
            "digits in components separated by dots, no leading zeros)"
        )
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


class Ingestor:
    def __init__(
        self,
        *,
        factory: sessionmaker[Session],
        image_engine: Engine,
        store: ObjectStore,
        clinic_tz: str,
        on_commit: Callable[[], None] = lambda: None,
        max_sequence_depth: int = extract.MAX_SEQUENCE_DEPTH,
        locks: Sequence[AbstractContextManager[Any]] | None = None,
    ) -> None:
        """``image_engine``: ``shared.db.make_relaxed_engine`` of the same database, for the
        objects that queue no event (images): one statement each, committing on its own.
        ``locks``: one lock per content stripe (``LOCK_STRIPES`` of them); threading locks
        by default, enough for one process (content_locks.py has ones shared by processes)."""
        self._max_depth = max_sequence_depth
        self._factory = factory
        self._image_engine = image_engine
        self._store = store
        self._tz = clinic_tz
        self._on_commit = on_commit
        self._locks = list(locks) if locks else [threading.Lock() for _ in range(LOCK_STRIPES)]
        # Series this process stored instances of, each with the facts a new row of it takes
        # (its first instance's here).
        self._series_seen: OrderedDict[str, str] = OrderedDict()
        self._series_lock = threading.Lock()

    @property
    def store(self) -> ObjectStore:
        return self._store

    def ingest(
        self,
        path: Path,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        source: SourceDevice,
        content: tuple[str, int] | None = None,
        received_at: datetime | None = None,
        flushing: Flushing | None = None,
        later: Later | None = None,
    ) -> Outcome:
        """``content``: the file's SHA-256 and size when hashed as it arrived (else read).
        ``received_at``: when it arrived, if not now (an object the reconciliation restores).
        ``flushing``: ``store.flush_ahead(path, ...)``, if the caller started the file's
        flush (and, given the content's SHA-256, its name in ``.recent/``); a caller whose
        object is not stored then hands it to ``withdraw``. ``later``: where an object that
        queues no event (an image) may leave its index row, to be written after its answer
        (``after_answer``); without it the row is written before this returns."""
        crash_point("received")
        try:
            ds = read_header(path, self._max_depth)
            uid = _check_identity(ds, sop_class_uid, sop_instance_uid)
        except Undecodable as exc:
            return Outcome(Status.CANNOT_UNDERSTAND, str(exc), sop_class_uid, sop_instance_uid)
        except WrongSopClass as exc:
            return Outcome(
                Status.DATASET_DOES_NOT_MATCH_SOP_CLASS, str(exc), sop_class_uid, sop_instance_uid
            )
        try:
            sha, size = content or sha256_of(path)
            with self._lock_of(sha):
                return self._index(
                    ds,
                    path,
                    sha,
                    size,
                    uid,
                    sop_class_uid,
                    transfer_syntax_uid,
                    source,
                    received_at,
                    flushing,
                    later,
                )
        except (SQLAlchemyError, OSError) as exc:
            log.error(
                "storage failed; answering 0xA700 so the sender retries",
                sop_instance_uid=sop_instance_uid,
                error=str(exc),
            )
            return Outcome(
                Status.OUT_OF_RESOURCES, f"storage failed: {exc}", sop_class_uid, sop_instance_uid
            )
        except Exception as exc:
            return _internal_error(exc, sop_class_uid, sop_instance_uid)

    def _index(
        self,
        ds: Dataset,
        path: Path,
        sha: str,
        size: int,
        uid: str,
        sop_class_uid: str,
        transfer_syntax_uid: str,
        source: SourceDevice,
        received_at: datetime | None,
        flushing: Flushing | None,
        later: Later | None = None,
    ) -> Outcome:
        """Store and index one decoded object; the caller holds the lock of its content."""
        placed: str | None = None  # the key of a file this call put into the store
        answered_first = False  # its row is written after the answer (``later``)
        series_uid = (
            (extract.text(ds, "SeriesInstanceUID") or uid)
            if sop.STORAGE[sop_class_uid] == "image"
            else None
        )
        try:
            with self._connection(sop_class_uid) as (session, conn):
                revisions = conn.execute(_SELECT_REVISIONS, {"uid": uid}).all()
                if any(row.sha256 == sha for row in revisions):
                    # Still the release's to publish if its series has not been yet (a
                    # console re-sending a series after an aborted association).
                    return Outcome(
                        Status.SUCCESS,
                        "duplicate: already stored",
                        sop_class_uid,
                        uid,
                        size,
                        series_instance_uid=series_uid,
                    )
                patient_id = extract.text(ds, "PatientID")
                conflict = _uid_conflict(revisions, sop_class_uid, patient_id)
                if conflict:
                    log.warning(
                        f"C-STORE refused: SOP Instance UID {uid} is already stored {conflict}; "
                        "a UID names one object, so this is not kept as a revision of it",
                        sop_instance_uid=uid,
                    )
                    return Outcome(
                        Status.UID_CONFLICT,
                        f"this SOP Instance UID is already stored {conflict}",
                        sop_class_uid,
                        uid,
                    )
                revision = max((row.revision for row in revisions), default=0) + 1
                try:
                    # The one entry point the fuzz harness (tests/fuzz) runs too.
                    extracted = extract.extract_received(
                        ds,
                        _stored_object(ds, sop_class_uid, uid, sha, revision, transfer_syntax_uid),
                        source,
                        self._tz,
                    )
                    event, facts = extracted.event, extracted.facts
                except MALFORMED_DATA as exc:
                    log.warning(
                        "the object's attributes could not be read: answering 0xC210",
                        sop_instance_uid=uid,
                        error=f"{type(exc).__name__}: {exc}",
                    )
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
                key, created = self._store.put(
                    path, sha, sop_instance_uid=uid, calling_ae=source.ae_title, flushing=flushing
                )
                placed = key if created else None
                now = received_at or datetime.now(UTC)
                approval = facts.pop("approval", None) if facts else None
                row = {
                    "sop_instance_uid": uid,
                    "revision": revision,
                    "sop_class_uid": sop_class_uid,
                    "sha256": sha,
                    "storage_key": key,
                    "size": size,
                    "transfer_syntax_uid": transfer_syntax_uid,
                    "study_instance_uid": extract.text(ds, "StudyInstanceUID"),
                    "series_instance_uid": extract.text(ds, "SeriesInstanceUID"),
                    "patient_id": patient_id,
                    "calling_ae": source.ae_title,
                    "received_at": now,
                    "acquired_at": facts.get("acquired_at") if facts else None,
                    "approval": approval.model_dump(mode="json") if approval else None,
                    "image_series_uid": series_uid,  # an image's (else None)
                    "image_series_facts": (
                        self._series_facts(series_uid, ds, facts, source)
                        if series_uid is not None and facts is not None
                        else None
                    ),
                }
                if later is not None and session is None:  # no event: _connection
                    later(partial(self._write_answered, row))
                    answered_first = True
                else:
                    self._write(session, conn, row, event)
        except BaseException:
            # Nothing committed names the file this call placed: take it away again, so a
            # failure leaves nothing behind. A file that was already there stays (an earlier
            # revision or object may name it).
            if placed is not None:
                self._discard(placed, uid, source.ae_title)
            raise
        if not answered_first:
            crash_point("committed")
        if event is not None:
            # Images queue no event of their own (their series' event comes at release or
            # after the quiet window): waking the relay for each slice cost a query per slice.
            self._on_commit()
        return Outcome(
            Status.SUCCESS,
            "stored",
            sop_class_uid,
            uid,
            size,
            created=True,
            series_instance_uid=series_uid,
        )

    @contextmanager
    def _connection(self, sop_class_uid: str) -> Iterator[tuple[Session | None, Connection]]:
        """Where an object's index is written. The file is the durable record
        (``ObjectStore.put`` flushed it before the write), so no commit waits for its own
        flush. An object that queues no event (its class's route: sop.STORAGE) is written by
        one statement, its own transaction, on the images' engine; any other object's row and
        its event commit together, in a session's transaction. Core statements either way:
        the ORM's unit of work costs more per object than the fsyncs do."""
        if sop.STORAGE[sop_class_uid] in _NO_EVENT:
            with self._image_engine.connect() as conn:
                yield None, conn
            return
        with self._factory() as session, session.begin():
            conn = session.connection()
            relaxed_commit(conn)
            yield session, conn

    @staticmethod
    def _write(
        session: Session | None, conn: Connection, row: dict[str, Any], event: DicomEvent | None
    ) -> None:
        """The object's rows, and its event in the same transaction (a session's, which an
        object with an event always has: ``_connection``)."""
        conn.execute(_INSERT_ARRIVAL, row)
        if event is not None:
            assert session is not None
            emit(session, event, subject=row["sop_instance_uid"])

    def _write_answered(self, row: dict[str, Any]) -> None:
        """An image's row, after its success was answered (its ``.recent`` name keeps it
        until a reconciliation round has seen the row)."""
        crash_point("answered")
        try:
            with self._image_engine.connect() as conn:
                self._write(None, conn, row, None)
        except IntegrityError as exc:
            # A store of the same UID on another association wrote its row in between.
            log.warning(
                "index row not written: another store of this UID wrote one meanwhile; the "
                "reconciliation checks the object",
                sop_instance_uid=row["sop_instance_uid"],
                error=str(exc.orig),
            )

    def withdraw(self, flushing: Flushing, sha256: str) -> None:
        """After an ingest that did not store its object: no ``.recent`` name for it (under
        the content's lock, as a store of the same bytes takes it)."""
        with self._lock_of(sha256):
            self._store.withdraw(flushing, sha256)

    def _lock_of(self, sha256: str) -> AbstractContextManager[Any]:
        """The lock of the content stripe these bytes fall in."""
        return self._locks[int(sha256[:8], 16) % len(self._locks)]

    def _discard(self, key: str, uid: str, calling_ae: str) -> None:
        try:
            self._store.discard(key, sop_instance_uid=uid, calling_ae=calling_ae)
        except OSError as exc:  # the original failure is the one to report
            log.error("could not remove the file of a failed store", key=key, error=str(exc))

    # ------------------------------------------------------------ reconciliation

    def indexed(self, recent: Collection[Recent]) -> set[str]:
        """The storage keys of these ``.recent`` objects that the index names."""
        pairs = sorted({(r.sop_instance_uid, r.sha256) for r in recent})
        present: set[str] = set()
        with self._factory() as session:
            conn = session.connection()
            for start in range(0, len(pairs), 400):  # bound the statement's parameters
                chunk = pairs[start : start + 400]
                rows = conn.execute(
                    select(_objects.c.sha256).where(
                        _objects.c.sop_instance_uid.in_({uid for uid, _ in chunk}),
                        tuple_(_objects.c.sop_instance_uid, _objects.c.sha256).in_(chunk),
                    )
                )
                present.update(ObjectStore.key_for(sha) for (sha,) in rows)
        return present

    def confirm(self, objects: int) -> None:
        """Flush the index: a commit that waits for its flush, after which every earlier
        commit is durable too (the rows ``indexed`` saw, the ``objects`` a round confirms).
        It only writes the durability mark: the index is not read again while this holds
        the write lock (on SQLite every store's commit waits for it)."""
        with self._factory() as session, session.begin():
            conn = session.connection()
            durable_commit(conn)
            self._mark(conn, objects)

    @staticmethod
    def _mark(conn: Any, confirmed: int) -> None:
        """Rewrite the durability mark: something to flush, so that the commit syncs the log
        up to here, and a record of when that last happened."""
        mark = DurabilityMark.__table__
        now = datetime.now(UTC)
        updated = conn.execute(
            update(mark)
            .where(mark.c.id == 1)
            .values(confirmed_at=now, confirmed_objects=mark.c.confirmed_objects + confirmed)
        )
        if updated.rowcount == 0:
            conn.execute(insert(mark).values(id=1, confirmed_at=now, confirmed_objects=confirmed))

    def restore(self, recent: Recent, source: SourceDevice) -> Outcome:
        """Index a stored file the index lacks, through the C-STORE path (same checks, same
        revision rule, same event and event id), as if it arrived when its file was written.
        Already indexed meanwhile: the C-STORE path's duplicate answer."""
        content = sha256_of(recent.path)
        if content[0] != recent.sha256:
            # Named before its bytes were flushed (``ObjectStore.flush_ahead``) and cut by a
            # power cut before both flushes ended: never answered success.
            return Outcome(
                Status.CANNOT_UNDERSTAND,
                "its content does not hash to its name: a store a power cut ended before "
                "it was answered",
                sop_instance_uid=recent.sop_instance_uid,
            )
        meta = read_file_meta_info(recent.path)
        return self.ingest(
            recent.path,
            sop_class_uid=str(meta.MediaStorageSOPClassUID),
            sop_instance_uid=str(meta.MediaStorageSOPInstanceUID),
            transfer_syntax_uid=str(meta.TransferSyntaxUID),
            source=source,
            content=content,
            received_at=recent.modified,
        )

    def _series_facts(
        self, series_uid: str, ds: Dataset, facts: dict[str, Any], source: SourceDevice
    ) -> str:
        """The facts a new row of this series takes: its first instance's in this process,
        kept serialized (a series' 200 slices would otherwise build and encode them 200 times
        for the one row that keeps them)."""
        with self._series_lock:
            known = self._series_seen.get(series_uid)
            if known is not None:
                self._series_seen.move_to_end(series_uid)
                return known
        first = {k: v for k, v in facts.items() if k != "acquired_at"}
        first["patient"] = extract.patient(ds).model_dump(mode="json")
        first["source"] = source.model_dump(mode="json")
        encoded = json.dumps(_jsonable(first))
        with self._series_lock:
            self._series_seen[series_uid] = encoded
            if len(self._series_seen) > _SERIES_SEEN:
                self._series_seen.popitem(last=False)
        return encoded

    # ------------------------------------------------------------ image series

    def publish_quiet_series(self, *, now: datetime, quiet: timedelta) -> int:
        """Queue an imaging event for every changed series quiet since ``now - quiet``: the
        fallback for a series spread over associations (or one whose association aborted)."""
        return self._publish_series(ImageSeries.last_received_at <= now - quiet, limit=500)

    def publish_series(self, series_uids: Collection[str]) -> int:
        """Queue an imaging event for each of these series that changed since it was last
        published: what an association's release does for the series it touched, so a CBCT
        sent over one association is visible without waiting for the quiet window."""
        if not series_uids:
            return 0
        return self._publish_series(ImageSeries.series_instance_uid.in_(sorted(series_uids)))

    def _publish_series(self, where: Any, *, limit: int | None = None) -> int:
        published = 0
        with self._factory() as session, session.begin():
            series = session.scalars(
                select(ImageSeries).where(ImageSeries.dirty.is_(True), where).limit(limit)
            ).all()
            for row in series:
                event = self._imaging_event(session, row)
                # Claim before emitting: a release and the sweep (or two releases) publishing
                # the same series at once serialise on this row, and the second finds it
                # clean, so each change is published once. A later instance moved
                # last_received_at: the row stays dirty and its next publication counts it.
                claimed = session.execute(
                    update(ImageSeries)
                    .where(
                        ImageSeries.series_instance_uid == row.series_instance_uid,
                        ImageSeries.last_received_at == row.last_received_at,
                        ImageSeries.dirty.is_(True),
                    )
                    .values(dirty=False, published_count=event.instance_count)
                )
                if claimed.rowcount != 1:  # type: ignore[attr-defined]
                    continue
                emit(session, event, subject=row.series_instance_uid)
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


def _stored_object(
    ds: Dataset,
    sop_class_uid: str,
    uid: str,
    sha: str,
    revision: int,
    transfer_syntax_uid: str,
) -> StoredObject:
    return StoredObject(
        sop_class_uid=sop_class_uid,
        sop_instance_uid=uid,
        study_instance_uid=extract.text(ds, "StudyInstanceUID"),
        series_instance_uid=extract.text(ds, "SeriesInstanceUID"),
        storage_key=ObjectStore.key_for(sha),
        revision=revision,
        sha256=sha,
        transfer_syntax_uid=transfer_syntax_uid,
    )


def _uid_conflict(revisions: Any, sop_class_uid: str, patient_id: str | None) -> str | None:
    """Why the stored revisions of a UID are another object than this one (None: they are
    the same object). A re-used or forged UID must not chain a second patient's plan to the
    first one's, nor publish it as that plan's new revision."""
    for row in revisions:
        if row.sop_class_uid != sop_class_uid:
            other = sop.NAMES.get(row.sop_class_uid, row.sop_class_uid)
            return f"as another SOP class ({other})"
        if row.patient_id != patient_id:
            return "for another patient"
    return None


def _internal_error(exc: Exception, sop_class_uid: str, sop_instance_uid: str) -> Outcome:
    """A bug in rtops, not a fault of the object: 0x0110 Processing failure, logged with its
    traceback, so that the device does not report the object as malformed."""
    log.exception(
        "internal error while storing an object: answering 0x0110",
        sop_instance_uid=sop_instance_uid,
    )
    return Outcome(
        Status.PROCESSING_FAILURE,
        f"internal error: {type(exc).__name__}: {exc}",
        sop_class_uid,
        sop_instance_uid,
    )


def _jsonable(facts: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in facts.items()}
