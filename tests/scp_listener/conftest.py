from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support import RunningScp, drop_test_schema, scp_settings


@pytest.fixture
def start_scp(base_settings: dict[str, object]) -> Iterator[Callable[..., RunningScp]]:
    """Start the real SCP app with settings overrides; stopped and cleaned up after the test."""
    running: list[RunningScp] = []

    def start(**overrides: object) -> RunningScp:
        scp = RunningScp(scp_settings(base_settings, **overrides))
        running.append(scp)
        return scp

    yield start
    for scp in running:
        scp.stop()
    for scp in running[:1]:
        drop_test_schema(scp.settings)


@pytest.fixture
def scp(start_scp: Callable[..., RunningScp]) -> RunningScp:
    return start_scp()
