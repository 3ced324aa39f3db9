"""Headless Chromium for the browser tests: Debian's package, driven by Playwright's async API.

Playwright's own browser downloads are never used (there is no network for them): the tests
launch /usr/bin/chromium (or TRADINGRT_CHROMIUM). Without it they skip with instructions,
except in CI (CI=true or TRADINGRT_REQUIRE_SERVICES=1), where they fail.

Accessibility is checked with axe-core, vendored under tests/vendor/axe-core/ (never served).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "var" / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 900}
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}  # an iPhone 12-15's CSS pixels
AXE_JS = Path(__file__).resolve().parent / "vendor" / "axe-core" / "axe.min.js"
# WCAG 2.1 A and AA, and axe's best practices (landmarks, headings, scrollable regions).
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]
INSTALL_HINT = (
    "install Debian's Chromium (apt-get install -y chromium) and the dev extras "
    "(.venv/bin/pip install -e '.[dev]'), or set TRADINGRT_CHROMIUM to a Chromium binary; "
    "never `playwright install`"
)


def browser_required() -> bool:
    """In CI a missing browser is a failure, not a skip."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"} or bool(
        os.environ.get("TRADINGRT_REQUIRE_SERVICES")
    )


def chromium_executable() -> str:
    """The Chromium binary to drive; skips (fails in CI) when there is none."""
    configured = os.environ.get("TRADINGRT_CHROMIUM")
    candidates = [configured] if configured else ["/usr/bin/chromium", "chromium"]
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return found
    message = f"Browser tests need Chromium, which was not found: {INSTALL_HINT}."
    if browser_required():
        pytest.fail(message + " (CI is set, so this fails instead of skipping)")
    pytest.skip(message)


def _playwright() -> Any:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        message = f"Browser tests need the playwright package: {INSTALL_HINT}."
        if browser_required():
            pytest.fail(message + " (CI is set, so this fails instead of skipping)")
        pytest.skip(message)
    return async_playwright


@contextlib.asynccontextmanager
async def open_page(
    name: str, viewport: dict[str, int] = VIEWPORT, *, ignore_https_errors: bool = False
) -> AsyncIterator[Any]:
    """A page in a fresh headless Chromium profile; on failure a screenshot is left in ARTIFACTS.

    `ignore_https_errors` lets it open a LiveServer's TLS port, whose certificate comes from a CA
    made for that server.

    The page's console lines and uncaught errors are collected in `page.console_lines` and
    `page.page_errors`, and printed at the end (pytest shows them for failed tests).
    """
    executable = chromium_executable()
    async_playwright = _playwright()
    profile = tempfile.mkdtemp(prefix="tradingrt-chromium-")
    try:
        async with async_playwright() as playwright:
            context = await playwright.chromium.launch_persistent_context(
                profile,
                executable_path=executable,
                headless=True,
                args=CHROMIUM_ARGS,
                viewport=viewport,
                ignore_https_errors=ignore_https_errors,
            )
            page = context.pages[0] if context.pages else await context.new_page()
            page.console_lines = []
            page.page_errors = []
            page.on("console", lambda m: page.console_lines.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda error: page.page_errors.append(str(error)))
            try:
                yield page
            except BaseException:
                with contextlib.suppress(Exception):
                    await page.screenshot(path=str(artifact(f"failure-{name}.png")))
                raise
            finally:
                print("\n".join(["browser console:", *page.console_lines, *page.page_errors]))
                await context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def artifact(filename: str) -> Path:
    """A path under var/test-artifacts/ (git-ignored), for screenshots."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / filename


async def open_server_page(page: Any, origin: str) -> str:
    """Navigate to a page the server at `origin` serves (its 404 page: any page would do).

    The page's origin is the server's, so its WebSockets pass the Origin check; and it really
    comes from the loopback address, so Chromium's local-network-access checks let it connect
    there (they block pages that did not).
    """
    url = origin.rstrip("/") + "/__browser-test__/"
    await page.goto(url)
    return url


async def serve_blank_page(page: Any, origin: str, path: str = "/__browser-test__/") -> str:
    """Navigate to an empty HTML page at `origin`, answered in the browser: no server needed."""
    url = origin.rstrip("/") + path

    async def fulfil(route: Any) -> None:
        await route.fulfill(
            status=200,
            content_type="text/html",
            body="<!doctype html><html><head><title>test</title></head><body></body></html>",
        )

    await page.route(url, fulfil)
    await page.goto(url)
    return url


async def axe_violations(
    page: Any, rules: list[str] | None = None, within: str | None = None
) -> list[str]:
    """axe-core's WCAG 2.1 AA and best-practice violations on the page as it is now, one line
    each (rule, impact, the first elements and why), so an assertion's message tells what to fix.
    With `rules` (axe's rule ids, "color-contrast" say), only those rules are run; with `within`
    (a CSS selector), only those elements and their contents are checked.
    """
    if not await page.evaluate("typeof window.axe === 'object'"):
        await page.add_script_tag(content=AXE_JS.read_text())
    run_only = {"type": "rule", "values": rules} if rules else {"type": "tag", "values": AXE_TAGS}
    violations = await page.evaluate(
        """async ([runOnly, within]) => {
            const result = await axe.run(within ?? document, { runOnly });
            return result.violations.map((v) => ({
                id: v.id, impact: v.impact,
                nodes: v.nodes.slice(0, 3).map((n) => `${n.target.join(" ")}: ${n.failureSummary}`),
            }));
        }""",
        [run_only, within],
    )
    return [f"{v['id']} ({v['impact']}): {' | '.join(v['nodes'])}" for v in violations]
