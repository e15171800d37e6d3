"""Shared fixtures and the hypothesis profile for the tests."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

from netstorm import Job

settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")


@pytest.fixture
def job() -> Job:
    return Job(buckets=100_000_000, chunk_bytes=4_000_000)
