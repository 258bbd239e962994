"""The bench's verdict: medians, the ratios that count, a table, summary.json and a chart."""

import os
import platform
import statistics
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.openloop import OpenLoopResult
from bench.redisstats import Counts, background_rate, per_request
from bench.run import CLUSTER, FLOOR_OF_MODE, MODES, PEERS, BenchSpec, Measurements, Sample, farm_of
from bench.summary import (
    BenchSummary,
    FixedRate,
    FixedRateRound,
    FixedRateRow,
    FixedRateSummary,
    Latency,
    Machine,
    ModeFigures,
    PeerRow,
    Result,
    ScalingRow,
    Section,
    SectionRow,
    Settings,
    SlowestPeak,
    WrkRound,
)
from bench.wrk import wrk_binary

Results = dict[str, Result]

#: What issue #12 asks of /api/me vs /healthz through nginx, per mode (reported, not enforced).
GOALS = {"exact": 0.70, "near": 0.90}
#: What issue #23 asks of /api/me against its floor (bench.floors), per mode (reported, not enforced).
FLOOR_GOALS = {"exact": 0.80, "near": 0.70}
MODE_LABELS = {"near": "near cache (as shipped)", "exact": "exact (SESSION_NEAR_CACHE_S=0)"}
CPU_GROUPS = ("app", "nginx", "redis", "wrk", "other")
SCRIPTS = ("evalsha", "eval", "fcall", "evalsha_ro", "eval_ro", "fcall_ro")


def machine() -> Machine:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        cpuinfo = []
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
                 platform.processor() or "unknown")
    # `wrk -v` prints its version and usage, and exits 1.
    wrk = subprocess.run([wrk_binary(), "-v"], capture_output=True, text=True, check=False).stdout
    return Machine(nproc=len(os.sched_getaffinity(0)), cpu_model=model, kernel=platform.release(),
                   python=platform.python_version(), wrk=" ".join(wrk.split()[:2]))


def redis_per_request(runs: list[Sample], background: Counts) -> Counts:
    """Median over rounds of each command's calls per request, background subtracted; commands
    under 0.001 per request (noise around zero) left out."""
    each = [per_request(s.redis_calls, s.redis_seconds, background, s.wrk.requests) for s in runs]
    names = set().union(*each)
    medians = {name: statistics.median(e.get(name, 0.0) for e in each) for name in names}
    return {name: round(v, 3) for name, v in sorted(medians.items(), key=lambda kv: -kv[1]) if v >= 0.001}


def fixed_rate_row(runs: list[OpenLoopResult]) -> FixedRate:
    def median(field: str) -> float:
        return round(statistics.median(float(getattr(r, field)) for r in runs), 3)

    return FixedRate(**{f: median(f) for f in ("achieved_rps", "p50_ms", "p90_ms", "p99_ms", "max_ms", "lag_p50_ms",
                                                "lag_p99_ms")},
                     connections=max(r.connections for r in runs),
                     rounds=[FixedRateRound(p50_ms=round(r.p50_ms, 3), p99_ms=round(r.p99_ms, 3),
                                            max_ms=round(r.max_ms, 3), achieved_rps=r.achieved_rps) for r in runs])


def medians(found: Measurements) -> Results:
    background = {name: background_rate(windows) for name, windows in found.idle.items()}
    results: Results = {}
    for target in found.todo:
        runs = found.samples[target.key]
        commands = redis_per_request(runs, background[farm_of(target.system)])
        fixed = found.fixed_rate.get(target.key)
        results[target.key] = Result(
            label=target.label,
            system=target.system,
            url=target.url,
            behind_nginx=target.active,
            rps=round(statistics.median(s.wrk.rps for s in runs), 1),
            p50_ms=round(statistics.median(s.wrk.p50_ms for s in runs), 3),
            p99_ms=round(statistics.median(s.wrk.p99_ms for s in runs), 3),
            cpu_busy=round(statistics.median(s.cpu.busy_fraction for s in runs), 3),
            cpu_us_per_request={g: round(statistics.median(s.cpu.us_per_request[g] for s in runs), 1)
                                for g in CPU_GROUPS},
            redis_commands_per_request=commands,
            redis_commands_total=round(sum(commands.values()), 3),
            redis_scripts_per_request=round(sum(v for k, v in commands.items() if k in SCRIPTS), 3),
            rounds=[WrkRound(rps=s.wrk.rps, p50_ms=s.wrk.p50_ms, p99_ms=s.wrk.p99_ms,
                             socket_errors=s.wrk.socket_errors, cpu_busy=round(s.cpu.busy_fraction, 3))
                    for s in runs],
            fixed_rate=fixed_rate_row(fixed) if fixed else None,
        )
    return results


