"""The guarantees of issue #10, tried as an attacker would: concurrently, against a real farm.

Each test sends from a loopback address of its own (127.0.0.x; nginx forwards it as the client's),
so the per-address limits it trips do not spill into the other tests on the shared farm."""

import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from functools import partial

import httpx
import pytest
import redis

from farmctl.native import NativeFarm
from tests.conftest import FarmFactory
from tests.farm.users import PASSWORD, client_from, new_username, redis_blocked, source_address

pytestmark = pytest.mark.farm


def register(client: httpx.Client, username: str, password: str = PASSWORD) -> None:
    assert client.post("/api/register", json={"username": username, "password": password}).status_code == 201


def login(client: httpx.Client, username: str, password: str = PASSWORD,
          headers: dict[str, str] | None = None) -> httpx.Response:
    return client.post("/api/login", json={"username": username, "password": password}, headers=headers)


def test_concurrent_guesses_evaluate_at_most_the_limit_even_with_the_right_password_among_them(
        farm: NativeFarm) -> None:
    base, username, address = farm.config.balancer_url, new_username(), source_address()
    with client_from(base, address) as owner:
        register(owner, username)
    guesses = [f"wrong-password-{i}" for i in range(40)]
    guesses[36] = PASSWORD

    def guess(password: str) -> int:
        with client_from(base, address) as attacker:
            return login(attacker, username, password).status_code

    with ThreadPoolExecutor(40) as pool:
        answers = Counter(pool.map(guess, guesses))
    assert answers[200] + answers[401] <= 5  # evaluated: the limit, across every instance together
    assert answers[429] >= 35
    assert answers[200] == 0 or answers[200] + answers[401] <= 5  # the right one got in only within the limit


def test_spraying_from_an_address_does_not_lock_out_an_account_signed_in_from_there(
        farm_factory: FarmFactory) -> None:
    # 30, not the default 100: within nginx's burst for one address (40), so the app sees every one.
    farm = farm_factory(2, extra_env={"LOGIN_MAX_FAILURES_PER_ADDRESS": "30"})
    base, address = farm.config.balancer_url, source_address()
    with client_from(base, address) as client:
        assert login(client, "demo", "demo-password").status_code == 200  # the owner, once
        with ThreadPoolExecutor(10) as pool:
            sprayed = Counter(pool.map(lambda i: login(client, f"victim{i}", "wrong-password").status_code,
                                       range(30)))
        assert sprayed == {401: 30}
        assert login(client, new_username(), "wrong-password").status_code == 429  # a new pair waits
        assert login(client, "demo", "demo-password").status_code == 200  # the known one does not
    with client_from(base) as elsewhere:
        assert login(elsewhere, "demo", "demo-password").status_code == 200


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


def sessions_survive(base: str, cookies: list[str]) -> list[str]:
    alive = []
    for cookie in cookies:
        with httpx.Client(base_url=base, cookies={"webfarm_session": cookie}) as client:
            if client.get("/api/me").status_code == 200:
                alive.append(cookie)
    return alive


def logins_during(base: str, username: str, address: str, end: Callable[[], httpx.Response]) -> list[str]:
    """Log in as `username` over and over from three clients while `end` (a sign-out or a password
    change) runs; returns the cookies of the logins that STARTED before `end` answered and got a 200."""
    started_before_end: list[str] = []
    stop = threading.Event()
    ended_at = [float("inf")]

    def keep_logging_in() -> None:
        with client_from(base, address) as client:
            while not stop.is_set():
                started = time.monotonic()
                response = login(client, username)
                if response.status_code == 200 and started < ended_at[0]:
                    started_before_end.append(response.cookies["webfarm_session"])

    with ThreadPoolExecutor(3) as pool:
        for _ in range(3):
            pool.submit(keep_logging_in)
        time.sleep(0.15)
        assert end().status_code in (200, 204)
        ended_at[0] = time.monotonic()
        time.sleep(0.1)
        stop.set()
    return started_before_end


def created_at_ms(base: str, cookie: str) -> int:
    with httpx.Client(base_url=base, cookies={"webfarm_session": cookie}) as client:
        return round(datetime.fromisoformat(client.get("/api/me").json()["session_created_at"]).timestamp() * 1000)


def test_sign_out_everywhere_leaves_no_session_from_before_it_and_none_outside_its_reach(farm: NativeFarm) -> None:
    """Logins of the same user race the sign-out. A login that overlaps it may land on either side
    of it (it is one atomic step: the epoch moves on); what must never happen is a session created
    before the sign-out surviving it, or - the bug of the session index - a session that a later
    sign-out everywhere cannot reach."""
    base, raced = farm.config.balancer_url, 0
    with redis.Redis.from_url(farm.config.redis_url) as store:
        for _ in range(15):
            username, address = new_username(), source_address()
            with client_from(base, address) as laptop:
                register(laptop, username)
                assert login(laptop, username).status_code == 200
                sent_at_ms = [0]

                def sign_out(client: httpx.Client = laptop, sent_at_ms: list[int] = sent_at_ms) -> httpx.Response:
                    seconds, micros = store.time()
                    sent_at_ms[0] = seconds * 1000 + micros // 1000
                    return client.post("/api/logout/everywhere")

                in_flight = logins_during(base, username, address, sign_out)
                raced += len(in_flight)
                survivors = sessions_survive(base, in_flight)
                assert all(created_at_ms(base, c) >= sent_at_ms[0] for c in survivors)
                assert login(laptop, username).status_code == 200
                assert laptop.post("/api/logout/everywhere").status_code == 204
                assert sessions_survive(base, in_flight) == []
    assert raced > 0  # the race was run: logins were in flight at the sign-out


