"""The one wait helper: poll a condition until it holds or time runs out; and the one HTTP probe
such conditions are made of."""

import time
from collections.abc import Callable
from typing import TypeVar

import httpx

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout_s: float, interval_s: float = 0.1) -> T | None:
    """Call `condition` every `interval_s` until it returns something truthy, and return that;
    None if it did not within `timeout_s` (the condition is always tried at least once)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval_s)


def answers(url: str, timeout_s: float = 1.0) -> bool:
    """GET `url` answers 200 within `timeout_s` (a refused connection or a timeout is a no)."""
    try:
        return httpx.get(url, timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def balancer_answers(balancer_url: str, through: str, instances_serve: bool) -> bool:
    """Whether nginx answers: through an instance (`through`, a path it proxies) once every instance
    serves, before that with a file of its own. Asked through, nginx would try an instance still
    starting, and a refused connection takes that instance out of the worker's rotation for
    fail_timeout (5 s) - a farm "healthy" with web1 skipped, as a fresh-clone CI saw."""
    return answers(f"{balancer_url}{through if instances_serve else '/static/style.css'}")
