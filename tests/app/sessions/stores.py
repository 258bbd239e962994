"""The stores under test, and a user with a session in one: shared by the tests of each store."""

import secrets

from redis.asyncio import Redis

from app import keys
from app.sessions import Limits, MemorySessionStore, RedisSessionStore, Session, SessionKey, SessionStore

PREFIX = "test"


def redis_store(redis: Redis, idle: int = 60, absolute: int = 3600, **limits: int) -> RedisSessionStore:
    return RedisSessionStore(redis, PREFIX, Limits(idle, absolute, **limits))


def memory_store(**limits: int) -> MemorySessionStore:
    return MemorySessionStore(Limits(60, 3600, **limits))


def new_username() -> str:
    """One no other test uses: the stores' state outlives a test."""
    return secrets.token_hex(5)


def same_tag(n: int) -> list[str]:
    """`n` new usernames whose keys share one tag (app.keys), so one slot and one live index."""
    first = new_username()
    names = [first]
    while len(names) < n:
        if keys.tag_of(keys.uid(name := new_username())) == keys.tag_of(keys.uid(first)):
            names.append(name)
    return names


async def start(store: SessionStore, username: str = "alice") -> tuple[SessionKey, Session]:
    """Sign `username` in, the way a login does: the epoch first, then the session."""
    started = await store.create(username, "web1", await store.epoch(username))
    assert started is not None
    return started
