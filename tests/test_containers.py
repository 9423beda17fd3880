"""The same migrations on a throwaway PostgreSQL from testcontainers, where Docker runs (CI and
development machines without Docker skip this; they test PostgreSQL through
RTOPS_DATABASE_URL instead)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from shared.db import make_engine
from shared.settings import RtopsSettings
from tests.test_migrations import MODELS, assert_migrates_to_the_models


def _docker_runs() -> bool:
    docker = shutil.which("docker")
    if not docker:
        return False
    probe = subprocess.run([docker, "info"], capture_output=True, check=False, timeout=20)
    return probe.returncode == 0


pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(not _docker_runs(), reason="no Docker engine runs here"),
]


@pytest.mark.parametrize("service", sorted(MODELS))
def test_migrations_on_a_container_postgres(tmp_path: Path, service: str) -> None:
    from testcontainers.community.postgres import PostgresContainer

    with PostgresContainer("postgres:16-alpine", driver="psycopg") as pg:
        settings = RtopsSettings(var_dir=tmp_path, database_url=pg.get_connection_url())
        engine = make_engine(settings, service)
        try:
            assert_migrates_to_the_models(engine, settings, service)
        finally:
            engine.dispose()
