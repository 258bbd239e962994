"""The stores under test, and a user with a session in one: shared by the tests of each store."""

from redis.asyncio import Redis

from app.sessions import Limits, MemorySessionStore, RedisSessionStore, Session, SessionKey, SessionStore

PREFIX = "test"


def redis_store(redis: Redis, idle: int = 60, absolute: int = 3600, **limits: int) -> RedisSessionStore:
    return RedisSessionStore(redis, PREFIX, Limits(idle, absolute, **limits))


def memory_store(**limits: int) -> MemorySessionStore:
    return MemorySessionStore(Limits(60, 3600, **limits))


def new_username() -> str:
    """One no other test uses: the stores' state outlives a test."""
    return SessionKey.new().token[:10].lower()


async def start(store: SessionStore, username: str = "alice") -> tuple[SessionKey, Session]:
    """Sign `username` in, the way a login does: the epoch first, then the session."""
    started = await store.create(username, "web1", await store.epoch(username))
    assert started is not None
    return started
