"""Users who sign in once and browse, checking every answer, while the chaos breaks the farm.

Run by `python -m loadtest run` (make loadtest); settings arrive as LOADTEST_* variables and the
farm's config whole, serialized in WEBFARM_FARM_CONFIG, so the chaos drives the same farm."""

import logging
import math
import os
import random
import secrets
import time
from pathlib import Path
from typing import Any

from locust import HttpUser, between, events, task
from locust.clients import LocustHttpAdapter, ResponseContextManager
from locust.env import Environment

from farmctl.config import CONFIG_VARIABLE, FarmConfig
from farmctl.lifecycle import open_farm
from loadtest.addresses import own_address
from loadtest.chaos import Chaos
from loadtest.faults import chaos_mode
from loadtest.ledger import CartBook, Ledger, Outcome, Pending, RunSettings

PASSWORD = "load-test-password"  # noqa: S105 - throw-away load-test accounts
SKUS = ["apple", "pear", "plum", "fig", "kiwi"]
#: A good client asks again after a 503 or 429 with Retry-After, this many times in all, waiting
#: what the server asks (at most RETRY_AFTER_MAX_S).
ATTEMPTS = 4
RETRY_AFTER_MAX_S = 5.0

ledger = Ledger()
chaos: Chaos | None = None
log = logging.getLogger("loadtest")


def record_into(new: Ledger) -> None:
    """The users record into `new` from now on: the console's crowds (console/crowd.py) run these
    users in its own process, each crowd with a ledger of its own."""
    global ledger
    ledger = new


