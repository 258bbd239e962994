"""The session store interface, its record, and the key a cookie is parsed into (once, at the edge)."""

import hashlib
import re
import secrets
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import TracebackType
from typing import Self

from app import keys
from app.config import CART_MAX_ITEMS, CART_MAX_QTY, IDEMPOTENCY_WINDOW_S, SESSION_MAX_PER_ACCOUNT

TOKEN_BYTES = 32
_TOKEN_RE = re.compile(rf"([0-9a-f]{{{keys.UID_HEX}}})\.[A-Za-z0-9_-]{{43}}")


@dataclass(frozen=True)
class SessionKey:
    """A session token as the browser holds it, and the id the store keys it by: its SHA-256,
    so that whoever reads a Redis dump or MONITOR cannot replay a session. The token starts with
    its user's id (app.keys), which tells the store where the user's keys are; it is part of what
    is hashed, so a token with another user's id is no session at all."""

    token: str
    id: str
    uid: str

    @property
    def tag(self) -> str:
        return keys.tag_of(self.uid)

    @classmethod
    def parse(cls, token: str) -> "SessionKey | None":
        """None if the token cannot be one of ours (so a malformed cookie never reaches the store)."""
        if not (match := _TOKEN_RE.fullmatch(token)):
            return None
        return cls(token, hashlib.sha256(token.encode()).hexdigest(), match[1])

    @classmethod
    def new(cls, username: str) -> "SessionKey":
        """The user's id, then 256 random bits from the CSPRNG, URL-safe (43 characters)."""
        key = cls.parse(f"{keys.uid(username)}.{secrets.token_urlsafe(TOKEN_BYTES)}")
        assert key is not None
        return key


@dataclass(frozen=True)
class Session:
    username: str
    created_on: str
    created_at: float
    requests: int
    cart: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class CartAdd:
    """Add `qty` of `sku`. `request_id` makes the add idempotent: the same id applies once, however
    often the command reaches the store (a client retry, or the Redis client's own after a dropped
    connection)."""

    sku: str
    qty: int
    request_id: str = ""


class CartRefused(StrEnum):
    TOO_MANY_ITEMS = "too many different items in the cart"
    QUANTITY_TOO_HIGH = "quantity of one item too high"


class CartFull(Exception):
    def __init__(self, reason: CartRefused) -> None:
        super().__init__(reason.value)
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    """The rules every store applies the same way."""

    idle_timeout_s: int
    absolute_timeout_s: int
    max_cart_items: int = CART_MAX_ITEMS
    max_item_qty: int = CART_MAX_QTY
    #: A login past it ends the account's oldest session (not refused: a refusal would let whoever
    #: knows the password lock the owner out by signing in 100 times).
    max_sessions_per_account: int = SESSION_MAX_PER_ACCOUNT
    #: How long a cart add's request id is remembered; the record ends with its session anyway.
    applied_window_s: int = IDEMPOTENCY_WINDOW_S

    @property
    def idle_ms(self) -> int:
        return self.idle_timeout_s * 1000

    @property
    def absolute_ms(self) -> int:
        return self.absolute_timeout_s * 1000

    @property
    def applied_ms(self) -> int:
        return self.applied_window_s * 1000


class StoreState(StrEnum):
    """Whether the store takes writes (/readyz and the farm panel say which)."""

    OK = "ok"
    #: At its memory limit: reads and the ending of sessions still work, nothing new is written.
    FULL = "full"
    #: It cannot persist (its disk is full or failing): reads work, every write is refused, logout included.
    NOT_PERSISTING = "not persisting"

    @property
    def refusal(self) -> str:
        """The detail of the 503 a refused write gets: what an operator has to fix."""
        return _REFUSALS[self]


_REFUSALS = {
    StoreState.OK: "session store unavailable",
    StoreState.FULL: "session store full (maxmemory reached): it refuses writes; reads and logouts still work",
    StoreState.NOT_PERSISTING: "session store cannot persist (disk full or failing): it refuses writes, "
                               "logouts included",
}


class SessionStore(ABC):
    """What the app needs from a session store; every method is atomic.

    A login reads the user's `epoch` before it checks the password and starts its session with
    it; ending every session of a user (or a password change) moves the epoch on. A session whose
    epoch is not the user's current one is dead, so a login that raced the ending cannot survive it."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        return None

    @abstractmethod
    async def epoch(self, username: str) -> int:
        """The user's current epoch; read it before checking the password, pass it to `create`."""

    @abstractmethod
    async def create(self, username: str, created_on: str, epoch: int) -> tuple[SessionKey, Session] | None:
        """Start a session; None if the user's sessions were ended since `epoch` was read. Past
        `limits.max_sessions_per_account` the user's oldest session ends."""

    @abstractmethod
    async def touch(self, key: SessionKey, add: CartAdd | None = None, requests: int = 1) -> Session | None:
        """Validate, count `requests`, slide the idle expiry and optionally add to the cart
        (raises CartFull past the limits). None if the session does not exist (any more). A store that
        refuses writes still validates (nothing counted, the expiry not slid); an add then fails."""

    def cached(self, key: SessionKey) -> Session | None:
        """Who holds this key, if this store can say from memory alone (no I/O, so no deadline
        needed); None when it cannot - then ask `identify`. A store without a cache never can."""
        return None

    async def identify(self, key: SessionKey) -> Session | None:
        """Who holds this key - identity only, the cart left empty. A wrapper may answer it from a
        cache; use `touch` for anything that needs the cart."""
        session = await self.touch(key)
        return replace(session, cart={}) if session else None

    @abstractmethod
    async def delete(self, key: SessionKey) -> None:
        """End one session, on every instance at once - also when the store is full."""

    @abstractmethod
    async def delete_user(self, username: str) -> int:
        """End every session of a user, including any a login in flight is about to start - also
        when the store is full; returns how many existed. They end at once, whatever their number;
        removing them may take longer, in steps short enough not to hold the store up."""

    @abstractmethod
    async def count_live(self) -> int:
        """Sessions that have not expired (as far as this store can see)."""