def peer_keys() -> dict[str, list[str]]:
    """mode -> the peers compared with it."""
    return {mode: [f"{name}/me" for name, peer in PEERS.items() if peer.versus == mode] for mode in MODES}


def sections(instances: int) -> list[tuple[str, list[str]]]:
    """(title, keys); each row's ratio is against the section's first row."""
    n = instances
    s = "s" * (n > 1)
    peers = peer_keys()
    return [
        *((f"0{part}. {mode} against its floor (bench/floors.py): GET /api/me, one process direct",
           [f"direct-{FLOOR_OF_MODE[mode]}/me", f"direct-{mode}/me"]) for part, mode in zip("ab", MODES, strict=True)),
        *((f"0{part}. ... and through nginx ({n} instance{s})",
           [f"{FLOOR_OF_MODE[mode]}-nginx-{n}/me", f"{'' if mode == 'near' else mode + '-'}nginx-{n}/me"])
          for part, mode in zip("cd", MODES, strict=True)),
        ("1. the balancer's cost: GET /healthz, one instance", ["direct/healthz", "nginx-1/healthz"]),
        ("1b. ... and its latency: one connection, so no queueing", ["direct-1conn/healthz", "nginx-1-1conn/healthz"]),
        (f"2a. the session layer's cost through nginx ({n} instance{s}): near cache (as shipped)",
         [f"nginx-{n}/healthz", f"nginx-{n}/me"]),
        ("2b. ... exact (SESSION_NEAR_CACHE_S=0: a Redis round trip per request)",
         [f"exact-nginx-{n}/healthz", f"exact-nginx-{n}/me"]),
        ("3. Redis vs in-process sessions: GET /api/me, one instance direct",
         ["direct-memory/me", "direct-near/me", "direct-exact/me"]),
        (f"4a. scaling: GET /healthz through nginx, 1..{n} instances", [f"nginx-{k}/healthz" for k in range(1, n + 1)]),
        (f"4b. scaling: GET /api/me through nginx, 1..{n} instances", [f"nginx-{k}/me" for k in range(1, n + 1)]),
        ("5a. sessions in Redis, read and written per request: one process direct",
         ["direct-exact/me", *peers["exact"]]),
        ("5b. sessions without a store round trip per request: one process direct",
         ["direct-near/me", *peers["near"]]),
        *((f"6{part}. what the metrics cost, {mode}: GET /api/me, one process direct, METRICS=0 vs as shipped",
           [f"direct-{mode}-m0/me", f"direct-{mode}/me"]) for part, mode in zip("ab", MODES, strict=True)),
        ("7a. exact on a Redis Cluster (3 primaries, 3 replicas) vs one Redis: GET /api/me, one process direct",
         ["direct-exact/me", f"direct-{CLUSTER}/me"]),
        (f"7b. ... and through nginx ({n} instance{s})", [f"exact-nginx-{n}/me", f"{CLUSTER}-nginx-{n}/me"]),
    ]


def _ratio(results: Results, key: str, baseline: str) -> float:
    return round(results[key].rps / results[baseline].rps, 3)


def fixed_rate_of(result: Result) -> FixedRate:
    if result.fixed_rate is None:
        raise ValueError(f"{result.label} was not measured at a fixed rate")
    return result.fixed_rate


