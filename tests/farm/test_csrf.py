"""Cross-site requests refused on real farms: JSON writes from another origin, form posts whose
CSRF token the attacker chose (a planted cookie), login CSRF - and our own pages' forms still work."""

import httpx
import pytest

from app.config import DEMO_PASSWORD, DEMO_USERNAME, SESSION_COOKIE
from app.csrf import PRE_SESSION_COOKIE
from farmctl.runtime import Farm
from tests.farm.users import PASSWORD, form_token, new_username, signed_in

pytestmark = pytest.mark.farm

CROSS_SITE = {"origin": "https://evil.example", "sec-fetch-site": "cross-site"}


@pytest.mark.parametrize("headers", [{"origin": "https://evil.example"}, {"sec-fetch-site": "cross-site"},
                                     {"origin": "null"}])
def test_json_api_refuses_cross_site_writes(farm: Farm, headers: dict[str, str]) -> None:
    with signed_in(farm.config.balancer_url) as client:
        refused = client.post("/api/cart/items", json={"sku": "apple", "qty": 1}, headers=headers)
        assert refused.status_code == 403
        assert refused.json() == {"detail": "cross-site request refused"}
        assert client.get("/api/cart").json() == {"items": {}}
        assert client.post("/api/logout", headers=headers).status_code == 403
        assert client.get("/api/me").status_code == 200
        same_site = {"origin": farm.config.balancer_url}
        assert client.post("/api/cart/items", json={"sku": "apple", "qty": 1}, headers=same_site).status_code == 200


def test_a_cross_site_form_post_with_a_planted_csrf_cookie_is_refused(farm: Farm) -> None:
    base, planted = farm.config.balancer_url, "planted-by-the-attacker"
    with httpx.Client(base_url=base, cookies={PRE_SESSION_COOKIE: planted}) as attacker:
        token = form_token(attacker, "/login")  # whatever the server hands out for the planted value
    with signed_in(base) as victim:
        victim.post("/api/cart/items", json={"sku": "apple", "qty": 1})
        victim.cookies.set(PRE_SESSION_COOKIE, planted, domain="127.0.0.1")
        for path, form in (("/cart", {"sku": "evil", "qty": "50"}), ("/logout", {})):
            assert victim.post(path, data={"csrf_token": token, **form}, headers=CROSS_SITE).status_code == 403
            # Even without the browser's cross-site headers, a value the client chose signs nothing.
            assert victim.post(path, data={"csrf_token": token, **form}).status_code == 403
        assert victim.get("/api/cart").json() == {"items": {"apple": 1}}
        assert victim.get("/api/me").status_code == 200


def test_login_csrf_is_refused(farm: Farm) -> None:
    """An attacker's page signing the victim into the ATTACKER's account (login CSRF)."""
    base = farm.config.balancer_url
    with httpx.Client(base_url=base) as attacker:
        token = form_token(attacker, "/login")
        planted = attacker.cookies[PRE_SESSION_COOKIE]
    with httpx.Client(base_url=base) as victim:
        victim.cookies.set(PRE_SESSION_COOKIE, planted, domain="127.0.0.1")
        forged = victim.post("/login", data={"csrf_token": token, "username": DEMO_USERNAME, "password": DEMO_PASSWORD},
                             headers=CROSS_SITE)
        assert forged.status_code == 403
        assert SESSION_COOKIE not in victim.cookies


def test_the_forms_still_work_from_our_own_pages(farm: Farm) -> None:
    base = farm.config.balancer_url
    with httpx.Client(base_url=base) as client:
        name = new_username()
        registered = client.post("/register", data={"csrf_token": form_token(client, "/register"), "username": name,
                                                    "password": PASSWORD}, headers={"origin": base})
        assert registered.status_code == 303
        added = client.post("/cart", data={"csrf_token": form_token(client, "/dashboard"), "sku": "pear",
                                           "qty": "2"}, headers={"origin": base, "sec-fetch-site": "same-origin"})
        assert added.status_code == 303
        assert client.get("/api/cart").json() == {"items": {"pear": 2}}

