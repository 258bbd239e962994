"""End to end in headless Chromium, through nginx, against a real farm of its own: sign in,
lose the instance that served you, and stay signed in with your cart."""

import secrets
import time
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from app.config import DEMO_PASSWORD, DEMO_USERNAME, SESSION_COOKIE
from farmctl.runtime import Farm
from tests.browser.conftest import (
    TIMEOUT_MS,
    demo_login,
    new_context,
    screenshot,
    sign_in,
    submit_credentials,
    wait_until,
)
from tests.conftest import FarmFactory

pytestmark = pytest.mark.browser

PASSWORD = "e2e-password-123"


def restarted(farm: Farm, name: str, old_pid: int) -> bool:
    return farm.pid(name) not in (0, old_pid) and farm.is_serving(name)


@pytest.fixture(scope="module")
def e2e_farm(farm_factory: FarmFactory) -> Farm:
    """A farm of this module's own (these tests kill instances), once the demo account exists."""
    farm = farm_factory(3, demo_controls=True)
    wait_until(lambda: demo_login(farm).status_code == 200, "the demo account accepting its password")
    return farm


@pytest.fixture(autouse=True)
def healthy_farm(e2e_farm: Farm) -> None:
    """Every test starts with every instance serving, whatever the previous one killed."""
    e2e_farm.wait_healthy(20)


@pytest.fixture
def page(browser: Browser, e2e_farm: Farm) -> Iterator[Page]:
    context = new_context(browser, e2e_farm)
    yield context.new_page()
    context.close()


def reload(page: Page) -> int:
    """Reload and return the HTTP status of the page the browser got."""
    response = page.reload()
    page.wait_for_load_state("load")
    assert response is not None
    return response.status


def served_by(page: Page) -> str:
    return page.inner_text("#page-served-by")


def cart(page: Page) -> dict[str, str]:
    rows = page.locator("#cart tr").filter(has=page.locator("td")).all()
    return {cells[0]: cells[1] for cells in (row.locator("td").all_inner_texts() for row in rows)}


def farm_panel(page: Page) -> dict[str, tuple[str, str]]:
    """instance -> (state, requests served), as the panel shows them."""
    rows = page.locator("#farm tbody tr").all()
    return {cells[0]: (cells[1], cells[2]) for cells in (row.locator("td").all_inner_texts() for row in rows)
            if len(cells) == 3}


def wait_for_farm_panel(page: Page) -> None:
    expect(page.locator("#farm-updated")).to_contain_text("updated", timeout=TIMEOUT_MS)


def session_cookie(page: Page) -> str:
    return next(c["value"] for c in page.context.cookies() if c["name"] == SESSION_COOKIE)


def api_me(farm: Farm, cookie: str) -> httpx.Response:
    return httpx.get(f"{farm.config.balancer_url}/api/me", cookies={SESSION_COOKIE: cookie}, timeout=10)


def test_sigkill_of_the_serving_instance_keeps_user_signed_in_with_cart(e2e_farm: Farm, page: Page) -> None:
    user = "e2e" + secrets.token_hex(4)
    page.goto("/login")
    expect(page.locator("h1")).to_have_text("Sign in")
    screenshot(page, "login.png")
    page.click("text=Create one")
    page.wait_for_url("**/register")
    submit_credentials(page, user, PASSWORD)

    seen = {served_by(page)}
    for _ in range(12):
        if len(seen) >= 2:
            break
        assert reload(page) == 200
        expect(page.locator("#username")).to_have_text(user)
        seen.add(served_by(page))
    assert len(seen) >= 2, f"only {seen} served the dashboard in 12 reloads"

    page.fill("input[name=sku]", "apple")
    page.fill("input[name=qty]", "2")
    page.click("form.inline button[type=submit]")
    page.wait_for_url("**/dashboard")
    assert cart(page) == {"apple": "2"}

    victim = served_by(page)
    old_pid = e2e_farm.kill(victim, "KILL")
    wait_until(lambda: not e2e_farm.is_serving(victim), f"{victim} still serving after SIGKILL")
    assert reload(page) == 200
    expect(page.locator("h1")).to_have_text(f"Signed in as {user}")
    assert served_by(page) != victim
    assert cart(page) == {"apple": "2"}
    wait_for_farm_panel(page)
    screenshot(page, "after-failover.png")
    wait_until(lambda: restarted(e2e_farm, victim, old_pid), f"{victim} restarted by the supervisor")

    old_cookie = session_cookie(page)
    assert api_me(e2e_farm, old_cookie).json()["username"] == user
    page.click("#logout")
    page.wait_for_url("**/login")
    expect(page.locator("h1")).to_have_text("Sign in")
    page.goto("/dashboard")
    page.wait_for_url("**/login")
    assert api_me(e2e_farm, old_cookie).status_code == 401


