"""Browser tests: a real Chromium, driven through Playwright, against pytest-django's live server.

Every test in this folder is marked ``browser`` (``make test-fast`` leaves them out) and is skipped
when no Chromium is installed (``make browser-deps`` installs Debian's). Playwright drives the
system Chromium; it never downloads a browser.

Static files: pytest-django's live server wraps the site in Django's ``StaticFilesHandler``, which
serves ``/static/`` from the finders whatever ``DEBUG`` says, so pages get their CSS and JS
without ``collectstatic``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Playwright's sync API keeps an event loop running in this thread, and Django refuses ORM calls
# from a thread with a running loop. The test code itself is synchronous, so the check is moot.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

HERE = Path(__file__).resolve().parent
CHROMIUM = next(
    (path for path in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser"))
     if path and Path(path).is_file()),
    None,
)
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
]
TIMEOUT_MS = 15_000


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def browser():
    if CHROMIUM is None:
        pytest.skip("no Chromium installed (make browser-deps)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A fresh page in its own context: no cookies or storage shared between tests."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture
def login():
    """``login(page, live_server, username, password)`` signs in through the login page."""

    def login(page, live_server, username: str, password: str) -> None:
        page.goto(f"{live_server.url}/login/")
        page.fill("#id_username", username)
        page.fill("#id_password", password)
        with page.expect_navigation():
            page.click("form[action='/login/'] button[type=submit]")
        if page.url.rstrip("/").endswith("/login"):
            raise AssertionError(f"logging in as {username!r} failed")

    return login