def modes(results: Results, n: int) -> dict[str, ModeFigures]:
    """Per session mode: the ratio issue #12 sets a goal for, and what one authenticated request costs."""
    out: dict[str, ModeFigures] = {}
    for mode in MODES:
        prefix = "" if mode == "near" else f"{mode}-"
        me, healthz, direct = results[f"{prefix}nginx-{n}/me"], results[f"{prefix}nginx-{n}/healthz"], \
            results[f"direct-{mode}/me"]
        out[mode] = ModeFigures(
            label=MODE_LABELS[mode],
            instance_env=MODES[mode],
            healthz_rps=healthz.rps,
            me_rps=me.rps,
            session_ratio=_ratio(results, f"{prefix}nginx-{n}/me", f"{prefix}nginx-{n}/healthz"),
            goal=GOALS[mode],
            direct_me_rps=direct.rps,
            direct_session_ratio=_ratio(results, f"direct-{mode}/me", "direct/healthz"),
            redis_commands_per_request=me.redis_commands_per_request,
            redis_commands_total=me.redis_commands_total,
            redis_scripts_per_request=me.redis_scripts_per_request,
            cpu_us_per_request=me.cpu_us_per_request,
            cpu_us_per_request_healthz=healthz.cpu_us_per_request,
            fixed_rate=Latency.model_validate(fixed_rate_of(me), from_attributes=True),
            floor=FLOOR_OF_MODE[mode],
            floor_ratio_direct=_ratio(results, f"direct-{mode}/me", f"direct-{FLOOR_OF_MODE[mode]}/me"),
            floor_ratio_nginx=_ratio(results, f"{prefix}nginx-{n}/me", f"{FLOOR_OF_MODE[mode]}-nginx-{n}/me"),
            floor_goal=FLOOR_GOALS[mode],
        )
    return out


def peers(results: Results) -> dict[str, dict[str, PeerRow]]:
    """mode -> ours (one process direct) and the peers compared with it, like for like."""
    out: dict[str, dict[str, PeerRow]] = {}
    for mode, keys in peer_keys().items():
        ours = f"direct-{mode}/me"
        rows = {f"webfarm {mode}": ours, **{k.removesuffix("/me"): k for k in keys}}
        out[mode] = {name: PeerRow(rps=results[k].rps, ratio_vs_webfarm=_ratio(results, k, ours),
                                   redis_commands_total=results[k].redis_commands_total,
                                   redis_commands_per_request=results[k].redis_commands_per_request,
                                   cpu_us_per_request=results[k].cpu_us_per_request,
                                   fixed_rate_p50_ms=fixed_rate_of(results[k]).p50_ms,
                                   fixed_rate_p99_ms=fixed_rate_of(results[k]).p99_ms)
                     for name, k in rows.items()}
    return out


