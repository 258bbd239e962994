"""Turn a ledger into the verdict: summary.json, the terminal table and the timeline chart."""

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from loadtest.faults import MODES, Kill, recorded_as
from loadtest.ledger import BROKEN_PROMISES, Ledger, Outcome, RequestRecord, percentile
from loadtest.serverside import ServerView
from loadtest.storm import PATHS
from loadtest.summary import Comparison, FaultRow, LoadSummary, ServerSide

#: Requests that start within this many seconds after a kill count as "after a kill".
AFTER_KILL_WINDOW_S = 5.0
FAILURE_COLOURS = {
    Outcome.SESSION_LOST: "#d62728", Outcome.MIXUP: "#8c1aff", Outcome.LOST_UPDATE: "#ff7f0e",
    Outcome.PHANTOM_UPDATE: "#e377c2", Outcome.REQUEST_ERROR: "#7f7f7f", Outcome.INDETERMINATE: "#bcbd22",
}


def summarize(ledger: Ledger, users: int, instances: int, *, session_backend: str | None = None,
              balance: str | None = None, redis: str | None = None, runtime: str | None = None,
              server_side: ServerSide | None = None) -> LoadSummary:
    outcomes = ledger.outcomes()
    failures: dict[Outcome, int] = {o: outcomes.get(o.value, 0) for o in Outcome if o is not Outcome.OK}
    duration = max(ledger.stopped_at - ledger.started_at, 1e-9)
    latencies = [(r.end - r.start) * 1000 for r in ledger.requests]
    kills = [f for f in ledger.faults if f.kind == Kill.name]
    after_kill = [(r.end - r.start) * 1000 for r in ledger.requests
                  if any(0 <= r.start - k.at <= AFTER_KILL_WINDOW_S for k in kills)]
    steady = [(r.end - r.start) * 1000 for r in ledger.requests
              if not any(0 <= r.start - k.at <= AFTER_KILL_WINDOW_S for k in kills)]
    returns = [k.recovered_at - k.at for k in kills if k.recovered_at is not None]
    broken = sum(failures[o] for o in BROKEN_PROMISES)
    unrecovered = sum(1 for f in ledger.faults if not f.recovered)
    rows, calm_p99 = fault_metrics(ledger)
    return LoadSummary(
        verdict="PASS" if broken == 0 and unrecovered == 0 and ledger.requests else "FAIL",
        session_backend=session_backend, balance=balance, redis=redis, runtime=runtime,
        duration_s=round(duration, 1),
        users=users,
        instances=instances,
        chaos=ledger.settings.chaos,
        kill_every_s=ledger.settings.kill_every_s,
        kill_signal=ledger.settings.kill_signal,
        kills=len(kills),
        returns=len(returns),
        unreturned=len(kills) - len(returns),
        return_times_s=[round(t, 2) for t in returns],
        max_return_s=round(max(returns), 2) if returns else None,
        requests=len(ledger.requests),
        failures=failures,
        sessions_lost=failures[Outcome.SESSION_LOST],
        mixups=failures[Outcome.MIXUP],
        lost_updates=failures[Outcome.LOST_UPDATE],
        per_instance=dict(sorted(Counter(r.served_by for r in ledger.requests if r.served_by).items())),
        rps=round(len(ledger.requests) / duration, 1),
        p50_ms=round(percentile(latencies, 50), 1),
        p99_ms=round(percentile(latencies, 99), 1),
        p99_after_kill_ms=round(percentile(after_kill, 99), 1),
        p99_steady_ms=round(percentile(steady, 99), 1),
        unrecovered=unrecovered,
        faults=rows,
        p99_between_faults_ms=calm_p99,
        server_side=server_side,
    )


