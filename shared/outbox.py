"""Transactional outbox (publish side) and processed-event inbox (consume side).

A service writes its state change and the outbox row in one transaction; the relay publishes
rows in order with ``Nats-Msg-Id`` = event id and marks them sent after JetStream's ack. A crash
between publish and mark re-publishes the same id, which JetStream's duplicate window drops and
the consumers' inbox ignores beyond it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import (
    Integer,
    LargeBinary,
    String,
    Table,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from shared.db import UtcDateTime
from shared.events import CloudEvent, EventPayload, envelope

log = structlog.get_logger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


class OutboxMixin:
    """Mix into a service's declarative base: ``class Outbox(OutboxMixin, Base)``."""

    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    subject: Mapped[str] = mapped_column(String(200))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)


class ProcessedEventMixin:
    """Mix into a service's base: ``class ProcessedEvent(ProcessedEventMixin, Base)``."""

    __tablename__ = "processed_event"
    consumer: Mapped[str] = mapped_column(String(100), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    processed_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


def add_to_outbox(session: Session, model: type[OutboxMixin], event: CloudEvent) -> bool:
    """Queue an event in the caller's transaction; False if that event id is already queued."""
    return _insert_ignore(session, model.__table__, _row(event, utcnow()))  # type: ignore[attr-defined]


def _row(event: CloudEvent, now: datetime) -> dict[str, object]:
    return {
        "event_id": event.id,
        "subject": event.nats_subject,
        "body": event.to_json(),
        "created_at": now,
        "attempts": 0,
    }


OUTBOX_INFO = "rtops.outbox"
SOURCE_INFO = "rtops.event_source"


def emit(
    session: Session,
    payload: EventPayload,
    *,
    subject: str | None = None,
    time: datetime | None = None,
) -> bool:
    """Queue ``payload`` as an event in the caller's transaction; False if that event id is
    already queued. The outbox table and the event source (``rtops/<service>``) come from the
    session, as set by the service's ``shared.runtime.Runtime`` (``session_factory(engine,
    **outbox_info(Outbox, service))``)."""
    model, source = _outbox_of(session)
    return add_to_outbox(
        session, model, envelope(payload, source=source, subject=subject, time=time)
    )


def emit_many(session: Session, items: Sequence[tuple[EventPayload, str | None]]) -> None:
    """``emit`` for many (payload, subject) pairs in one executemany: a rebuild of a busy day
    queues thousands of events, and one INSERT each would cost a third of it. An id already
    queued (a replayed batch) is skipped, as ``emit`` skips it."""
    if not items:
        return
    model, source = _outbox_of(session)
    now = utcnow()
    rows = [
        _row(envelope(payload, source=source, subject=subject, time=now), now)
        for payload, subject in items
    ]
    table = model.__table__  # type: ignore[attr-defined]
    session.execute(_insert(session)(table).on_conflict_do_nothing(), rows)


def _outbox_of(session: Session) -> tuple[type[OutboxMixin], str]:
    try:
        return session.info[OUTBOX_INFO], session.info[SOURCE_INFO]
    except KeyError as exc:
        raise RuntimeError(
            "this session has no outbox: build its factory with session_factory(engine, "
            "**outbox_info(Outbox, service))"
        ) from exc


def outbox_info(model: type[OutboxMixin], service: str) -> dict[str, Any]:
    """The ``session_factory`` info that lets ``emit`` find the service's outbox."""
    return {OUTBOX_INFO: model, SOURCE_INFO: f"rtops/{service}"}


def claim_event(
    session: Session, model: type[ProcessedEventMixin], consumer: str, event_id: str
) -> bool:
    """Record that ``consumer`` handled ``event_id`` in the caller's transaction.

    False means it was handled before: do nothing and ack.
    """
    return bool(claim_events(session, model, consumer, [event_id]))


def claim_events(
    session: Session, model: type[ProcessedEventMixin], consumer: str, event_ids: Sequence[str]
) -> set[str]:
    """``claim_event`` for a batch: the ids not handled before."""
    table = model.__table__  # type: ignore[attr-defined]
    now = utcnow()
    rows = [
        {"consumer": consumer, "event_id": event_id, "processed_at": now}
        for event_id in dict.fromkeys(event_ids)
    ]
    if not rows:
        return set()
    stmt = _insert(session)(table).on_conflict_do_nothing().returning(table.c.event_id)
    # A list of rows runs as batched multi-row INSERTs ("insertmanyvalues") with one
    # cached statement; RETURNING names only the rows inserted.
    return set(session.scalars(stmt, rows))


def _insert(session: Session) -> Callable[[Table], Any]:
    dialect = session.get_bind().dialect.name
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


def _insert_ignore(session: Session, table: Table, values: dict[str, object]) -> bool:
    # psycopg reports rowcount -1 for these inserts; a skipped row returns no key instead.
    stmt = (
        _insert(session)(table)
        .values(**values)
        .on_conflict_do_nothing()
        .returning(*table.primary_key.columns)
    )
    return session.execute(stmt).first() is not None


# Handlers are idempotent on their own (facts are upserted by UID and revision), so the inbox
# only has to outlast redelivery and JetStream's duplicate window; kept far longer than both,
# it stops growing with the history (it was the largest random-key index the QA tracker wrote).
INBOX_KEEP = timedelta(days=30)


def prune_inbox(
    factory: sessionmaker[Session],
    model: type[ProcessedEventMixin],
    *,
    keep: timedelta = INBOX_KEEP,
    now: datetime | None = None,
) -> int:
    """Forget handled event ids older than ``keep``; returns how many."""
    cutoff = (now or utcnow()) - keep
    with factory.begin() as session:
        result = session.execute(delete(model).where(model.processed_at < cutoff))
    return int(getattr(result, "rowcount", 0) or 0)


def outbox_depth(factory: sessionmaker[Session], model: type[OutboxMixin]) -> int:
    with factory() as session:
        return (
            session.scalar(select(func.count()).select_from(model).where(model.sent_at.is_(None)))
            or 0
        )


Publish = Callable[[str, bytes, str], Awaitable[object]]


class OutboxRelay:
    """Publishes unsent outbox rows, oldest first, and marks each sent after its ack."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        model: type[OutboxMixin],
        publish: Publish,
        *,
        batch: int = 200,
        idle_poll_s: float = 1.0,
        retry_delay_s: float = 2.0,
        keep_sent: timedelta = timedelta(days=7),
    ) -> None:
        self._factory = factory
        self._model = model
        self._publish = publish
        self._batch = batch
        self._idle_poll_s = idle_poll_s
        self._retry_delay_s = retry_delay_s
        self._keep_sent = keep_sent
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def wake(self) -> None:
        """Thread-safe nudge after a commit, so events leave without waiting for the poll."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        while True:
            # Clear before draining: a wake() during the drain then triggers another drain.
            self._wake.clear()
            try:
                sent = await self.drain_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker or database down: keep rows, retry later
                log.warning("outbox publish failed; will retry", error=str(exc))
                await asyncio.sleep(self._retry_delay_s)
                continue
            if sent == 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), self._idle_poll_s)
                except TimeoutError:
                    await self._prune_quietly()

    async def _prune_quietly(self) -> None:
        try:
            await asyncio.to_thread(self._prune)
        except Exception as exc:  # pruning is housekeeping: never stop publishing for it
            log.warning("outbox prune failed", error=str(exc))

    async def drain_once(self) -> int:
        rows = await asyncio.to_thread(self._pending)
        for row_id, event_id, subject, body in rows:
            try:
                await self._publish(subject, body, event_id)
            except Exception:
                await asyncio.to_thread(self._count_attempt, row_id)
                raise
            await asyncio.to_thread(self._mark_sent, row_id)
        return len(rows)

    def _pending(self) -> list[tuple[int, str, str, bytes]]:
        m = self._model
        with self._factory() as session:
            rows = session.execute(
                select(m.id, m.event_id, m.subject, m.body)
                .where(m.sent_at.is_(None))
                .order_by(m.id)
                .limit(self._batch)
            ).all()
        return [tuple(r) for r in rows]  # type: ignore[misc]

    def _mark_sent(self, row_id: int) -> None:
        with self._factory.begin() as session:
            session.execute(
                update(self._model).where(self._model.id == row_id).values(sent_at=utcnow())
            )

    def _count_attempt(self, row_id: int) -> None:
        with self._factory.begin() as session:
            session.execute(
                update(self._model)
                .where(self._model.id == row_id)
                .values(attempts=self._model.attempts + 1)
            )

    def _prune(self) -> None:
        with self._factory.begin() as session:
            session.execute(
                delete(self._model).where(
                    self._model.sent_at.is_not(None),
                    self._model.sent_at < utcnow() - self._keep_sent,
                )
            )