class FromOwnAddress(LocustHttpAdapter):
    """Connect from a loopback address of one's own (see loadtest.addresses)."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__(pool_manager=None)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs, source_address=(self.address, 0))


class FarmUser(HttpUser):
    """Registers, signs in, then reads who it is, reads and fills its cart, and views pages."""

    wait_time = between(0.2, 1.0)
    signed_in = False

    def on_start(self) -> None:
        self.client.mount("http://", FromOwnAddress(own_address()))
        self.username = f"lt{secrets.token_hex(6)}"
        self.cart = CartBook()
        for _ in range(ATTEMPTS):  # admission control may turn a registration away: come back later
            with self.request("POST", "/api/register", json={"username": self.username, "password": PASSWORD}) as r:
                wait = retry_after_s(r)
                if wait is None:
                    break
                r.success()  # a refusal to come back later is not an error of the farm
            time.sleep(wait)
        self.sign_in()

    def sign_in(self) -> None:
        """Log in (again). A fresh session starts with an empty cart. A failed login is a request
        error (Locust shows it too); the user tries again before its next request."""
        self.cart = CartBook()
        start = time.time()
        with self.request("POST", "/api/login", json={"username": self.username, "password": PASSWORD}) as r:
            self.signed_in = r.status_code == 200
            if not self.signed_in:
                outcome = ledger.classify_error("POST", start, time.time(), r.headers.get("x-served-by", ""))
                ledger.record(start, time.time(), "POST", "/api/login", r.status_code or 0, "", outcome)
                r.failure(f"login failed (HTTP {r.status_code})")

    def on_request_start(self) -> bool:
        """False (and a fresh login attempt) when the user is not signed in."""
        if not self.signed_in:
            self.sign_in()
        return self.signed_in

    def request(self, method: str, path: str, **kwargs: Any) -> ResponseContextManager:
        return self.client.request(method, path, name=path, catch_response=True, allow_redirects=False,
                                   **kwargs)

    def judge(self, response: ResponseContextManager, method: str, start: float,
              check: Any = None, retrying: bool = False) -> Outcome:
        """Classify one answer, tell Locust, and write it down. `check` inspects a 200's body;
        `retrying`: the user sends this request again, so its fate is settled by the next answer."""
        end = time.time()
        status = response.status_code or 0
        served_by = response.headers.get("x-served-by", "") if status else ""
        if status == 401 or (status == 303 and "/login" in response.headers.get("location", "")):
            outcome = Outcome.SESSION_LOST
        elif status == 0 or status >= 500:
            outcome = Outcome.REQUEST_ERROR if retrying else ledger.classify_error(
                method, start, end, served_by, retry_after="retry-after" in response.headers)
        elif status != 200:
            outcome = Outcome.REQUEST_ERROR
        else:
            outcome = check(response) if check else Outcome.OK
        ledger.record(start, end, method, response.request_meta["name"], status, served_by, outcome)
        if outcome is Outcome.OK:
            response.success()
        else:
            response.failure(f"{outcome.value} (HTTP {status})")
        if outcome is Outcome.SESSION_LOST:
            self.sign_in()
        return outcome

    def check_cart(self, items: dict[str, int], read_start: float) -> Outcome:
        """The cart the server answered, against this user's book; an add of unknown fate stays
        possible until the faults it met are over (Ledger.settled)."""
        return self.cart.check(items, lambda add: ledger.settled(add.start, add.end, read_start))

    @task(4)
    def who_am_i(self) -> None:
        def mine(r: ResponseContextManager) -> Outcome:
            return Outcome.OK if r.json().get("username") == self.username else Outcome.MIXUP

        if not self.on_request_start():
            return
        start = time.time()
        with self.request("GET", "/api/me") as r:
            self.judge(r, "GET", start, mine)

    @task(2)
    def read_cart(self) -> None:
        if not self.on_request_start():
            return
        start = time.time()
        with self.request("GET", "/api/cart") as r:
            self.judge(r, "GET", start, lambda resp: self.check_cart(resp.json()["items"], start))

    @task(2)
    def add_to_cart(self) -> None:
        sku, qty = random.choice(SKUS), random.randint(1, 3)

        def applied(r: ResponseContextManager) -> Outcome:
            self.cart.confirmed[sku] += qty
            return self.check_cart(r.json()["items"], start)

        if not self.on_request_start():
            return
        # The app applies a key once: an add the app refused with 503 + Retry-After (its store did not
        # answer in time, perhaps after the write) is sent again with the same key, to learn its fate.
        key, first_start = secrets.token_urlsafe(12), time.time()
        for attempt in range(1, ATTEMPTS + 1):
            start = time.time()
            with self.request("POST", "/api/cart/items", json={"sku": sku, "qty": qty},
                              headers={"Idempotency-Key": key}) as r:
                wait = retry_after_s(r) if attempt < ATTEMPTS and r.headers.get("x-served-by") else None
                outcome = self.judge(r, "POST", start, applied, retrying=wait is not None)
            if wait is None:
                if outcome is Outcome.INDETERMINATE:
                    self.cart.pending.append(Pending(sku, qty, first_start, time.time()))
                return
            time.sleep(wait)

    @task(1)
    def view_dashboard(self) -> None:
        def shows_me(r: ResponseContextManager) -> Outcome:
            return Outcome.OK if f'id="username">{self.username}<' in r.text else Outcome.MIXUP

        if not self.on_request_start():
            return
        start = time.time()
        with self.request("GET", "/dashboard") as r:
            self.judge(r, "GET", start, shows_me)


def retry_after_s(response: ResponseContextManager) -> float | None:
    """How long to wait before asking again, if the answer is a 503 or 429 with Retry-After."""
    value = response.headers.get("retry-after", "") if response.status_code in (429, 503) else ""
    try:
        return min(max(float(value), 0.1), RETRY_AFTER_MAX_S)
    except ValueError:
        return None


@events.test_start.add_listener
def start_chaos(environment: Environment, **_: Any) -> None:
    global chaos
    ledger.started_at = time.time()
    kill_every = float(os.environ.get("LOADTEST_KILL_EVERY", "15"))
    ledger.settings = RunSettings(chaos=os.environ.get("LOADTEST_CHAOS", "instances"), kill_every_s=kill_every,
                                  kill_signal=os.environ.get("LOADTEST_KILL_SIGNAL", "KILL"))
    if kill_every <= 0:
        return
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per probe of the chaos or request of a storm
    run_time = getattr(environment.parsed_options, "run_time", None)
    farm = open_farm(FarmConfig.from_json(os.environ[CONFIG_VARIABLE]), os.environ.get("RUNTIME") or "auto")
    chaos = Chaos(farm, ledger, kill_every, ledger.settings.kill_signal or "KILL", chaos_mode(ledger.settings.chaos),
                  ends_at=ledger.started_at + run_time if run_time else math.inf)
    chaos.start()


@events.test_stop.add_listener
def save_ledger(environment: Environment, **_: Any) -> None:
    ledger.stopped_at = time.time()
    if chaos:
        chaos.stop()  # the fault under way ends, the last killed instance comes back
    out = Path(os.environ.get("LOADTEST_OUT", "reports/loadtest"))
    out.mkdir(parents=True, exist_ok=True)
    ledger.save(out / "ledger.json")