def fault_metrics(ledger: Ledger) -> tuple[list[FaultRow], float]:
    """Per fault: when the farm detected it, how long it lasted, how long the farm took to recover
    once it ended, and what the users saw from its start to that recovery (p99, failed requests by
    outcome, the app's own 503s); and the users' p99 outside every fault, to compare with."""
    def ms(r: RequestRecord) -> float:
        return (r.end - r.start) * 1000

    def between(start: float | None, end: float | None) -> float | None:
        return None if start is None or end is None else round(end - start, 2)

    rows: list[FaultRow] = []
    touched: set[int] = set()
    for f in ledger.faults:
        end = f.recovered_at or ledger.stopped_at
        during = [r for r in ledger.requests if r.start <= end and r.end >= f.sent_at]
        touched.update(id(r) for r in during)
        failed = Counter(Outcome(r.outcome) for r in during if r.outcome != Outcome.OK)
        rows.append(FaultRow(
            kind=f.kind, name=f.name, at_s=round(f.at - ledger.started_at, 1),
            detect_s=between(f.at, f.detected_at), lasted_s=between(f.at, f.lifted_at),
            recover_s=between(f.lifted_at, f.recovered_at), recovered=f.recovered, restarted=f.restarted,
            requests=len(during), failed=sum(failed.values()), failures=dict(sorted(failed.items())),
            app_503=sum(1 for r in during if r.status == 503 and r.served_by),
            p99_ms=round(percentile([ms(r) for r in during], 99), 1),
            storm=f.counts or None,
        ))
    calm = [ms(r) for r in ledger.requests if id(r) not in touched]
    return rows, round(percentile(calm, 99), 1)


def verdict_table(summary: LoadSummary) -> str:
    mode = MODES[summary.chaos]
    faults = summary.faults
    chaos_rows = [
        ("chaos", f"SIG{summary.kill_signal} to {mode.kinds[0].target} every {summary.kill_every_s} s"),
        ("kills / returns", f"{summary.kills} / {summary.returns}  (back after {summary.return_times_s} s)"),
    ] if mode.overlapping else [
        ("chaos", f"{summary.chaos}: a fault every {summary.kill_every_s} s"),
        ("faults / recovered", f"{len(faults)} / {len(faults) - summary.unrecovered}"),
    ]
    latency_row = ("p99 after a kill", f"{summary.p99_after_kill_ms} ms  (steady: {summary.p99_steady_ms} ms)") \
        if mode.overlapping else ("p99 between faults", f"{summary.p99_between_faults_ms} ms  (each fault's below)")
    rows = [
        ("verdict", summary.verdict),
        ("duration", f"{summary.duration_s} s, {summary.users} users, {summary.instances} instances"),
        *chaos_rows,
        ("requests", f"{summary.requests}  ({summary.rps} req/s)"),
        ("latency", f"p50 {summary.p50_ms} ms, p99 {summary.p99_ms} ms"),
        latency_row,
        *((f"  {outcome.value}", str(n)) for outcome, n in summary.failures.items()),
        ("per instance", ", ".join(f"{k}: {v}" for k, v in summary.per_instance.items())),
        *server_side_rows(summary),
    ]
    width = max(len(k) for k, _ in rows)
    table = "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
    return table if mode.overlapping else table + "\n\n" + fault_table(faults)


def server_side_rows(summary: LoadSummary) -> list[tuple[str, str]]:
    """Prometheus' count beside Locust's, in all and per instance. They differ: the ledger has no
    sign-up or first sign-in, nginx may replay a request on a second instance, a killed instance
    takes what it answered since its last scrape with it, and a request no instance answered is
    only the ledger's."""
    server = summary.server_side
    if server is None:
        return []
    if not server.reachable:
        return [("server side", f"none: {server.note}")]
    rows = [("server side", f"Prometheus counted {server.requests} requests (Locust {summary.requests}), "
                            f"{sum(i.errors_5xx for i in server.instances.values())} of them 5xx")]
    for name, counts in server.instances.items():
        p99 = "-" if counts.max_p99_ms is None else f"{counts.max_p99_ms} ms"
        rows.append((f"  {name}", f"{counts.requests} (Locust {summary.per_instance.get(name, 0)}), "
                                  f"{counts.errors_5xx} 5xx, max p99 {p99}"))
    return rows


