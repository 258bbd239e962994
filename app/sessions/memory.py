"""Sessions in this process's memory ("in-proc"). Correct on ONE server; in a farm every other
instance has never heard of them and a crash forgets them all. Kept for the comparison, and
applying the same rules as the Redis store."""

import time
from collections import Counter
from dataclasses import dataclass, field, replace

from app.metrics import IDEMPOTENT_REPEATS
from app.sessions.base import CartAdd, CartFull, CartRefused, Limits, Session, SessionKey, SessionStore


@dataclass
class _Record:
    session: Session
    epoch: int
    expires: float
    applied: dict[str, float] = field(default_factory=dict)  # request id -> when its add was applied


class MemorySessionStore(SessionStore):
    def __init__(self, limits: Limits) -> None:
        super().__init__(limits)
        self._sessions: dict[str, _Record] = {}
        self._epochs: Counter[str] = Counter()

    async def epoch(self, username: str) -> int:
        return self._epochs[username]

    async def create(self, username: str, created_on: str, epoch: int) -> tuple[SessionKey, Session] | None:
        if epoch != self._epochs[username]:
            return None
        key, now = SessionKey.new(username), time.time()
        session = Session(username, created_on, round(now, 3), 0)
        self._sessions[key.id] = _Record(session, epoch, now + self.limits.idle_timeout_s)
        mine = [sid for sid, r in self._sessions.items() if r.session.username == username]  # oldest first
        for sid in mine[:-self.limits.max_sessions_per_account]:
            del self._sessions[sid]
        return key, session

    async def touch(self, key: SessionKey, add: CartAdd | None = None, requests: int = 1) -> Session | None:
        record = self._sessions.get(key.id)
        if record is None:
            return None
        now = time.time()
        hard_end = record.session.created_at + self.limits.absolute_timeout_s
        if now >= record.expires or now >= hard_end or record.epoch != self._epochs[record.session.username]:
            del self._sessions[key.id]
            return None
        cart = record.session.cart
        record.applied = {rid: at for rid, at in record.applied.items() if at > now - self.limits.applied_window_s}
        if add and add.request_id in record.applied:
            IDEMPOTENT_REPEATS.labels("cart_add").inc()
            requests = 0
        elif add:
            have = cart.get(add.sku, 0)
            if not have and len(cart) >= self.limits.max_cart_items:
                raise CartFull(CartRefused.TOO_MANY_ITEMS)
            if have + add.qty > self.limits.max_item_qty:
                raise CartFull(CartRefused.QUANTITY_TOO_HIGH)
            cart = {**cart, add.sku: have + add.qty}
            if add.request_id:
                record.applied[add.request_id] = now
        record.session = replace(record.session, requests=record.session.requests + requests, cart=cart)
        record.expires = min(now + self.limits.idle_timeout_s, hard_end)
        return record.session

    async def delete(self, key: SessionKey) -> None:
        self._sessions.pop(key.id, None)

    async def delete_user(self, username: str) -> int:
        self._epochs[username] += 1
        doomed = [sid for sid, r in self._sessions.items() if r.session.username == username]
        for sid in doomed:
            del self._sessions[sid]
        return len(doomed)

    async def count_live(self) -> int:
        now = time.time()
        return sum(1 for r in self._sessions.values() if r.expires > now)