def test_farm_panel_shows_every_instance_and_keeps_refreshing_through_a_restart(
        e2e_farm: Farm, page: Page) -> None:
    js_errors: list[str] = []
    page.on("pageerror", lambda exc: js_errors.append(str(exc)))
    sign_in(page, DEMO_USERNAME, DEMO_PASSWORD)
    names = e2e_farm.instance_names()

    def all_up_and_counting() -> bool:
        panel = farm_panel(page)
        return sorted(panel) == names and all(state == "up" and int(n) > 0 for state, n in panel.values())

    wait_until(all_up_and_counting, f"the farm panel showing {names} up with request counts", 5)
    assert int(page.inner_text("#live-sessions")) >= 1
    assert page.inner_text("#panel-served-by") in names
    screenshot(page, "dashboard.png")

    page.evaluate("""() => {
        window.farmUpdates = [];
        new MutationObserver(() => window.farmUpdates.push(document.getElementById("farm-updated").textContent))
            .observe(document.getElementById("farm-updated"), {childList: true, characterData: true, subtree: true});
    }""")
    victim = next(n for n in names if n != served_by(page))
    old_pid = e2e_farm.kill(victim, "KILL")
    wait_until(lambda: restarted(e2e_farm, victim, old_pid), f"{victim} restarted by the supervisor")
    refreshes_so_far = page.evaluate("window.farmUpdates.length")
    page.wait_for_function("n => window.farmUpdates.length >= n + 2", arg=refreshes_so_far, timeout=TIMEOUT_MS)
    wait_until(all_up_and_counting, "the farm panel showing every instance up again", 5)

    updates: list[str] = page.evaluate("window.farmUpdates")
    assert len(set(updates)) >= 2, updates
    assert all(text.startswith("updated ") for text in updates), updates
    assert js_errors == []


def test_login_form_shows_field_errors_without_javascript(browser: Browser, e2e_farm: Farm) -> None:
    context = new_context(browser, e2e_farm, javascript=False)
    page = context.new_page()
    try:
        page.goto("/login")
        page.fill("#username", DEMO_USERNAME)
        page.fill("#password", "not-the-password")
        with page.expect_response(lambda r: r.request.method == "POST") as posted:
            page.click("form button[type=submit]")
        page.wait_for_load_state("load")
        assert posted.value.status == 401
        expect(page.locator("#password + #password-error")).to_have_text("wrong username or password")
        expect(page.locator("#username")).to_have_value(DEMO_USERNAME)
        expect(page.locator("#username-error")).to_have_count(0)

        page.goto("/register")
        page.fill("#username", "A!")
        page.fill("#password", PASSWORD)
        with page.expect_response(lambda r: r.request.method == "POST") as posted:
            page.click("form button[type=submit]")
        page.wait_for_load_state("load")
        assert posted.value.status == 422
        expect(page.locator("#username + #username-error")).to_contain_text("3-32 characters")
        expect(page.locator("#password-error")).to_have_count(0)

        sign_in(page, DEMO_USERNAME, DEMO_PASSWORD)
        assert page.url.endswith("/dashboard")
    finally:
        context.close()


def test_crash_button_kills_an_instance_and_user_stays_signed_in(e2e_farm: Farm, page: Page) -> None:
    sign_in(page, DEMO_USERNAME, DEMO_PASSWORD)
    expect(page.locator("#crash")).to_contain_text("Crash")
    label = page.inner_text("#crash")
    pids = {name: e2e_farm.pid(name) for name in e2e_farm.instance_names()}

    page.click("#crash")
    page.wait_for_url("**/dashboard?crashed=*")
    crashed = page.url.rsplit("crashed=", 1)[1]
    assert crashed in pids
    # The POST is balanced like any request, so a label naming the page's instance would lie.
    assert {name for name in pids if name in label} <= {crashed}, label
    expect(page.locator(".notice")).to_contain_text(f"{crashed} was crashed")
    wait_until(lambda: e2e_farm.pid(crashed) != pids[crashed], f"{crashed} killed by the crash button")

    status = 0
    for _ in range(10):
        status = reload(page)
        if status == 200:
            break
    assert status == 200
    expect(page.locator("h1")).to_have_text(f"Signed in as {DEMO_USERNAME}")
    wait_until(lambda: restarted(e2e_farm, crashed, pids[crashed]), f"{crashed} restarted by the supervisor")
    assert all(e2e_farm.pid(name) == pid for name, pid in pids.items() if name != crashed)


def test_crash_without_csrf_token_is_refused_and_kills_nothing(e2e_farm: Farm, page: Page) -> None:
    sign_in(page, DEMO_USERNAME, DEMO_PASSWORD)
    pids = {name: e2e_farm.pid(name) for name in e2e_farm.instance_names()}
    refused_by: set[str] = set()
    for inst in e2e_farm.config.web:
        response = page.request.post(f"{inst.url}/demo/crash", form={"csrf_token": "x"}, max_redirects=0)
        assert response.status == 403, response.text()
        refused_by.add(response.headers["x-served-by"])
    response = page.request.post("/demo/crash", form={"csrf_token": "x"}, max_redirects=0)
    assert response.status == 403
    assert refused_by == set(pids)

    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert {name: e2e_farm.pid(name) for name in pids} == pids
        assert all(e2e_farm.is_serving(name) for name in pids)
        time.sleep(0.2)


def test_pages_through_nginx_carry_security_headers(e2e_farm: Farm, page: Page) -> None:
    login = page.goto("/login")
    assert login is not None
    headers = login.all_headers()
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-served-by"] in e2e_farm.instance_names()

    with page.expect_response("**/dashboard") as dashboard:
        sign_in(page, DEMO_USERNAME, DEMO_PASSWORD)
    dashboard_headers = dashboard.value.all_headers()
    assert "no-store" in dashboard_headers["cache-control"]
    assert "frame-ancestors 'none'" in dashboard_headers["content-security-policy"]


def test_static_files_are_served_by_nginx_not_the_app(page: Page) -> None:
    with page.expect_response("**/static/style.css") as stylesheet:
        page.goto("/login")
    headers = stylesheet.value.all_headers()
    assert stylesheet.value.status == 200
    assert headers["content-type"].startswith("text/css")
    assert "x-served-by" not in headers
    assert headers["x-content-type-options"] == "nosniff"
    assert page.evaluate("getComputedStyle(document.querySelector('header')).display") == "flex"
