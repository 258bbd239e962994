"""The chaos monkey: kill a random instance every K seconds through the runtime's own interface
(supervisord natively, the Docker engine otherwise) and time how long it takes to serve again.

With target="redis" (REDIS=sentinel, native) it kills the Redis PRIMARY instead, and times the
failover: until the Sentinels name a new primary and the balancer's /readyz answers 200."""

import logging
import random
import threading
import time
from collections.abc import Callable

from farmctl import redis_ha
from farmctl.runtime import Farm
from farmctl.wait import answers, wait_until
from loadtest.ledger import KillRecord, Ledger

log = logging.getLogger("chaos")

RETURN_TIMEOUT_S = 30.0


class Chaos:
    def __init__(self, farm: Farm, ledger: Ledger, every_s: float, signal: str = "KILL",
                 target: str = "instances") -> None:
        if every_s <= 0:
            raise ValueError("the kill interval must be positive")
        if target not in ("instances", "redis"):
            raise ValueError(f"CHAOS must be instances or redis, not {target!r}")
        if target == "redis" and not farm.config.sentinel:
            raise ValueError("CHAOS=redis needs a farm with REDIS=sentinel: without a replica there is no failover")
        self.farm = farm
        self.target = target
        self.ledger = ledger
        self.every_s = every_s
        self.signal = signal
        self.down: set[str] = set()
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Every `every_s` seconds, kill one instance that is serving (never the last one) - or the
        Redis primary, when a replica is in sync to take over."""
        while not self._stop.wait(self.every_s):
            if self.target == "redis":
                self._kill_primary()
            else:
                self._kill_instance()

    def _kill_instance(self) -> None:
        alive = [n for n in self.farm.instance_names() if n not in self.down]
        if len(alive) < 2:
            log.info("chaos: skipping a kill, only %s is serving", alive)
            return
        record = self._kill(random.choice(alive))
        threading.Thread(target=self._await_return, args=(record,), daemon=True).start()

    def _kill_primary(self) -> None:
        config = self.farm.config
        primary = redis_ha.primary_name(config)
        if self.down or primary is None or not redis_ha.failover_ready(config):
            log.info("chaos: skipping a kill, no replica in sync with the primary (%s) yet", primary)
            return
        record = self._kill(primary)
        threading.Thread(target=self._await_failover, args=(record,), daemon=True).start()

    def _kill(self, victim: str) -> KillRecord:
        sent_at = time.time()
        self.farm.kill(victim, self.signal)
        record = KillRecord(victim, self.signal, time.time(), sent_at)
        self.ledger.kills.append(record)
        self.down.add(victim)
        log.info("chaos: SIG%s %s at +%.1fs", self.signal, victim, record.at - self.ledger.started_at)
        return record

    def _await_return(self, record: KillRecord) -> None:
        time.sleep(0.3)  # let the supervisor notice the death before asking whether it serves
        self._await(record, lambda: self.farm.is_serving(record.name), "serving again")

    def _await_failover(self, record: KillRecord) -> None:
        def failed_over() -> bool:
            primary = redis_ha.primary_name(self.farm.config)
            if primary is None or primary == record.name:
                return False
            return answers(f"{self.farm.config.balancer_url}/readyz", 2)

        self._await(record, failed_over, "replaced by a new primary")

    def _await(self, record: KillRecord, back: Callable[[], bool], what: str) -> None:
        if wait_until(back, record.at + RETURN_TIMEOUT_S - time.time()):
            record.returned_at = time.time()
            log.info("chaos: %s %s after %.1fs", record.name, what, record.returned_at - record.at)
        else:
            log.error("chaos: %s NOT %s within %.0fs", record.name, what, RETURN_TIMEOUT_S)
        self.down.discard(record.name)
