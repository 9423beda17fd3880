"""SQLAlchemy 2 engines and sessions, and Alembic migrations run from code.

Every service owns its database: a SQLite file ``var/<service>.db`` by default, or its own
schema (named after the service) inside the PostgreSQL database of ``RTOPS_DATABASE_URL``.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Connection,
    DateTime,
    Dialect,
    Engine,
    MetaData,
    TypeDecorator,
    create_engine,
    event,
    make_url,
    text,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from shared.settings import RtopsSettings

if TYPE_CHECKING:
    from alembic.config import Config

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


SQLITE_CACHE_KIB = 64 * 1024  # page cache per connection (PRAGMA cache_size; default 2 MB)
SQLITE_MMAP_BYTES = 1 << 30  # memory-mapped part of the file (PRAGMA mmap_size; default 0)
_RELAXED = "rtops.relaxed_commit"  # connection info: synchronous=NORMAL until checked in


def new_metadata() -> MetaData:
    return MetaData(naming_convention=NAMING_CONVENTION)


def database_url(settings: RtopsSettings, service: str) -> str:
    if settings.database_url:
        return settings.database_url
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(settings.var_dir / f'{service}.db').resolve()}"


def schema_name(settings: RtopsSettings, service: str) -> str:
    name = settings.database_schema_prefix + service
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"database schema {name!r} must be lower-case letters, digits and _")
    return name


def make_engine(
    settings: RtopsSettings, service: str, *, relaxed: bool = False, **kwargs: Any
) -> Engine:
    """``relaxed``: every commit of this engine's connections is a ``relaxed_commit`` (for an
    engine that only writes facts rebuilt from something durable; see ``make_relaxed_engine``)."""
    url = database_url(settings, service)
    if url.startswith("sqlite"):
        _private_file(make_url(url).database)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            # WAL lets readers run during a write; FULL makes every commit durable (the SCP's
            # ingest relaxes it per transaction, relaxed_commit, or for a relaxed engine's
            # connections).
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={'NORMAL' if relaxed else 'FULL'}")
            cur.execute("PRAGMA foreign_keys=ON")
            # The default page cache is 2 MB. Keys such as event ids and DICOM UIDs are
            # random, so every batch inserts into leaves all over its indexes; once those
            # outgrow the cache, each insert reads its page back with a system call and the
            # cost per event rises with the size of the database (measured on the QA
            # tracker: 8 reads per event after a month, 15 after two). Memory-mapping the
            # file serves those reads from the OS page cache without a system call or a copy,
            # and a larger cache keeps the interior pages and the transaction's dirty pages.
            # Both are upper bounds: a small database uses no more than its size.
            cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
            cur.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
            cur.close()

        @event.listens_for(engine, "checkin")
        def _full_again(dbapi_conn: Any, record: Any) -> None:
            # relaxed_commit's NORMAL is the connection's: set FULL back before any other
            # transaction (the outbox relay's, an audit row's) gets this connection.
            if record is not None and record.info.pop(_RELAXED, False):
                with contextlib.suppress(Exception):  # a broken connection is discarded anyway
                    dbapi_conn.execute("PRAGMA synchronous=FULL")

        return engine
    schema = schema_name(settings, service)
    return create_engine(
        url,
        pool_pre_ping=True,
        connect_args={
            "options": f"-csearch_path={schema}" + (" -csynchronous_commit=off" if relaxed else "")
        },
        **kwargs,
    )


def relaxed_commit(conn: Connection) -> None:
    """This transaction's commit does not wait for its own flush to disk: a crash of the
    process loses nothing committed, a power cut (or a PostgreSQL crash) can lose the last
    commits. Only for a transaction whose facts can be rebuilt from something that was made
    durable (the SCP's index, from its object files: docs/scp_durability.md).

    SQLite: ``synchronous=NORMAL`` in WAL mode syncs the WAL at checkpoints, not at each
    commit (https://sqlite.org/pragma.html#pragma_synchronous); it is a setting of the
    connection, set back to FULL when the connection returns to the pool. PostgreSQL:
    ``synchronous_commit = off`` for this transaction only (``SET LOCAL``; the WAL writer
    flushes within 3 x wal_writer_delay)."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("PRAGMA synchronous=NORMAL")
        conn.info[_RELAXED] = True  # FULL again when the connection goes back to the pool
    elif conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL synchronous_commit = off")


def make_relaxed_engine(settings: RtopsSettings, service: str) -> Engine:
    """An engine for one-statement writes whose facts can be rebuilt from something already
    durable (``relaxed_commit``'s rule, for every statement): each statement commits on its
    own, and no commit waits for its flush: ``synchronous=NORMAL`` (SQLite) or
    ``synchronous_commit=off`` (PostgreSQL) for the connection's life. Nothing is switched
    per transaction: with ``relaxed_commit`` on a shared pool, the switch there and back and
    the isolation level's reset took about as long as the SCP's image write itself. A
    ``durable_commit`` on any connection of the same database flushes these commits too."""
    return make_engine(settings, service, relaxed=True, isolation_level="AUTOCOMMIT")


def durable_commit(conn: Connection) -> None:
    """This transaction's commit waits for its flush, and with it every earlier commit's
    (SQLite appends commits to one WAL and syncs it whole; PostgreSQL flushes its WAL up to
    this commit's record): the barrier after ``relaxed_commit``s. The transaction must write
    something, or there is nothing to flush."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("PRAGMA synchronous=FULL")
    elif conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL synchronous_commit = on")


def _private_file(database: str | None) -> None:
    """Create a SQLite file 0600 (and tighten one created before): every service's database
    holds patient names. SQLite creates its -wal and -shm files with the database's mode."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    os.chmod(path, 0o600)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{path}{suffix}", 0o600)


def session_factory(engine: Engine, **info: Any) -> sessionmaker[Session]:
    """Sessions of one service's database; ``info`` (e.g. the outbox table and the event
    source that ``shared.outbox.emit`` reads) is copied into every session's ``info``."""
    return sessionmaker(engine, expire_on_commit=False, info=info or None)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit once at the end, roll back on any error."""
    with factory() as session, session.begin():
        yield session


# PostgreSQL ends one of two transactions that wait on each other (SQLSTATE 40P01, deadlock
# detected) or that cannot both be serialized (40001); the other goes on, and the one ended
# may simply run again (PostgreSQL docs, Appendix A, class 40 "Transaction Rollback").
_ROLLED_BACK_FOR_ANOTHER = frozenset({"40001", "40P01"})


def lost_to_a_concurrent_transaction(exc: DBAPIError) -> bool:
    """Whether the database rolled this transaction back so that a concurrent one could go
    on: running it again is safe (a deadlock between two bookings inserting claims that
    conflict with each other's, for example)."""
    return getattr(exc.orig, "sqlstate", None) in _ROLLED_BACK_FOR_ANOTHER


def ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def ensure_schema(engine: Engine, settings: RtopsSettings, service: str) -> None:
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema_name(settings, service)}"'))


def drop_schema(engine: Engine, settings: RtopsSettings, service: str) -> None:
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema_name(settings, service)}" CASCADE'))


def alembic_config(migrations_dir: Path, engine: Engine) -> Config:
    # Alembic (and Mako) cost ~11 MB of RSS: imported only where migrations run.
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir))
    cfg.attributes["engine"] = engine
    return cfg


def migrate(
    engine: Engine,
    settings: RtopsSettings,
    service: str,
    migrations_dir: Path,
    revision: str = "head",
) -> None:
    """Bring the service's database to ``revision`` (idempotent; safe on every start)."""
    from alembic import command

    ensure_schema(engine, settings, service)
    command.upgrade(alembic_config(migrations_dir, engine), revision)


def run_alembic_env(target_metadata: MetaData) -> None:
    """Body of every service's ``migrations/env.py``: online migrations on the given engine."""
    from alembic import context

    engine: Engine = context.config.attributes["engine"]
    with engine.begin() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()


def as_utc(value: datetime) -> datetime:
    """A timestamp read back from the database, timezone-aware: SQLite returns timezone-aware
    columns naive, and rtops stores every timestamp in UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and read back timezone-aware on every backend. SQLite keeps
    no offset: without this, an aware local time would be stored as its wall time and read
    back as UTC, hours off."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: rtops stores aware timestamps only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)