def summarize(spec: BenchSpec, found: Measurements, runtime_s: float) -> BenchSummary:
    results = medians(found)
    n = spec.instances
    info = machine()
    scaling = [ScalingRow(instances=k, healthz_rps=results[f"nginx-{k}/healthz"].rps,
                          me_rps=results[f"nginx-{k}/me"].rps,
                          healthz_vs_one=_ratio(results, f"nginx-{k}/healthz", "nginx-1/healthz"),
                          me_vs_one=_ratio(results, f"nginx-{k}/me", "nginx-1/me"),
                          cpu_busy=results[f"nginx-{k}/me"].cpu_busy) for k in range(1, n + 1)]
    open_loop = [k for k, r in results.items() if r.fixed_rate is not None]
    slowest = min(open_loop, key=lambda k: results[k].rps)
    return BenchSummary(
        machine=info,
        settings=Settings(rounds=spec.rounds, duration=spec.duration, connections=spec.connections,
                          threads=spec.threads, instances=n, warmup=spec.warmup, rate=spec.rate),
        runtime_s=round(runtime_s, 1),
        balancer_ratio=_ratio(results, "nginx-1/healthz", "direct/healthz"),
        balancer_ratio_one_connection=_ratio(results, "nginx-1-1conn/healthz", "direct-1conn/healthz"),
        balancer_latency_us=round(1000 * (results["nginx-1-1conn/healthz"].p50_ms
                                          - results["direct-1conn/healthz"].p50_ms)),
        modes=modes(results, n),
        redis_vs_memory_ratio={mode: _ratio(results, f"direct-{mode}/me", "direct-memory/me") for mode in MODES},
        metrics_cost={mode: round(1 - _ratio(results, f"direct-{mode}/me", f"direct-{mode}-m0/me"), 3)
                      for mode in MODES},
        cluster_vs_single={"direct": _ratio(results, f"direct-{CLUSTER}/me", "direct-exact/me"),
                           "nginx": _ratio(results, f"{CLUSTER}-nginx-{n}/me", f"exact-nginx-{n}/me")},
        background_cpu_share=background_share(results),
        redis_background_per_s={name: {k: round(v, 2) for k, v in sorted(background_rate(w).items())}
                                for name, w in found.idle.items()},
        scaling=scaling,
        scaling_note=scaling_note(scaling, info.nproc),
        peers=peers(results),
        fixed_rate=FixedRateSummary(
            rate=spec.rate, seconds=found.fixed_rate[open_loop[0]][0].seconds,
            measured_by="bench/openloop.py: open loop, latency from the scheduled send",
            slowest_peak=SlowestPeak(key=slowest, rps=results[slowest].rps,
                                     rate_share=round(spec.rate / results[slowest].rps, 3)),
            rows={k: FixedRateRow(label=results[k].label, **fixed_rate_of(results[k]).model_dump())
                  for k in open_loop}),
        sections=[Section(title=title, baseline=keys[0],
                          rows=[SectionRow(key=k, ratio=_ratio(results, k, keys[0])) for k in keys])
                  for title, keys in sections(n)],
        results=results,
    )


def background_share(results: Results) -> float:
    """The median share of the CPU, per measurement, that went to none of the processes measured
    (other work on this machine): a noise gauge for the run."""
    shares = [r.cpu_us_per_request["other"] / max(sum(r.cpu_us_per_request.values()), 1e-9)
              for r in results.values()]
    return round(statistics.median(shares), 3)


def scaling_note(scaling: list[ScalingRow], nproc: int) -> str:
    steps = ", ".join(f"{row.instances}: {row.me_vs_one:.2f}x" for row in scaling)
    full = scaling[min(nproc, len(scaling)) - 1]
    return (f"GET /api/me through nginx (near cache), vs one instance: {steps}. One instance is one Python process "
            f"(one event loop), so it can use one core; the cores were then {scaling[0].cpu_busy:.0%} busy. "
            f"This machine has {nproc}, shared by wrk, nginx's workers, Redis and every instance, and with "
            f"{full.instances} instance(s) they were {full.cpu_busy:.0%} busy: from there another "
            f"instance adds a process to schedule, not a core to run on, so throughput stops growing. More "
            f"instances add throughput only with more cores (or hosts); on one small host they buy failover, "
            f"not speed.")


def _commands(commands: dict[str, float]) -> str:
    shown = [f"{name} {v:.2f}" for name, v in commands.items() if v >= 0.005]
    return ", ".join(shown) or "-"