def fault_table(faults: list[FaultRow]) -> str:
    """One line per fault: seconds to detect, how long it lasted, seconds to recover after it ended."""
    def s(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    lines = [f"{'fault':<22}{'at s':>7}{'detect':>8}{'lasted':>8}{'recover':>9}{'p99 ms':>9}{'requests':>10}"
             f"{'failed':>8}{'app 503':>9}  notes"]
    for f in faults:
        notes = [] if f.recovered else ["NOT RECOVERED"]
        if f.restarted is not None:
            notes.append("restarted by the farm" if f.restarted else "not restarted: resumed by the chaos")
        if storm := f.storm:
            notes += [f"{path} {storm[path + '_admitted']} admitted / {storm[path + '_refused']} refused / "
                      f"{storm[path + '_failed']} failed" for path in PATHS]
            notes.append(f"refusals p99 {storm['refused_p99_ms']} ms")
        lines.append(f"{f.kind + ' ' + f.name:<22}{f.at_s:>7.1f}{s(f.detect_s):>8}{s(f.lasted_s):>8}"
                     f"{s(f.recover_s):>9}{f.p99_ms:>9.1f}{f.requests:>10}{f.failed:>8}{f.app_503:>9}"
                     f"  {'; '.join(notes)}")
    return "\n".join(lines)


def timeline_chart(ledger: Ledger, path: Path, title: str, server: ServerView | None = None) -> None:
    """timeline.png: see timeline_figure."""
    fig = timeline_figure(ledger, title, server)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def timeline_figure(ledger: Ledger, title: str, server: ServerView | None = None) -> Any:
    """Throughput and failures per second, per-instance share, with kill and return markers; below
    them, with `server`'s series, what the farm's Prometheus saw of each instance over the same
    seconds (request and 5xx rate, p99), the faults marked alike."""
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

    drawn = server if server is not None and server.rate else None
    if drawn:
        fig, (top, bottom, rate, p99) = plt.subplots(4, 1, figsize=(11, 12), sharex=True, height_ratios=[3, 2, 2, 2])
    else:
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
    # One colour per instance on every panel, the client's share and the server's lines alike.
    colours = {name: f"C{i}" for i, name in enumerate(sorted(set(names) | set(drawn.rate if drawn else ())))}
    totals = [sum(served[n][s] for n in names) or 1 for s in range(seconds)]
    bottom.stackplot(xs, *[[served[n][s] / totals[s] * 100 for s in range(seconds)] for n in names], labels=names,
                     colors=[colours[n] for n in names])
    shaded = [top]
    if drawn:
        server_panels(drawn, top, rate, p99, colours)
        shaded += [rate, p99]
    mark_faults(ledger, shaded=shaded, bounded=[bottom])
    for f in ledger.faults:
        top.annotate(f"{f.kind} {f.name}", (f.at - t0, top.get_ylim()[1]), rotation=90, va="top", ha="right",
                     fontsize=8, color=recorded_as(f.kind).colour)
    top.set_ylabel("requests / s")
    top.set_title(title)
    top.legend(loc="lower left", fontsize=8, ncols=4)
    bottom.set_ylabel("share served (%)")
    spans = any(not recorded_as(f.kind).instant for f in ledger.faults)
    missing = f"\nserver side: none, {server.summary.note or 'Prometheus has no series of the run'}" \
        if server is not None and not drawn else ""
    (p99 if drawn else bottom).set_xlabel(
        "seconds (red dashes: kill, green dots: back in service" +
        (", shaded and bounded in the colour of its label: a fault, start to end)" if spans else ")") + missing)
    bottom.set_ylim(0, 100)
    bottom.legend(loc="lower left", fontsize=8, ncols=len(names) or 1)
    fig.tight_layout()
    return fig


def server_panels(server: ServerView, top: Any, rate: Any, p99: Any, colours: dict[str, str]) -> None:
    """Prometheus' view: its count of all instances over the client's bars, and per instance its
    request rate (5xx dashed) and p99, one line each - broken where it has no figure."""
    window = f"{server.summary.rate_window_s:g} s rate"
    # The farm's rate: the instances' that have a figure at that time.
    farm = [sum(v for v in values if math.isfinite(v)) if any(math.isfinite(v) for v in values) else math.nan
            for values in zip(*server.rate.values(), strict=True)]
    top.plot(server.times, farm, color="black", linewidth=1.2, label=f"server side, all ({window})")
    for name, values in server.rate.items():
        rate.plot(server.times, values, color=colours[name], linewidth=1.5, label=name)
        if any(v > 0 for v in server.errors.get(name, [])):
            rate.plot(server.times, server.errors[name], color=colours[name], linestyle="--", linewidth=1.2,
                      label=f"{name} 5xx")
    for name, values in server.p99_ms.items():
        p99.plot(server.times, values, color=colours.get(name, "black"), linewidth=1.5, label=name)
    rate.set_ylabel(f"server side\nrequests / s ({window})")
    rate.set_ylim(bottom=0)
    rate.legend(loc="lower left", fontsize=8, ncols=2 * len(server.rate) or 1)
    p99.set_ylabel("server side\np99 (ms, histogram)")
    p99.set_yscale("log")


def mark_faults(ledger: Ledger, shaded: Sequence[Any], bounded: Sequence[Any]) -> None:
    """Each fault on the timeline's panels: a kill (an instant fault) as a dashed line on every one;
    another from its start to its end (lifted, or the farm's restart) shaded on `shaded` (behind
    bars and lines), bounded by two lines on `bounded` (where a stackplot would hide a shade); its
    return to service as a green dotted line."""
    t0 = ledger.started_at
    for f in ledger.faults:
        kind = recorded_as(f.kind)
        colour, start, end = kind.colour, f.at - t0, (f.lifted_at or ledger.stopped_at) - t0
        if kind.instant:
            for axis in (*shaded, *bounded):
                axis.axvline(start, color=colour, linestyle="--", linewidth=1)
        else:
            for axis in shaded:
                axis.axvspan(start, end, color=colour, alpha=0.3, linewidth=0, zorder=0)
            for axis in bounded:
                for x in (start, end):
                    axis.axvline(x, color=colour, linewidth=1.5)
        if f.recovered_at:
            for axis in (*shaded, *bounded):
                axis.axvline(f.recovered_at - t0, color="#2ca02c", linestyle=":", linewidth=1)


def comparison_chart(comparison: Comparison, path: Path) -> None:
    """Side-by-side bars: broken promises and errors per setup, and throughput."""
    summaries = comparison.root
    labels = list(summaries)
    categories = [o for o in FAILURE_COLOURS if any(s.failures[o] for s in summaries.values())]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), width_ratios=[3, 1])
    width = 0.8 / max(len(categories), 1)
    for i, outcome in enumerate(categories):
        values = [summaries[label].failures[outcome] for label in labels]
        xs = [x + i * width for x in range(len(labels))]
        bars = left.bar(xs, values, width, color=FAILURE_COLOURS[outcome], label=outcome.value.replace("_", " "))
        left.bar_label(bars, fontsize=8)
    left.set_xticks([x + width * (len(categories) - 1) / 2 for x in range(len(labels))], labels)
    left.set_ylabel("failed requests")
    left.set_title("What each setup broke while instances were being killed")
    if categories:
        left.legend(fontsize=8)
    bars = right.bar(labels, [summaries[label].rps for label in labels], color="#1f77b4")
    right.bar_label(bars, fontsize=8)
    right.set_ylabel("requests / s")
    right.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
