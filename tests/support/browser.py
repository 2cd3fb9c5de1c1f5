"""A real headless browser for the dashboard's tests: Debian's chromium driven by
Playwright for Python (``executable_path``; a browser is never downloaded).

Without chromium or Playwright the browser tests skip, saying why; with
``HAKURIVER_REQUIRE_BROWSER=1`` (CI) they fail instead. Screenshots go to
``$HAKURIVER_ARTIFACTS/screenshots`` (default: ``test-artifacts/screenshots`` in the
repository, ignored by git); ``docs/dashboard/`` holds the ones the docs show.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    given = os.environ.get("HAKURIVER_CHROMIUM")
    if given:
        return given
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_browser() -> str:
    """The chromium executable, or a skip (a failure under HAKURIVER_REQUIRE_BROWSER=1)."""
    problem = None
    path = chromium_path()
    if path is None:
        problem = "no chromium on PATH (Debian: apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "Playwright for Python is not installed (make .venv/.installed)"
    if problem is not None:
        if os.environ.get("HAKURIVER_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser tests are mandatory here: {problem}")
        pytest.skip(f"browser tests need a browser: {problem}")
    assert path is not None
    return path


def artifacts() -> Path:
    root = Path(os.environ.get("HAKURIVER_ARTIFACTS", REPO / "test-artifacts"))
    folder = root / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def browser_context(**options: Any) -> Iterator[Any]:
    """A fresh browser context (its own cookies) in a headless chromium."""
    from playwright.sync_api import sync_playwright

    executable = require_browser()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            context = browser.new_context(
                viewport=options.pop("viewport", {"width": 1280, "height": 860}),
                timezone_id=options.pop("timezone_id", "Europe/Berlin"),
                **options,
            )
            context.set_default_timeout(15_000)
            try:
                yield context
            finally:
                context.close()
        finally:
            browser.close()


class PageErrors:
    """The page's uncaught errors and console errors (a test asserts there are none)."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on(
            "console",
            lambda msg: self.errors.append(f"console: {msg.text}") if msg.type == "error" else None,
        )

    def real(self) -> list[str]:
        # A refused request shows as a console error in chromium; the tests that make one
        # on purpose read it from the answer instead.
        return [e for e in self.errors if "Failed to load resource" not in e]


def login(page: Any, base_url: str, token: str, path: str = "/") -> None:
    """Log the page in with ``token`` through the login form, then open ``path``."""
    page.goto(f"{base_url}/login?next={path}")
    page.get_by_label("Your API token").fill(token)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_function("() => window.HR && HR.me && HR.route.page !== 'login'")


def screenshot(page: Any, name: str, *, full_page: bool = True) -> Path:
    """Save a screenshot of the page as a test artifact; its path."""
    path = artifacts() / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path