def table(summary: BenchSummary) -> str:
    results, info, settings = summary.results, summary.machine, summary.settings
    lines = [f"webfarm bench: {settings.rounds} round(s) x {settings.duration}, "
             f"wrk -t{settings.threads} -c{settings.connections}, medians; "
             f"{info.nproc} core(s), {info.cpu_model}",
             f"{'':<66}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'ratio':>8}"]
    for section in summary.sections:
        lines.append(section.title)
        for row in section.rows:
            r = results[row.key]
            lines.append(f"  {r.label:<64}{r.rps:>9.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}"
                         f"{row.ratio:>8.2f}")
    lines += ["", "key ratios (throughput, medians)",
              f"  balancer_ratio         {summary.balancer_ratio:.2f}  nginx -> web1 vs web1 direct, GET /healthz; "
              f"one connection: {summary.balancer_ratio_one_connection:.2f}, "
              f"+{summary.balancer_latency_us} us at p50"]
    for mode, m in summary.modes.items():
        lines.append(f"  floor_ratio {mode:<10} {m.floor_ratio_direct:.2f}  GET /api/me vs {m.floor} "
                     f"(bench/floors.py), one process direct; goal {m.floor_goal:.2f}; "
                     f"through nginx: {m.floor_ratio_nginx:.2f}")
    for mode, m in summary.modes.items():
        lines.append(f"  session_ratio {mode:<8} {m.session_ratio:.2f}  GET /api/me vs GET /healthz through nginx "
                     f"({settings.instances} instances), {m.label}; goal {m.goal:.2f}; "
                     f"direct: {m.direct_session_ratio:.2f}")
    lines.append("  redis_vs_memory_ratio  " + ", ".join(f"{mode} {v:.2f}" for mode, v in
                                                        summary.redis_vs_memory_ratio.items())
                 + "  GET /api/me vs in-process sessions, one instance direct")
    if summary.metrics_cost:
        lines.append("  metrics_cost           " + ", ".join(f"{mode} {v:+.1%}" for mode, v in
                                                            summary.metrics_cost.items())
                     + "  of GET /api/me's throughput, one process direct, against METRICS=0")
    lines.append("  scaling (/api/me)      " + ", ".join(f"{s.instances}: {s.me_vs_one:.2f}"
                                                        for s in summary.scaling))
    for mode, rows in summary.peers.items():
        lines.append(f"  peers vs {mode:<13} " + ", ".join(f"{name} {p.ratio_vs_webfarm:.2f}"
                                                           for name, p in rows.items()))

    background = "; ".join(f"{name}: {sum(b.values()):.1f}/s" for name, b in summary.redis_background_per_s.items())
    lines += ["", "Redis commands per request (INFO commandstats over each wrk run, less the idle rate: "
              f"{background}; a script's own calls count as well as its EVALSHA)",
              f"  {'':<64}{'total':>7}{'scripts':>9}  by command"]
    for r in results.values():
        lines.append(f"  {r.label:<64}{r.redis_commands_total:>7.2f}{r.redis_scripts_per_request:>9.2f}  "
                     + _commands(r.redis_commands_per_request))

    fixed = summary.fixed_rate
    slowest = fixed.slowest_peak
    lines += ["", f"Latency at a fixed {fixed.rate:g} req/s for {fixed.seconds:g} s, open loop "
              "(bench/openloop.py: from the scheduled send, so a stall counts for every request it delays); "
              f"{slowest.rate_share:.0%} of the slowest peak here ({results[slowest.key].label})",
              f"  {'':<64}{'req/s':>7}{'p50 ms':>8}{'p90 ms':>8}{'p99 ms':>8}{'max ms':>8}{'lag p99':>9}"]
    for at_rate in fixed.rows.values():
        lines.append(f"  {at_rate.label:<64}{at_rate.achieved_rps:>7.0f}{at_rate.p50_ms:>8.2f}"
                     f"{at_rate.p90_ms:>8.2f}{at_rate.p99_ms:>8.2f}{at_rate.max_ms:>8.2f}{at_rate.lag_p99_ms:>9.2f}")

    lines += ["", "CPU per request (us, medians) by process group, and how busy all cores were",
              f"  {'':<64}" + "".join(f"{g:>7}" for g in CPU_GROUPS) + f"{'busy':>7}"]
    for r in results.values():
        cpu = r.cpu_us_per_request
        lines.append(f"  {r.label:<64}" + "".join(f"{cpu[g]:>7.0f}" for g in CPU_GROUPS) + f"{r.cpu_busy:>7.0%}")
    lines += ["", summary.scaling_note]
    if summary.background_cpu_share > 0.1:
        lines += ["", f"note: other work on this machine took {summary.background_cpu_share:.0%} of the CPU in the "
                  "median measurement (column other): the absolute figures are noisy; the ratios, from "
                  "alternating rounds, less so."]
    return "\n".join(lines)


