"""Browser tests: Playwright for Python driving Debian's Chromium (README, Tests), no browser download.

They need /usr/bin/chromium (`apt-get install chromium`) and Playwright (requirements-dev.txt).
Without them the tests skip with the reason, except in CI (CI=true), where a missing browser is a failure.
Each step's screenshot lands in test-artifacts/screenshots/<run id>/<test>/.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from django.db import connections

from tests.processes import ROOT

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
RUN_ID = os.environ.get("TEST_RUN_ID") or time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots" / RUN_ID


def missing_browser() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"Chromium is not installed at {CHROMIUM}: apt-get install chromium (see README)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed: pip install -r requirements-dev.txt"
    return None


@pytest.fixture
def browser(monkeypatch):
    reason = missing_browser()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}. CI runs the browser tests: .ci/run installs Chromium.")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    # Sync Playwright runs an event loop in this thread; the test's own ORM calls are still plain sync code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
        # The test's ORM calls ran while Playwright's loop was current, on connections of their own:
        # close them, or the test database cannot be dropped at the end of the run.
        connections.close_all()


@pytest.fixture
def shot(request) -> Callable:
    """shot(page, "name") saves a numbered screenshot of the page (or shot(locator, "name") of an element)."""
    folder = SCREENSHOTS / re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)
    count = iter(range(1, 100))

    def take(target, name: str, **options) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{next(count):02d}-{name}.png"
        target.screenshot(path=str(path), **options)
        return path

    return take
