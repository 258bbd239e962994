"""CHAOS=storm's burst: a crowd registers and signs in at once while the users browse.

VISITORS visitors, CONCURRENCY at a time, each from a loopback address of its own (so the
per-address limits do not stop them: the farm's admission control must), register a fresh account
and, if let in, sign in to it - argon2 work on every request that is admitted. Their answers are
counted here, not judged in the ledger: refusing them quickly is the farm doing its job."""

import secrets
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx

from loadtest.addresses import own_address
from loadtest.ledger import percentile

VISITORS = 200
CONCURRENCY = 50
TIMEOUT_S = 10.0
PASSWORD = "storm-password"  # noqa: S105 - throw-away accounts
PATHS = ("register", "login")
VERDICTS = ("admitted", "refused", "failed")


class Storm:
    """One burst against `base_url`; `counts` holds "<path>_admitted|refused|failed" as it goes."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.counts: Counter[str] = Counter()
        self.first_refused_at: float | None = None
        self.refused_ms: list[float] = []
        self.cancelled = threading.Event()

    def run(self, visitors: int = VISITORS, concurrency: int = CONCURRENCY) -> None:
        """Send the burst; return once every visitor has had its answers (or the storm was cancelled)."""
        with ThreadPoolExecutor(concurrency) as pool:
            for _ in pool.map(lambda _: self.visit(), range(visitors)):
                pass

    def summary(self) -> dict[str, int]:
        counts = {f"{path}_{verdict}": self.counts[f"{path}_{verdict}"] for path in PATHS for verdict in VERDICTS}
        return {**counts, "refused_p99_ms": round(percentile(self.refused_ms, 99))}

    def visit(self) -> None:
        if self.cancelled.is_set():
            return
        credentials = {"username": f"st{secrets.token_hex(6)}", "password": PASSWORD}
        transport = httpx.HTTPTransport(local_address=own_address())
        with httpx.Client(base_url=self.base_url, transport=transport, timeout=TIMEOUT_S) as client:
            if self.send(client, "register", credentials) == "admitted":
                self.send(client, "login", credentials)

    def send(self, client: httpx.Client, path: str, credentials: dict[str, str]) -> str:
        """admitted (2xx), refused (429 or 503 with Retry-After: the admission control) or failed."""
        start = time.time()
        try:
            r = client.post(f"/api/{path}", json=credentials)
            refused = r.status_code in (429, 503) and "retry-after" in r.headers
            verdict = "admitted" if r.is_success else "refused" if refused else "failed"
        except httpx.HTTPError:
            verdict = "failed"
        if verdict == "refused":
            self.first_refused_at = self.first_refused_at or time.time()
            self.refused_ms.append((time.time() - start) * 1000)
        self.counts[f"{path}_{verdict}"] += 1
        return verdict
