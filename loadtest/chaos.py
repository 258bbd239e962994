"""The chaos monkey: kill a random instance every K seconds through the runtime's own interface
(supervisord natively, the Docker engine otherwise) and time how long it takes to serve again."""

import logging
import random
import threading
import time

from farmctl.runtime import Farm
from loadtest.ledger import KillRecord, Ledger

log = logging.getLogger("chaos")

RETURN_TIMEOUT_S = 30.0


class Chaos:
    def __init__(self, farm: Farm, ledger: Ledger, every_s: float, signal: str = "KILL") -> None:
        if every_s <= 0:
            raise ValueError("the kill interval must be positive")
        self.farm = farm
        self.ledger = ledger
        self.every_s = every_s
        self.signal = signal
        self.down: set[str] = set()
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Kill, every `every_s` seconds, one instance that is serving - never the last one."""
        names = self.farm.instance_names()
        while not self._stop.wait(self.every_s):
            alive = [n for n in names if n not in self.down]
            if len(alive) < 2:
                log.info("chaos: skipping a kill, only %s is serving", alive)
                continue
            victim = random.choice(alive)
            sent_at = time.time()
            self.farm.kill(victim, self.signal)
            record = KillRecord(victim, self.signal, time.time(), sent_at)
            self.ledger.kills.append(record)
            self.down.add(victim)
            log.info("chaos: SIG%s %s at +%.1fs", self.signal, victim, record.at - self.ledger.started_at)
            threading.Thread(target=self._await_return, args=(record,), daemon=True).start()

    def _await_return(self, record: KillRecord) -> None:
        time.sleep(0.3)  # let the supervisor notice the death before asking whether it serves
        deadline = record.at + RETURN_TIMEOUT_S
        while time.time() < deadline:
            if self.farm.is_serving(record.name):
                record.returned_at = time.time()
                log.info("chaos: %s serving again after %.1fs", record.name, record.returned_at - record.at)
                break
            time.sleep(0.1)
        else:
            log.error("chaos: %s did NOT come back within %.0fs", record.name, RETURN_TIMEOUT_S)
        self.down.discard(record.name)
