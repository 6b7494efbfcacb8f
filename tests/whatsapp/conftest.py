"""A neonize provider on the real library, offline, for the tests that dial through a loopback proxy."""

from __future__ import annotations

import concurrent.futures

import pytest

from tests.whatsapp.go_stress import offline_provider
from whatsapp.providers.gocalls import GoCalls


@pytest.fixture
def provider(tmp_path):
    """Its store under tmp_path; no shard: the tests call its clients directly."""
    provider = offline_provider(tmp_path, GoCalls())
    provider._executor = concurrent.futures.ThreadPoolExecutor(4)
    yield provider
    provider._executor.shutdown(wait=False)
