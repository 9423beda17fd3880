"""Issue 15: every service's SQLite files (database, -wal, -shm) hold patient names and are
created 0600, like the signing key and the objects."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from sqlalchemy import text

from services.scp_listener.settings import ScpSettings
from shared.db import make_engine
from tests.support import RunningScp

pytestmark = pytest.mark.skipif(
    (os.environ.get("RTOPS_DATABASE_URL") or "sqlite").split(":")[0] != "sqlite",
    reason="SQLite files only",
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_sqlite_files_are_created_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual umask, which gave 0644
    try:
        settings = ScpSettings(var_dir=tmp_path / "var", database_url=None)
        engine = make_engine(settings, "any_service")
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (name TEXT)"))
            conn.execute(text("INSERT INTO t VALUES ('Doe^Jane')"))
        db = tmp_path / "var" / "any_service.db"
        files = [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
        assert all(p.exists() for p in files)
        assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
        engine.dispose()
    finally:
        os.umask(old)


def test_an_existing_0644_database_is_tightened(tmp_path: Path) -> None:
    db = tmp_path / "var" / "any_service.db"
    db.parent.mkdir()
    db.touch(mode=0o644)
    os.chmod(db, 0o644)
    make_engine(ScpSettings(var_dir=tmp_path / "var", database_url=None), "any_service").dispose()
    assert mode(db) == 0o600


def test_the_scp_database_is_0600(scp: RunningScp) -> None:
    assert mode(scp.settings.var_dir / "scp_listener.db") == 0o600
