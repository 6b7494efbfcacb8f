"""The fake Gemini server for the reply tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bots import gemini
from tests.fake_gemini import FakeGemini


@pytest.fixture
def fake_gemini(settings, monkeypatch) -> Iterator[FakeGemini]:
    """Gemini for this test: the real SDK talks to a local server; retries are quick."""
    monkeypatch.setattr(gemini, "RETRY_INITIAL_DELAY", 0.01)
    monkeypatch.setattr(gemini, "RETRY_MAX_DELAY", 0.05)
    monkeypatch.setattr(gemini, "RETRY_JITTER", 0.0)
    with FakeGemini(api_key=settings.GEMINI_API_KEY) as fake:
        settings.GEMINI_BASE_URL = fake.url
        yield fake
