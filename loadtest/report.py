"""Turn a ledger into the verdict: summary.json, the terminal table and the timeline chart."""

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from loadtest.ledger import BROKEN_PROMISES, Ledger, Outcome

#: Requests that start within this many seconds after a kill count as "after a kill".
AFTER_KILL_WINDOW_S = 5.0
FAILURE_COLOURS = {
    Outcome.SESSION_LOST: "#d62728", Outcome.MIXUP: "#8c1aff", Outcome.LOST_UPDATE: "#ff7f0e",
    Outcome.PHANTOM_UPDATE: "#e377c2", Outcome.REQUEST_ERROR: "#7f7f7f", Outcome.INDETERMINATE: "#bcbd22",
}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (a latency that was actually measured); 0 for no values."""
    return float(np.percentile(values, q, method="inverted_cdf")) if values else 0.0


def summarize(ledger: Ledger, users: int, instances: int, **context: object) -> dict[str, Any]:
    outcomes = ledger.outcomes()
    failures = {o.value: outcomes.get(o.value, 0) for o in Outcome if o is not Outcome.OK}
    duration = max(ledger.stopped_at - ledger.started_at, 1e-9)
    latencies = [(r.end - r.start) * 1000 for r in ledger.requests]
    after_kill = [(r.end - r.start) * 1000 for r in ledger.requests
                  if any(0 <= r.start - k.at <= AFTER_KILL_WINDOW_S for k in ledger.kills)]
    steady = [(r.end - r.start) * 1000 for r in ledger.requests
              if not any(0 <= r.start - k.at <= AFTER_KILL_WINDOW_S for k in ledger.kills)]
    returns = [k.returned_at - k.at for k in ledger.kills if k.returned_at is not None]
    broken = sum(failures[o.value] for o in BROKEN_PROMISES)
    unreturned = sum(1 for k in ledger.kills if k.returned_at is None)
    return {
        "verdict": "PASS" if broken == 0 and unreturned == 0 and ledger.requests else "FAIL",
        **context,
        "duration_s": round(duration, 1),
        "users": users,
        "instances": instances,
        "chaos": ledger.settings.get("chaos", "instances"),
        "kill_every_s": ledger.settings.get("kill_every_s"),
        "kill_signal": ledger.settings.get("kill_signal"),
        "kills": len(ledger.kills),
        "returns": len(returns),
        "unreturned": unreturned,
        "return_times_s": [round(t, 2) for t in returns],
        "max_return_s": round(max(returns), 2) if returns else None,
        "requests": len(ledger.requests),
        "failures": failures,
        "sessions_lost": failures[Outcome.SESSION_LOST.value],
        "mixups": failures[Outcome.MIXUP.value],
        "lost_updates": failures[Outcome.LOST_UPDATE.value],
        "per_instance": dict(sorted(Counter(r.served_by for r in ledger.requests if r.served_by).items())),
        "rps": round(len(ledger.requests) / duration, 1),
        "p50_ms": round(percentile(latencies, 50), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "p99_after_kill_ms": round(percentile(after_kill, 99), 1),
        "p99_steady_ms": round(percentile(steady, 99), 1),
    }


def verdict_table(summary: dict[str, Any]) -> str:
    victim = "the Redis primary" if summary.get("chaos") == "redis" else "an instance"
    rows = [
        ("verdict", summary["verdict"]),
        ("duration", f"{summary['duration_s']} s, {summary['users']} users, {summary['instances']} instances"),
        ("chaos", f"SIG{summary['kill_signal']} to {victim} every {summary['kill_every_s']} s"),
        ("kills / returns", f"{summary['kills']} / {summary['returns']}  (back after {summary['return_times_s']} s)"),
        ("requests", f"{summary['requests']}  ({summary['rps']} req/s)"),
        ("latency", f"p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms"),
        ("p99 after a kill", f"{summary['p99_after_kill_ms']} ms  (steady: {summary['p99_steady_ms']} ms)"),
        *((f"  {name}", str(n)) for name, n in summary["failures"].items()),
        ("per instance", ", ".join(f"{k}: {v}" for k, v in summary["per_instance"].items())),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def timeline_chart(ledger: Ledger, path: Path, title: str) -> None:
    """Throughput and failures per second, per-instance share, with kill and return markers."""
    t0 = ledger.started_at
    seconds = int(ledger.stopped_at - t0) + 1
    ok = [0] * seconds
    failed: dict[str, list[int]] = defaultdict(lambda: [0] * seconds)
    served: dict[str, list[int]] = defaultdict(lambda: [0] * seconds)
    for r in ledger.requests:
        second = min(int(r.end - t0), seconds - 1)
        if r.outcome == Outcome.OK:
            ok[second] += 1
        else:
            failed[r.outcome][second] += 1
        if r.served_by:
            served[r.served_by][second] += 1

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True, height_ratios=[3, 2])
    xs = list(range(seconds))
    top.bar(xs, ok, color="#98df8a", width=1.0, label="ok")
    base = list(ok)
    for outcome, colour in FAILURE_COLOURS.items():
        if outcome.value in failed:
            counts = failed[outcome.value]
            top.bar(xs, counts, bottom=base, color=colour, width=1.0, label=outcome.value.replace("_", " "))
            base = [b + c for b, c in zip(base, counts, strict=True)]
    names = sorted(served)
    totals = [sum(served[n][s] for n in names) or 1 for s in range(seconds)]
    bottom.stackplot(xs, *[[served[n][s] / totals[s] * 100 for s in range(seconds)] for n in names], labels=names)
    for axis in (top, bottom):
        for k in ledger.kills:
            axis.axvline(k.at - t0, color="#d62728", linestyle="--", linewidth=1)
            if k.returned_at:
                axis.axvline(k.returned_at - t0, color="#2ca02c", linestyle=":", linewidth=1)
    for k in ledger.kills:
        top.annotate(f"kill {k.name}", (k.at - t0, top.get_ylim()[1]), rotation=90, va="top", ha="right",
                     fontsize=8, color="#d62728")
    top.set_ylabel("requests / s")
    top.set_title(title)
    top.legend(loc="lower left", fontsize=8, ncols=4)
    bottom.set_ylabel("share served (%)")
    bottom.set_xlabel("seconds (red dashes: kill, green dots: back in service)")
    bottom.set_ylim(0, 100)
    bottom.legend(loc="lower left", fontsize=8, ncols=len(names) or 1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def comparison_chart(summaries: dict[str, dict[str, Any]], path: Path) -> None:
    """Side-by-side bars: broken promises and errors per setup, and throughput."""
    labels = list(summaries)
    categories = [o for o in FAILURE_COLOURS if any(s["failures"][o.value] for s in summaries.values())]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), width_ratios=[3, 1])
    width = 0.8 / max(len(categories), 1)
    for i, outcome in enumerate(categories):
        values = [summaries[label]["failures"][outcome.value] for label in labels]
        xs = [x + i * width for x in range(len(labels))]
        bars = left.bar(xs, values, width, color=FAILURE_COLOURS[outcome], label=outcome.value.replace("_", " "))
        left.bar_label(bars, fontsize=8)
    left.set_xticks([x + width * (len(categories) - 1) / 2 for x in range(len(labels))], labels)
    left.set_ylabel("failed requests")
    left.set_title("What each setup broke while instances were being killed")
    if categories:
        left.legend(fontsize=8)
    bars = right.bar(labels, [summaries[label]["rps"] for label in labels], color="#1f77b4")
    right.bar_label(bars, fontsize=8)
    right.set_ylabel("requests / s")
    right.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
