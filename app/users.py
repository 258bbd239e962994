"""Accounts, shared by every instance in Redis; passwords hashed with argon2id."""

import time

from anyio import to_thread
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from redis.asyncio import Redis


class UserStore:
    def __init__(self, redis: Redis, prefix: str, hasher: PasswordHasher) -> None:
        self.redis = redis
        self.prefix = prefix
        self.hasher = hasher
        # Verified against when the user does not exist, so that "no such user" costs as much
        # time as "wrong password" and the two cannot be told apart.
        self._dummy_hash = hasher.hash("not-a-real-password")

    def _key(self, username: str) -> str:
        return f"{self.prefix}:user:{username}"

    async def create(self, username: str, password: str) -> bool:
        """Register a user; False if the name is taken (the check and the write are one HSETNX)."""
        if await self.redis.exists(self._key(username)):
            return False
        password_hash = await to_thread.run_sync(self.hasher.hash, password)
        created = await self.redis.hsetnx(self._key(username), "password_hash", password_hash)
        if created:
            await self.redis.hset(self._key(username), "created_at", str(time.time()))
        return bool(created)

    async def authenticate(self, username: str, password: str) -> bool:
        stored = await self.redis.hget(self._key(username), "password_hash")
        try:
            return await to_thread.run_sync(self.hasher.verify, stored or self._dummy_hash, password) and bool(stored)
        except (VerificationError, InvalidHashError):
            return False

    async def set_password(self, username: str, password: str) -> None:
        password_hash = await to_thread.run_sync(self.hasher.hash, password)
        await self.redis.hset(self._key(username), "password_hash", password_hash)
