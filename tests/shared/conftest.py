"""Fixtures of the shared library's tests: settings, a NATS connection and the test's stream."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from shared.jetstream import ensure_stream
from shared.settings import RtopsSettings


@pytest.fixture
def settings(base_settings: dict[str, Any]) -> RtopsSettings:
    return RtopsSettings(**base_settings)


@pytest.fixture
async def nc(settings: RtopsSettings) -> AsyncIterator[NATS]:
    """A plain connection for publishing and inspecting; deletes the test's stream after."""
    client = await nats.connect(settings.resolved_nats_url())
    yield client
    with contextlib.suppress(NotFoundError):
        await client.jetstream().delete_stream(settings.stream_name)
    await client.close()


@pytest.fixture
async def js(nc: NATS, settings: RtopsSettings) -> JetStreamContext:
    js = nc.jetstream()
    await ensure_stream(js, settings)
    return js
