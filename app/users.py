"""Accounts, shared by every instance in Redis; passwords hashed with argon2id."""

import secrets
import time

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from redis.asyncio import Redis

from app.admission import Admission
from app.metrics import IDEMPOTENT_REPEATS

# KEYS: user. ARGV: password hash, created_at, request id. Idempotent: the same request id
# that created the account finds it created (a retry after a dropped connection is not a 409): 2.
_REPEATED = 2
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
    if redis.call('HGET', KEYS[1], 'created_by') == ARGV[3] then return 2 end
    return 0
end
redis.call('HSET', KEYS[1], 'password_hash', ARGV[1], 'created_at', ARGV[2], 'created_by', ARGV[3])
return 1
"""


class UserStore:
    def __init__(self, redis: Redis, prefix: str, hasher: PasswordHasher, admission: Admission) -> None:
        """Hashes run on the admission's threads (at most ARGON2_CONCURRENCY at once); admitting the
        requests that need them is the caller's part (app.deps.admitted)."""
        self.redis = redis
        self.prefix = prefix
        self.hasher = hasher
        self.admission = admission
        self._create = redis.register_script(_CREATE)
        # Verified against when the user does not exist, so that "no such user" costs as much
        # time as "wrong password" and the two cannot be told apart.
        self._dummy_hash = hasher.hash("not-a-real-password")

    def _key(self, username: str) -> str:
        return f"{self.prefix}:user:{username}"

    async def create(self, username: str, password: str, request_id: str = "") -> bool:
        """Register a user; False if the name is taken (checked and written in one script). The same
        `request_id` again (a retry) finds the account it created, not a name taken."""
        request_id = request_id or secrets.token_urlsafe(12)
        created_by = await self.redis.hget(self._key(username), "created_by")
        if created_by is not None:  # spare the hash for a name that is taken
            return self._repeat() if created_by == request_id else False
        password_hash = await self.admission.run(self.hasher.hash, password)
        created = await self._create([self._key(username)], [password_hash, str(time.time()), request_id])
        return self._repeat() if created == _REPEATED else bool(created)

    @staticmethod
    def _repeat() -> bool:
        IDEMPOTENT_REPEATS.labels("register").inc()
        return True

    async def authenticate(self, username: str, password: str) -> bool:
        stored = await self.redis.hget(self._key(username), "password_hash")
        return await self.admission.run(self._verify, stored or self._dummy_hash, password) and bool(stored)

    def _verify(self, password_hash: str | bytes, password: str) -> bool:
        try:
            return self.hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    async def set_password(self, username: str, password: str) -> None:
        password_hash = await self.admission.run(self.hasher.hash, password)
        await self.redis.hset(self._key(username), "password_hash", password_hash)
