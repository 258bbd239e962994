"""A write held by a frozen instance. A paused process (a VM paused, a process stopped by a
debugger) keeps its socket: the kernel takes the request nginx sends it, nginx times out and tells
the client 503 with no instance's name - and when the instance resumes, it reads the request and
applies it, behind the back of a client that was told it failed. So an add of unknown fate stays
possible until the fault is over (loadtest.ledger: Ledger.settled), and the client's resend with
the same Idempotency-Key is what makes it exactly once."""

import secrets
import time

import pytest

from farmctl.runtime import Farm
from farmctl.wait import wait_until
from tests.conftest import FarmFactory
from tests.farm.users import signed_in

pytestmark = pytest.mark.farm


@pytest.fixture(scope="module")
def lone(farm_factory: FarmFactory) -> Farm:
    """One instance: every request reaches the one that is frozen."""
    return farm_factory(1)


def test_a_write_nginx_gave_up_on_is_applied_on_resume_and_its_resend_once(lone: Farm) -> None:
    key = secrets.token_urlsafe(12)
    with signed_in(lone.config.balancer_url) as client:
        def add() -> tuple[int, str]:
            answer = client.post("/api/cart/items", json={"sku": "apple", "qty": 1},
                                 headers={"Idempotency-Key": key}, timeout=15)
            return answer.status_code, answer.headers.get("x-served-by", "")

        lone.pause("web1")
        try:
            assert add() == (503, "")  # nginx's read timeout: its own answer, no instance signed it
            time.sleep(1)
        finally:
            lone.resume("web1")
        assert wait_until(lambda: lone.is_serving("web1"), 10)
        # What the frozen instance held was applied when it resumed, though the client was told 503.
        assert wait_until(lambda: client.get("/api/cart").json()["items"] == {"apple": 1}, 2)
        assert add() == (200, "web1")  # the resend: recognised, not applied again
        assert client.get("/api/cart").json()["items"] == {"apple": 1}
