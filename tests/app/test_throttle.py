"""The login throttle on a real Redis: decided and counted atomically, and no lockout of others."""

import asyncio
import secrets

import pytest
from redis.asyncio import Redis

from app.throttle import LoginThrottle


@pytest.fixture
def throttle(redis: Redis) -> LoginThrottle:
    # A prefix of its own per test: the counters outlive a test by their window.
    return LoginThrottle(redis, f"t{secrets.token_hex(4)}", per_pair=5, per_account=20, per_address=20,
                         window_s=60, register_per_address=3, register_window_s=60)


async def test_concurrent_guesses_evaluate_at_most_the_limit(throttle: LoginThrottle) -> None:
    verdicts = await asyncio.gather(*(throttle.attempt("alice", "10.0.0.1") for _ in range(40)))
    assert sum(v.allowed for v in verdicts) == 5
    refused = [v for v in verdicts if not v.allowed]
    assert all(55 <= v.retry_after_s <= 60 for v in refused)


async def test_a_success_clears_its_pair_only(throttle: LoginThrottle) -> None:
    for _ in range(4):
        assert (await throttle.attempt("alice", "10.0.0.1")).allowed
    await throttle.succeeded("alice", "10.0.0.1")
    for _ in range(5):
        assert (await throttle.attempt("alice", "10.0.0.1")).allowed
    assert not (await throttle.attempt("alice", "10.0.0.1")).allowed


async def test_spraying_from_an_address_does_not_lock_out_an_account_used_from_there(
        throttle: LoginThrottle) -> None:
    assert (await throttle.attempt("demo", "10.0.0.1")).allowed
    await throttle.succeeded("demo", "10.0.0.1")  # the owner signed in from here before
    for i in range(20):  # the attacker, at the same address, sprays other accounts
        assert (await throttle.attempt(f"victim{i}", "10.0.0.1")).allowed
    assert not (await throttle.attempt("newcomer", "10.0.0.1")).allowed  # a new pair waits ...
    assert (await throttle.attempt("demo", "10.0.0.1")).allowed  # ... the known one does not
    assert (await throttle.attempt("newcomer", "10.0.0.2")).allowed  # nor anyone elsewhere


async def test_distributed_guessing_at_one_account_spares_its_known_addresses(throttle: LoginThrottle) -> None:
    assert (await throttle.attempt("alice", "10.0.0.1")).allowed
    await throttle.succeeded("alice", "10.0.0.1")
    for i in range(20):
        assert (await throttle.attempt("alice", f"192.0.2.{i}")).allowed
    assert not (await throttle.attempt("alice", "192.0.2.200")).allowed
    assert (await throttle.attempt("alice", "10.0.0.1")).allowed


async def test_registrations_are_limited_per_address(throttle: LoginThrottle) -> None:
    verdicts = await asyncio.gather(*(throttle.register("10.0.0.1") for _ in range(10)))
    assert sum(v.allowed for v in verdicts) == 3
    assert (await throttle.register("10.0.0.2")).allowed