CHANGE = {"current_password": PASSWORD, "new_password": "n" * 12}


def test_a_password_change_ends_the_sessions_of_old_password_logins_in_flight(farm: NativeFarm) -> None:
    """A thief keeps logging in with the old password while the owner changes it: every session
    the old password opened is dead once the change has answered."""
    base, raced = farm.config.balancer_url, 0
    for _ in range(10):
        username, address = new_username(), source_address()
        with client_from(base, address) as owner:
            register(owner, username)
            assert login(owner, username).status_code == 200
            in_flight = logins_during(base, username, address, partial(owner.post, "/api/password", json=CHANGE))
            raced += len(in_flight)
            assert sessions_survive(base, in_flight) == []
            assert owner.get("/api/me").status_code == 200
    assert raced > 0


def until_not_503(send: Callable[[], httpx.Response], deadline_s: float = 20) -> httpx.Response:
    deadline = time.monotonic() + deadline_s
    while True:
        response = send()
        if response.status_code != 503 or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


def test_writes_during_a_redis_stall_apply_exactly_once(farm: NativeFarm) -> None:
    """Adds and registrations that time out while Redis is blocked are applied once Redis gets to
    them; the client repeats each with its Idempotency-Key until it gets an answer, and each counts once."""
    base = farm.config.balancer_url
    with client_from(base) as owner:
        register(owner, username := new_username())
        assert login(owner, username).status_code == 200
        cookie = owner.cookies["webfarm_session"]
    statuses: Counter[int] = Counter()

    def add(i: int) -> int:
        key = f"add-{i}-{secrets.token_hex(6)}"
        with httpx.Client(base_url=base, cookies={"webfarm_session": cookie}, timeout=15) as client:
            def send() -> httpx.Response:
                response = client.post("/api/cart/items", json={"sku": f"sku{i % 3}", "qty": 1},
                                       headers={"Idempotency-Key": key})
                statuses[response.status_code] += 1
                return response
            return until_not_503(send).status_code

    def register_one(i: int) -> int:
        key, name = f"reg-{i}-{secrets.token_hex(6)}", new_username()
        with client_from(base) as client:
            def send() -> httpx.Response:
                response = client.post("/api/register", json={"username": name, "password": PASSWORD},
                                       headers={"Idempotency-Key": key})
                statuses[response.status_code] += 1
                return response
            return until_not_503(send).status_code

    with redis_blocked(farm, 3), ThreadPoolExecutor(24) as pool:
        adds = list(pool.map(add, range(30)))
        registrations = list(pool.map(register_one, range(10)))
    assert adds == [200] * 30
    assert registrations == [201] * 10  # never a 409 for a name nobody had
    assert statuses[503] > 0  # the stall was real: requests timed out and were repeated
    with httpx.Client(base_url=base, cookies={"webfarm_session": cookie}) as client:
        assert client.get("/api/cart").json() == {"items": {"sku0": 10, "sku1": 10, "sku2": 10}}


FORGED = {"x-forwarded-for": "203.0.113.9", "x-forwarded-proto": "https"}


def test_a_local_process_cannot_pass_as_the_balancer(farm: NativeFarm) -> None:
    """Straight to an instance, from 127.0.0.2 (where nginx once connected from): the forwarded
    headers are ignored - no Secure cookie over plain HTTP, and the throttle counts the real address."""
    web1, username = farm.config.web[0], new_username()
    with client_from(web1.url, "127.0.0.2") as local:
        cookie = login(local, "demo", "demo-password", headers=FORGED).headers["set-cookie"]
        assert cookie.startswith("webfarm_session=")
        assert "secure" not in cookie.lower()
        register(local, username)
        answers = [login(local, username, "wrong-password", headers={**FORGED, "x-forwarded-for": f"198.51.100.{i}"})
                   .status_code for i in range(6)]
        assert answers == [401] * 5 + [429]  # one address, however many it claimed to be
        # The farm's own secret is what vouches for the balancer (the mechanism, shown working).
        secret = (farm.config.state_dir / "proxy_secret").read_text()
        vouched = login(local, "demo", "demo-password", headers={**FORGED, "x-webfarm-proxy": secret})
        assert vouched.headers["set-cookie"].startswith("__Host-webfarm_session=")
