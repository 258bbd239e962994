"""The bench's verdict: medians, the ratios that count, a table, summary.json and a chart."""

import os
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.run import BenchSpec, Sample, Target
from bench.wrk import wrk_binary

Results = dict[str, dict[str, Any]]


def machine() -> dict[str, Any]:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        cpuinfo = []
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
                 platform.processor() or "unknown")
    # `wrk -v` prints its version and usage, and exits 1.
    wrk = subprocess.run([wrk_binary(), "-v"], capture_output=True, text=True, check=False).stdout
    return {"nproc": len(os.sched_getaffinity(0)), "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(), "wrk": " ".join(wrk.split()[:2])}


def medians(todo: list[Target], samples: dict[str, list[Sample]]) -> Results:
    results: Results = {}
    for target in todo:
        runs = samples[target.key]
        groups = runs[0].cpu.us_per_request
        results[target.key] = {
            "label": target.label,
            "url": target.url,
            "behind_nginx": target.active,
            "rps": round(statistics.median(s.wrk.rps for s in runs), 1),
            "p50_ms": round(statistics.median(s.wrk.p50_ms for s in runs), 3),
            "p99_ms": round(statistics.median(s.wrk.p99_ms for s in runs), 3),
            "cpu_busy": round(statistics.median(s.cpu.busy_fraction for s in runs), 3),
            "cpu_us_per_request": {g: round(statistics.median(s.cpu.us_per_request[g] for s in runs), 1)
                                   for g in groups},
            "rounds": [{"rps": s.wrk.rps, "p50_ms": s.wrk.p50_ms, "p99_ms": s.wrk.p99_ms,
                        "socket_errors": s.wrk.socket_errors, "cpu_busy": round(s.cpu.busy_fraction, 3)}
                       for s in runs],
        }
    return results


def sections(instances: int, peers: list[str]) -> list[tuple[str, list[str]]]:
    """(title, keys); each row's ratio is against the section's first row."""
    n = instances
    return [
        ("1. the balancer's cost: GET /healthz, one instance", ["direct/healthz", "nginx-1/healthz"]),
        ("1b. ... and its latency: one connection, so no queueing", ["direct-1conn/healthz", "nginx-1-1conn/healthz"]),
        (f"2. the session layer's cost through nginx ({n} instance{'s' * (n > 1)})",
         [f"nginx-{n}/healthz", f"nginx-{n}/me"]),
        ("3. Redis vs in-process sessions: GET /api/me, one instance direct", ["direct-memory/me", "direct/me"]),
        (f"4a. scaling: GET /healthz through nginx, 1..{n} instances", [f"nginx-{k}/healthz" for k in range(1, n + 1)]),
        (f"4b. scaling: GET /api/me through nginx, 1..{n} instances", [f"nginx-{k}/me" for k in range(1, n + 1)]),
        ("5. session libraries: GET /api/me, one process direct", ["direct/me", *(f"{p}/me" for p in peers)]),
    ]


def _ratio(results: Results, key: str, baseline: str) -> float:
    return round(float(results[key]["rps"]) / float(results[baseline]["rps"]), 3)


def summarize(spec: BenchSpec, todo: list[Target], samples: dict[str, list[Sample]], runtime_s: float,
              peers: list[str]) -> dict[str, Any]:
    results = medians(todo, samples)
    n = spec.instances
    info = machine()
    scaling = [{"instances": k, "healthz_rps": results[f"nginx-{k}/healthz"]["rps"],
                "me_rps": results[f"nginx-{k}/me"]["rps"],
                "healthz_vs_one": _ratio(results, f"nginx-{k}/healthz", "nginx-1/healthz"),
                "me_vs_one": _ratio(results, f"nginx-{k}/me", "nginx-1/me"),
                "cpu_busy": results[f"nginx-{k}/me"]["cpu_busy"]} for k in range(1, n + 1)]
    cpu = {key: results[key]["cpu_us_per_request"] for key in ("direct/healthz", "direct-memory/me", "direct/me")}
    return {
        "machine": info,
        "settings": {"rounds": spec.rounds, "duration": spec.duration, "connections": spec.connections,
                     "threads": spec.threads, "instances": n, "warmup": spec.warmup},
        "runtime_s": round(runtime_s, 1),
        "balancer_ratio": _ratio(results, "nginx-1/healthz", "direct/healthz"),
        "balancer_ratio_one_connection": _ratio(results, "nginx-1-1conn/healthz", "direct-1conn/healthz"),
        "balancer_latency_us": round(1000 * (results["nginx-1-1conn/healthz"]["p50_ms"]
                                             - results["direct-1conn/healthz"]["p50_ms"])),
        "session_ratio": _ratio(results, f"nginx-{n}/me", f"nginx-{n}/healthz"),
        "session_ratio_one_instance": _ratio(results, "nginx-1/me", "nginx-1/healthz"),
        "session_ratio_direct": _ratio(results, "direct/me", "direct/healthz"),
        "redis_vs_memory_ratio": _ratio(results, "direct/me", "direct-memory/me"),
        "background_cpu_share": background_share(results),
        "scaling": scaling,
        "scaling_note": scaling_note(scaling, info["nproc"]),
        "peers": {"webfarm": {k: results["direct/me"][k] for k in ("rps", "p50_ms", "p99_ms")}} | {
            p: {**{k: results[f"{p}/me"][k] for k in ("rps", "p50_ms", "p99_ms")},
                "ratio_vs_webfarm": _ratio(results, f"{p}/me", "direct/me")} for p in peers},
        # CPU microseconds per request of one instance, direct: the app's Python work on /healthz, on
        # /api/me with in-process sessions, and with Redis (plus Redis's own share).
        "authenticated_request_cpu_us": {
            "app_healthz": cpu["direct/healthz"]["app"],
            "app_me_memory": cpu["direct-memory/me"]["app"],
            "app_me_redis": cpu["direct/me"]["app"],
            "redis_server_me_redis": cpu["direct/me"]["redis"],
        },
        "sections": [{"title": title, "baseline": keys[0],
                      "rows": [{"key": k, "ratio": _ratio(results, k, keys[0])} for k in keys]}
                     for title, keys in sections(n, peers)],
        "results": results,
    }


def background_share(results: Results) -> float:
    """The median share of the CPU, per measurement, that went to none of the processes measured
    (other work on this machine): a noise gauge for the run."""
    shares: list[float] = [r["cpu_us_per_request"]["other"] / max(sum(r["cpu_us_per_request"].values()), 1e-9)
                           for r in results.values()]
    return round(statistics.median(shares), 3)


def scaling_note(scaling: list[dict[str, Any]], nproc: int) -> str:
    steps = ", ".join(f"{row['instances']}: {row['me_vs_one']:.2f}x" for row in scaling)
    full = scaling[min(nproc, len(scaling)) - 1]
    return (f"GET /api/me through nginx, vs one instance: {steps}. One instance is one Python process (one "
            f"event loop), so it can use one core; the cores were then {scaling[0]['cpu_busy']:.0%} busy. "
            f"This machine has {nproc}, shared by wrk, nginx's workers, Redis and every instance, and with "
            f"{full['instances']} instance(s) they were {full['cpu_busy']:.0%} busy: from there another "
            f"instance adds a process to schedule, not a core to run on, so throughput stops growing. More "
            f"instances add throughput only with more cores (or hosts); on one small host they buy failover, "
            f"not speed.")


def table(summary: dict[str, Any]) -> str:
    results, info, settings = summary["results"], summary["machine"], summary["settings"]
    lines = [f"webfarm bench: {settings['rounds']} round(s) x {settings['duration']}, "
             f"wrk -t{settings['threads']} -c{settings['connections']}, medians; "
             f"{info['nproc']} core(s), {info['cpu_model']}",
             f"{'':<56}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'ratio':>8}"]
    for section in summary["sections"]:
        lines.append(section["title"])
        for row in section["rows"]:
            r = results[row["key"]]
            lines.append(f"  {r['label']:<54}{r['rps']:>9.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
                         f"{row['ratio']:>8.2f}")
    peers = ", ".join(f"{name} {p['ratio_vs_webfarm']:.2f}" for name, p in summary["peers"].items()
                      if name != "webfarm")
    lines += [
        "",
        "key ratios (throughput, medians)",
        f"  balancer_ratio         {summary['balancer_ratio']:.2f}  nginx -> web1 vs web1 direct, GET /healthz; "
        f"one connection: {summary['balancer_ratio_one_connection']:.2f}, "
        f"+{summary['balancer_latency_us']} us at p50",
        f"  session_ratio          {summary['session_ratio']:.2f}  GET /api/me vs GET /healthz through nginx "
        f"({settings['instances']} instances); one instance: {summary['session_ratio_one_instance']:.2f}, "
        f"direct: {summary['session_ratio_direct']:.2f}",
        f"  redis_vs_memory_ratio  {summary['redis_vs_memory_ratio']:.2f}  GET /api/me, Redis vs in-process, "
        "one instance direct",
        "  scaling (/api/me)      " + ", ".join(f"{s['instances']}: {s['me_vs_one']:.2f}" for s in summary["scaling"]),
        f"  peers vs webfarm       {peers}",
        "",
        "CPU per request (us, medians) and how busy all cores were",
        f"  {'':<54}{'app':>7}{'nginx':>7}{'redis':>7}{'wrk':>7}{'other':>7}{'busy':>7}",
    ]
    for r in results.values():
        cpu = r["cpu_us_per_request"]
        lines.append(f"  {r['label']:<54}" + "".join(f"{cpu[g]:>7.0f}" for g in ("app", "nginx", "redis", "wrk",
                                                                                 "other"))
                     + f"{r['cpu_busy']:>7.0%}")
    lines += ["", summary["scaling_note"]]
    if summary["background_cpu_share"] > 0.1:
        lines += ["", f"note: other work on this machine took {summary['background_cpu_share']:.0%} of the CPU in the "
                  "median measurement (column other): the absolute figures are noisy; the ratios, from "
                  "alternating rounds, less so."]
    return "\n".join(lines)


def chart(summary: dict[str, Any], path: Path) -> None:
    """Left: every comparison as bars (whiskers: slowest and fastest round); right: scaling."""
    results = summary["results"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 6), width_ratios=[3, 2])
    colours = [f"C{i}" for i in range(10)]  # matplotlib's default cycle
    compared = [s for s in summary["sections"] if not s["title"].startswith("4")]
    labels: list[str] = []
    positions: list[float] = []
    y = 0.0
    for number, section in enumerate(compared):
        for row in section["rows"]:
            r = results[row["key"]]
            rps = [run["rps"] for run in r["rounds"]]
            spread = [[max(0.0, r["rps"] - min(rps))], [max(0.0, max(rps) - r["rps"])]]
            left.barh(y, r["rps"], color=colours[number % len(colours)], xerr=spread, capsize=3)
            left.text(max(rps), y, f" {r['rps']:.0f}  x{row['ratio']:.2f}", va="center", fontsize=8)
            labels.append(r["label"])
            positions.append(y)
            y -= 1
        y -= 0.5
    left.set_yticks(positions, labels, fontsize=8)
    left.set_xlabel("requests/s (median)")
    left.set_title("ratio = vs the first bar of its group")
    left.margins(x=0.25)

    counts = [s["instances"] for s in summary["scaling"]]
    for key, name in (("healthz_rps", "GET /healthz"), ("me_rps", "GET /api/me")):
        values = [s[key] for s in summary["scaling"]]
        right.plot(counts, values, marker="o", label=name)
        right.plot(counts, [values[0] * c for c in counts], linestyle=":", color="grey")
    right.axvline(summary["machine"]["nproc"], color="red", linestyle="--", linewidth=1,
                  label=f"{summary['machine']['nproc']} cores")
    right.set_xticks(counts)
    right.set_xlabel("instances behind nginx")
    right.set_ylabel("requests/s (median)")
    right.set_title("scaling (dotted: linear)")
    right.legend()
    right.set_ylim(bottom=0)
    settings = summary["settings"]
    fig.suptitle(f"webfarm bench: wrk -t{settings['threads']} -c{settings['connections']}, "
                 f"{settings['rounds']} x {settings['duration']}, {summary['machine']['nproc']} cores")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
