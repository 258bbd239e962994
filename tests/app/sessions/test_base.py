"""The store interface (app/sessions/base.py): the key a cookie is parsed into, and the rules every
store applies the same way - checked on the Redis one and the in-process one alike."""

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from app.config import CART_MAX_ITEMS, CART_MAX_QTY
from app.keys import UID_HEX, uid
from app.redis_client import close, connect_redis
from app.sessions import CartAdd, CartFull, CartRefused, Limits, RedisSessionStore, SessionKey, SessionStore
from tests.app.conftest import settings_of
from tests.app.sessions.stores import memory_store, new_username, redis_store, start


def test_new_key_has_256_random_bits_after_its_users_id() -> None:
    keys = {SessionKey.new("alice") for _ in range(1000)}
    assert len({k.token for k in keys}) == 1000
    assert all(k.token.startswith(f"{uid('alice')}.") and len(k.token) == UID_HEX + 1 + 43
               and SessionKey.parse(k.token) == k and k.uid == uid("alice") for k in keys)


UID = "0" * UID_HEX + "."


@pytest.mark.parametrize("token", ["", "short", "A" * 43, UID + "A" * 42, UID + "A" * 44, UID + "A" * 42 + "=",
                                   UID + "é" * 43, UID + "A" * 42 + "\n", "0" * 19 + "." + "A" * 43,
                                   "G" * UID_HEX + "." + "A" * 43, UID[:-1] + "-" + "A" * 43])
def test_parse_rejects_what_cannot_be_a_token(token: str) -> None:
    assert SessionKey.parse(token) is None


def test_limits_default_to_the_settings_defaults() -> None:
    limits = Limits(60, 3600)
    assert (limits.max_cart_items, limits.max_item_qty) == (CART_MAX_ITEMS, CART_MAX_QTY)


@pytest.fixture(params=["single", "cluster", "memory"])
async def store(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[SessionStore]:
    """Both stores apply the same rules, the Redis one on a single Redis and on a cluster alike; the
    in-process one only fails at being shared."""
    if request.param == "memory":
        yield memory_store(max_cart_items=3, max_item_qty=10)
        return
    client = connect_redis(settings_of(request, redis_url))
    yield redis_store(client, max_cart_items=3, max_item_qty=10)
    await close(client)


async def test_an_add_repeated_with_its_request_id_applies_once(store: SessionStore) -> None:
    key, _ = await start(store, new_username())
    for _ in range(3):
        session = await store.touch(key, CartAdd("apple", 2, request_id="req-1"))
    assert session is not None
    assert session.cart == {"apple": 2}
    assert session.requests == 1  # the repeats are not requests of their own either
    again = await store.touch(key, CartAdd("apple", 2, request_id="req-2"))
    assert again is not None
    assert again.cart == {"apple": 4}


async def test_cart_limits_refuse_and_change_nothing(store: SessionStore) -> None:
    key, _ = await start(store, new_username())
    for sku in ("a", "b", "c"):
        await store.touch(key, CartAdd(sku, 1))
    with pytest.raises(CartFull) as refused:
        await store.touch(key, CartAdd("d", 1))
    assert refused.value.reason is CartRefused.TOO_MANY_ITEMS
    with pytest.raises(CartFull) as refused:
        await store.touch(key, CartAdd("a", 10))
    assert refused.value.reason is CartRefused.QUANTITY_TOO_HIGH
    session = await store.touch(key, CartAdd("a", 9))  # exactly at the limit
    assert session is not None
    assert session.cart == {"a": 10, "b": 1, "c": 1}


async def test_delete_user_ends_all_of_a_users_sessions(store: SessionStore) -> None:
    alice, bob = new_username(), new_username()
    alices = [(await start(store, alice))[0] for _ in range(3)]
    bobs, _ = await start(store, bob)
    assert await store.delete_user(alice) == 3
    assert all([await store.touch(k) is None for k in alices])
    assert await store.touch(bobs) is not None
    assert await store.touch((await start(store, alice))[0]) is not None  # a new login works


async def test_a_login_that_read_the_epoch_before_delete_user_cannot_start(store: SessionStore) -> None:
    alice = new_username()
    epoch = await store.epoch(alice)  # the login read it, then spent its time on argon2 ...
    await store.delete_user(alice)  # ... while the user signed out everywhere
    assert await store.create(alice, "web1", epoch) is None


async def test_signing_in_past_the_cap_ends_the_oldest_sessions(redis: Redis) -> None:
    for store in (redis_store(redis, max_sessions_per_account=3), memory_store(max_sessions_per_account=3)):
        alice, bob = new_username(), new_username()
        bobs, _ = await start(store, bob)
        keys = [(await start(store, alice))[0] for _ in range(5)]
        assert [await store.touch(k) is not None for k in keys] == [False, False, True, True, True]
        assert await store.touch(bobs) is not None
        assert await store.delete_user(alice) == 3


async def test_an_add_is_remembered_for_the_idempotency_window_only(store: SessionStore) -> None:
    """Within the window a retry finds its add applied; after it, the record is gone (and so a
    retry that late applies again - the window is chosen to cover every retry)."""
    short = redis_store(store.redis, applied_window_s=1) if isinstance(store, RedisSessionStore) \
        else memory_store(applied_window_s=1)
    key, _ = await start(short, new_username())
    await short.touch(key, CartAdd("apple", 1, request_id="req-1"))
    again = await short.touch(key, CartAdd("apple", 1, request_id="req-1"))
    assert again is not None
    assert again.cart == {"apple": 1}
    await asyncio.sleep(1.1)
    late = await short.touch(key, CartAdd("apple", 1, request_id="req-1"))
    assert late is not None
    assert late.cart == {"apple": 2}
