"""python -m loadtest run|compare - the load test with chaos, and the three-way comparison."""

import argparse
import os
import sys

from farmctl.config import PROJECT_ROOT, FarmConfig
from farmctl.lifecycle import open_farm, running_farm
from farmctl.ports import on_free_ports
from farmctl.runtime import FarmError
from loadtest.faults import MODES, REDIS
from loadtest.report import verdict_table
from loadtest.run import SCENARIOS, LoadSpec, check_chaos, comparison_table, run_scenario, write_comparison
from loadtest.summary import Comparison, LoadSummary


def main(argv: list[str] | None = None) -> int:
    env = os.environ
    parser = argparse.ArgumentParser(prog="loadtest", description=__doc__)
    parser.add_argument("command", choices=["run", "compare"])
    parser.add_argument("--users", type=int, default=int(env.get("USERS") or 0) or None)
    parser.add_argument("--duration", default=env.get("DURATION") or None, help="Locust format: 45s, 2m")
    parser.add_argument("--kill-every", type=float, default=float(env.get("KILL_EVERY") or 0) or None)
    parser.add_argument("--signal", default=env.get("KILL_SIGNAL") or "KILL", choices=["KILL", "TERM"])
    parser.add_argument("--runtime", default=env.get("RUNTIME") or "auto")
    parser.add_argument("--chaos", default=env.get("CHAOS") or "instances", choices=MODES,
                        help="the fault: kill an instance or a Redis primary (REDIS=sentinel|cluster), hang an "
                             "instance, stall Redis, cut an instance off from Redis, a login storm, or all in "
                             "turn (mixed)")
    args = parser.parse_args(argv)

    try:
        if args.command == "run":
            mode = MODES[args.chaos]
            defaults = LoadSpec.for_chaos(mode)
            spec = LoadSpec(users=args.users or defaults.users, duration=args.duration or defaults.duration,
                            kill_every_s=args.kill_every or defaults.kill_every_s, kill_signal=args.signal,
                            chaos=mode)
            out = PROJECT_ROOT / "reports" / "loadtest"
            config = FarmConfig.from_env()
            if mode is REDIS and not env.get("REDIS"):
                config = FarmConfig.from_env(redis_mode="sentinel")  # a primary to kill, a replica to promote
            farm = open_farm(config, args.runtime)
            check_chaos(farm, spec)
            farm.up()  # and left running afterwards, like the farm of `make up` it usually is
            summary = run_scenario(farm, spec, out)
            print("\n" + verdict_table(summary))
            print(f"\nwritten: {out}/summary.json, report.html, timeline.png")
            return 0 if summary.passed else 1

        # Each setup gets a farm of its own on free ports, torn down afterwards.
        spec = LoadSpec(users=args.users or 20, duration=args.duration or "45s",
                        kill_every_s=args.kill_every or 10.0, kill_signal=args.signal)
        out = PROJECT_ROOT / "reports" / "compare"
        summaries: dict[str, LoadSummary] = {}
        for name, (backend, balance) in SCENARIOS.items():
            slug = name.replace(" + ", "-").replace(" ", "")
            config = FarmConfig(instances=int(env.get("N") or 3), session_backend=backend, balance=balance,
                                redis_mode="single", state_dir=PROJECT_ROOT / ".farm" / f"compare-{slug}")
            config = on_free_ports(config)
            with running_farm(config, "native") as farm:
                summaries[name] = run_scenario(farm, spec, out / slug, title=name)
        comparison = Comparison(summaries)
        write_comparison(comparison, out)
        print("\n" + comparison_table(comparison))
        print(f"\nwritten: {out}/summary.json, compare.png (and one folder per setup)")
        return 0
    except FarmError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
