"""What the browser tests share: headless Chromium (Debian's, driven by Playwright), and the steps
every one of them takes - sign in, wait, take a screenshot."""

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect, sync_playwright

from app.config import DEMO_PASSWORD, DEMO_USERNAME
from farmctl.runtime import Farm

SHOTS = Path(__file__).resolve().parents[2] / "reports" / "e2e"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 10_000


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(0.1)


def demo_login(farm: Farm) -> httpx.Response:
    return httpx.post(f"{farm.config.balancer_url}/api/login",
                      json={"username": DEMO_USERNAME, "password": DEMO_PASSWORD}, timeout=10)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(executable).exists():
        pytest.fail(f"no Chromium at {executable}: install it (`make test` does: apt-get install chromium)")
    browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


def new_context(browser: Browser, farm: Farm, javascript: bool = True) -> BrowserContext:
    context = browser.new_context(base_url=farm.config.balancer_url, java_script_enabled=javascript,
                                  viewport={"width": 1100, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    return context


def screenshot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SHOTS / name, full_page=True)


def submit_credentials(page: Page, username: str, password: str) -> None:
    """Fill and send the login or register form on the current page; land on the dashboard."""
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("form button[type=submit]")
    page.wait_for_url("**/dashboard")
    expect(page.locator("h1")).to_have_text(f"Signed in as {username}")


def sign_in(page: Page, username: str, password: str) -> None:
    page.goto("/login")
    submit_credentials(page, username, password)
