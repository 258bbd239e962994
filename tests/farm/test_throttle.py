"""Login and registration throttling on real farms: failed logins counted per account and per
address across every instance together, an address believed only from nginx, and nginx's own
limit_req in front of the password endpoints.

Tests on the shared farm send from a loopback address of their own (127.0.0.x; nginx forwards it
as the client's), so the per-address limits one trips do not spill into the others."""

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from app.config import DEMO_PASSWORD, DEMO_USERNAME
from farmctl.runtime import Farm
from tests.conftest import FarmFactory
from tests.farm.users import PASSWORD, client_from, login, new_username, register, signed_in, source_address

pytestmark = pytest.mark.farm


@pytest.fixture(scope="module")
def strict_farm(farm_factory: FarmFactory) -> Farm:
    """A small per-address allowance, so the limit can be reached in a test."""
    return farm_factory(2, extra_env={"LOGIN_MAX_FAILURES_PER_ADDRESS": "8"})


def test_failed_logins_are_throttled_per_account_across_all_instances(store_farm: Farm) -> None:
    farm, username = store_farm, new_username()
    with signed_in(farm.config.balancer_url, username) as client:
        served: Counter[str] = Counter()
        for _ in range(5):
            failed = login(client, username, "wrong-password")
            assert failed.status_code == 401
            served[failed.headers["x-served-by"]] += 1
        assert len(served) == 3  # the five failures were spread over every instance...
        blocked = login(client, username)  # ...and still add up to one allowance: even the right password waits
        assert blocked.status_code == 429
        assert 0 < int(blocked.headers["retry-after"]) <= 900
        assert login(client, DEMO_USERNAME, DEMO_PASSWORD).status_code == 200  # other accounts are unaffected


def test_failed_logins_are_throttled_per_address_and_forwarded_for_cannot_be_forged(
        strict_farm: Farm) -> None:
    base = strict_farm.config.balancer_url
    with httpx.Client(base_url=base) as client:
        for i in range(8):
            spoofed = {"x-forwarded-for": f"203.0.113.{i}"}
            response = client.post("/api/login", headers=spoofed,
                                   json={"username": new_username(), "password": "wrong-password"})
            assert response.status_code == 401
        assert login(client, DEMO_USERNAME, DEMO_PASSWORD).status_code == 429
        direct = httpx.post(f"{strict_farm.config.web[0].url}/api/login", headers={"x-forwarded-for": "198.51.100.7"},
                            json={"username": DEMO_USERNAME, "password": DEMO_PASSWORD})
        assert direct.status_code == 429  # an instance ignores X-Forwarded-For from anyone but nginx
    # Another client address (127.0.0.3 is loopback too) has its own allowance: nginx forwards it.
    elsewhere = httpx.HTTPTransport(local_address="127.0.0.3")
    with httpx.Client(base_url=base, transport=elsewhere) as other:
        assert login(other, DEMO_USERNAME, DEMO_PASSWORD).status_code == 200


def test_concurrent_guesses_evaluate_at_most_the_limit_even_with_the_right_password_among_them(
        store_farm: Farm) -> None:
    base, username, address = store_farm.config.balancer_url, new_username(), source_address()
    with client_from(base, address) as owner:
        register(owner, username)
    guesses = [f"wrong-password-{i}" for i in range(40)]
    guesses[36] = PASSWORD

    def guess(password: str) -> int:
        with client_from(base, address) as attacker:
            return login(attacker, username, password).status_code

    with ThreadPoolExecutor(40) as pool:
        answers = Counter(pool.map(guess, guesses))
    assert set(answers) <= {200, 401, 429, 503}, answers
    assert answers[200] + answers[401] <= 5  # evaluated: the limit, across every instance together
    # The rest refused unevaluated: by the throttle (429), or, when five argon2 checks already fill
    # an instance's admission queue on 2 cores, "too busy" (503) before the throttle is asked.
    assert answers[429] + answers[503] >= 35, answers
    assert answers[200] == 0 or answers[200] + answers[401] <= 5  # the right one got in only within the limit


def test_spraying_from_an_address_does_not_lock_out_an_account_signed_in_from_there(
        farm_factory: FarmFactory) -> None:
    # 30, not the default 100: within nginx's burst for one address (40), so the app sees every one.
    # (On a cluster the address's counter is in another slot than the account's: tests/app/test_throttle.py.)
    farm = farm_factory(2, extra_env={"LOGIN_MAX_FAILURES_PER_ADDRESS": "30"})
    base, address = farm.config.balancer_url, source_address()
    with client_from(base, address) as client:
        assert login(client, DEMO_USERNAME, DEMO_PASSWORD).status_code == 200  # the owner, once
        with ThreadPoolExecutor(10) as pool:
            sprayed = Counter(pool.map(lambda i: login(client, f"victim{i}", "wrong-password").status_code,
                                       range(30)))
        assert sprayed == {401: 30}
        assert login(client, new_username(), "wrong-password").status_code == 429  # a new pair waits
        assert login(client, DEMO_USERNAME, DEMO_PASSWORD).status_code == 200  # the known one does not
    with client_from(base) as elsewhere:
        assert login(elsewhere, DEMO_USERNAME, DEMO_PASSWORD).status_code == 200


def test_registration_is_limited_per_address_and_a_taken_name_counts(farm_factory: FarmFactory) -> None:
    farm = farm_factory(1, extra_env={"REGISTER_MAX_PER_ADDRESS": "5"})
    with client_from(farm.config.balancer_url) as client:
        register(client, name := new_username())
        assert client.post("/api/register", json={"username": name, "password": PASSWORD}).status_code == 409
        answers = Counter(client.post("/api/register", json={"username": new_username(), "password": PASSWORD})
                          .status_code for _ in range(10))
        assert answers == {201: 3, 429: 7}
    with client_from(farm.config.balancer_url) as other:
        register(other, new_username())


def test_one_address_flooding_the_password_endpoints_is_told_429_by_nginx(farm: Farm) -> None:
    """nginx's limit_req: 10 a second per client address, bursts of 40; beyond, a 429 in the API's
    shape that no instance spent argon2 on (no X-Served-By). Another address is not affected."""
    transport = httpx.HTTPTransport(local_address="127.0.9.9")
    started = time.monotonic()
    with httpx.Client(base_url=farm.config.balancer_url, transport=transport, timeout=15) as flood, \
            ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: flood.post("/api/login", json={"username": new_username(),
                                                                         "password": "wrong-password"}),
                                range(80)))
    took = time.monotonic() - started
    refused = [r for r in answers if r.status_code == 429 and "x-served-by" not in r.headers]
    assert refused
    assert len(answers) - len(refused) <= 41 + 10 * took  # the burst, then 10 a second
    assert refused[0].json() == {"detail": "too many requests from this address"}
    assert refused[0].headers["retry-after"] == "1"
    with signed_in(farm.config.balancer_url) as elsewhere:  # 127.0.0.1
        assert elsewhere.get("/api/me").status_code == 200

