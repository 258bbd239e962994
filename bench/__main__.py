"""python -m bench - wrk against the farm: balancer, session layer in both session modes (near cache,
exact), Redis vs in-process, scaling, peers; Redis commands and CPU per request; latency at a
fixed rate (open loop).

Every configuration runs once per round, rounds alternate in order, and the figures are the
medians; on a small, noisy machine the ratios are what to read, not the absolute numbers."""

import argparse
import sys
import time
from pathlib import Path

from bench.openloop import OpenLoopError
from bench.report import chart, summarize, table
from bench.run import BenchError, BenchSpec, run_bench
from bench.wrk import WrkError
from farmctl.runtime import FarmError


def main(argv: list[str] | None = None) -> int:
    defaults = BenchSpec()
    parser = argparse.ArgumentParser(prog="bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--duration", default=defaults.duration, help="per measurement, wrk's format (3s, 1m)")
    parser.add_argument("--connections", type=int, default=defaults.connections)
    parser.add_argument("--threads", type=int, default=defaults.threads, help="wrk threads")
    parser.add_argument("--instances", type=int, default=defaults.instances, help="scale 1..N (1: the minimum)")
    parser.add_argument("--warmup", default=defaults.warmup, help="an unrecorded pass first; 0 for none")
    parser.add_argument("--rate", type=float, default=defaults.rate,
                        help="requests/s of the open-loop latency measurements")
    parser.add_argument("--out", type=Path, default=defaults.out)
    parser.add_argument("--state-root", type=Path, default=defaults.state_root,
                        help="the bench's farms live in <state-root>/bench-*")
    args = parser.parse_args(argv)
    spec = BenchSpec(rounds=args.rounds, duration=args.duration, connections=args.connections,
                     threads=args.threads, instances=args.instances, warmup=args.warmup, rate=args.rate, out=args.out,
                     state_root=args.state_root)

    started = time.monotonic()
    try:
        found = run_bench(spec)
    except (BenchError, FarmError, WrkError, OpenLoopError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    summary = summarize(spec, found, time.monotonic() - started)
    spec.out.mkdir(parents=True, exist_ok=True)
    summary.write(spec.out / "summary.json")
    chart(summary, spec.out / "bench.png")
    print("\n" + table(summary))
    print(f"\nwritten: {spec.out}/summary.json, {spec.out}/bench.png ({summary.runtime_s:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