def chart(summary: BenchSummary, path: Path) -> None:
    """Left: every comparison as bars (whiskers: slowest and fastest round); right: scaling, latency
    at the fixed rate, CPU per request by process."""
    results = summary.results
    fig = plt.figure(figsize=(18, 11))
    grid = fig.add_gridspec(3, 2, width_ratios=[3, 2])
    left = fig.add_subplot(grid[:, 0])
    colours = [f"C{i}" for i in range(10)]  # matplotlib's default cycle
    compared = [s for s in summary.sections if not s.title.startswith("4")]
    labels: list[str] = []
    positions: list[float] = []
    y = 0.0
    for number, section in enumerate(compared):
        for row in section.rows:
            r = results[row.key]
            rps = [run.rps for run in r.rounds]
            spread = [[max(0.0, r.rps - min(rps))], [max(0.0, max(rps) - r.rps)]]
            left.barh(y, r.rps, color=colours[number % len(colours)], xerr=spread, capsize=3)
            left.text(max(rps), y, f" {r.rps:.0f}  x{row.ratio:.2f}", va="center", fontsize=8)
            labels.append(r.label)
            positions.append(y)
            y -= 1
        y -= 0.5
    left.set_yticks(positions, labels, fontsize=8)
    left.set_xlabel("requests/s (median)")
    left.set_title("throughput; ratio = vs the first bar of its group")
    left.margins(x=0.25)

    scaling = fig.add_subplot(grid[0, 1])
    counts = [s.instances for s in summary.scaling]
    for key, name in (("healthz_rps", "GET /healthz"), ("me_rps", "GET /api/me, near cache")):
        values = [getattr(s, key) for s in summary.scaling]
        scaling.plot(counts, values, marker="o", label=name)
        scaling.plot(counts, [values[0] * c for c in counts], linestyle=":", color="grey")
    scaling.axvline(summary.machine.nproc, color="red", linestyle="--", linewidth=1,
                    label=f"{summary.machine.nproc} cores")
    scaling.set_xticks(counts)
    scaling.set_xlabel("instances behind nginx")
    scaling.set_ylabel("requests/s (median)")
    scaling.set_title("scaling (dotted: linear)")
    scaling.legend(fontsize=8)
    scaling.set_ylim(bottom=0)

    fixed = summary.fixed_rate
    latency = fig.add_subplot(grid[1, 1])
    rows = list(fixed.rows.values())
    ys = list(range(len(rows)))[::-1]
    latency.barh([y + 0.2 for y in ys], [r.p50_ms for r in rows], height=0.4, label="p50")
    latency.barh([y - 0.2 for y in ys], [r.p99_ms for r in rows], height=0.4, label="p99")
    latency.set_yticks(ys, [r.label for r in rows], fontsize=7)
    latency.set_xlabel("ms from the scheduled send (median of rounds)")
    latency.set_title(f"latency at a fixed {fixed.rate:g} req/s, open loop")
    latency.legend(fontsize=8)

    cpu = fig.add_subplot(grid[2, 1])
    keys = [k for k, r in results.items() if k.endswith("/me") and r.fixed_rate is not None]
    ys = list(range(len(keys)))[::-1]
    lefts = [0.0] * len(keys)
    for number, group in enumerate(CPU_GROUPS):
        values = [results[k].cpu_us_per_request[group] for k in keys]
        cpu.barh(ys, values, left=lefts, color=colours[number], label=group)
        lefts = [a + b for a, b in zip(lefts, values, strict=True)]
    cpu.set_yticks(ys, [results[k].label for k in keys], fontsize=7)
    cpu.set_xlabel("CPU us per request (median), under wrk")
    cpu.set_title("where the CPU goes, by process group")
    cpu.legend(fontsize=7, loc="upper right")
    cpu.margins(x=0.2)

    settings = summary.settings
    fig.suptitle(f"webfarm bench: wrk -t{settings.threads} -c{settings.connections}, "
                 f"{settings.rounds} x {settings.duration}, {summary.machine.nproc} cores")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
