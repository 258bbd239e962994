"""Session stores: the interface, the shared one (Redis), the in-process one (the anti-pattern),
and a near cache that wraps either."""

from app.sessions.base import CartAdd, CartFull, CartRefused, Limits, Session, SessionKey, SessionStore, StoreState
from app.sessions.memory import MemorySessionStore
from app.sessions.nearcache import NearCache
from app.sessions.redis import RedisSessionStore, refusal

__all__ = ["CartAdd", "CartFull", "CartRefused", "Limits", "MemorySessionStore", "NearCache", "RedisSessionStore",
           "Session", "SessionKey", "SessionStore", "StoreState", "refusal"]
