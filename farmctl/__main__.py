"""python -m farmctl up|down|status|logs|roll|restart|kill|render-docker - what the Makefile calls."""

import argparse
import os
import sys
from pathlib import Path

from farmctl.config import FarmConfig
from farmctl.docker.console import url as console_url
from farmctl.docker.render import render_docker
from farmctl.runtime import UNSUPERVISED, FarmError, as_rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="farmctl", description=__doc__)
    parser.add_argument("--runtime", default=os.environ.get("RUNTIME") or "auto",
                        choices=["auto", "native", "docker"])  # farmctl.lifecycle.RUNTIMES
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start the farm (or apply a changed N) and wait until it is healthy")
    sub.add_parser("down", help="stop everything and free the ports")
    sub.add_parser("status", help="each process: name, port, pid, up/down")
    logs = sub.add_parser("logs", help="follow the logs")
    logs.add_argument("names", nargs="*")
    sub.add_parser("roll", help="restart every instance, one by one, without failing a request")
    restart = sub.add_parser("restart", help="restart one process through the supervisor (e.g. redis)")
    restart.add_argument("name")
    kill = sub.add_parser("kill", help="send a signal to one process through the supervisor")
    kill.add_argument("name")
    kill.add_argument("--signal", default="KILL")
    render = sub.add_parser("render-docker", help="write the Docker runtime's nginx and Sentinel configs")
    render.add_argument("--out", type=Path, required=True)
    render.add_argument("--instances", type=int, default=3)
    render.add_argument("--balance", default=os.environ.get("BALANCE") or "round_robin")
    args = parser.parse_args(argv)

    if args.command == "render-docker":
        render_docker(args.out, args.instances, args.balance, os.environ.get("PROXY_SECRET", ""))
        return 0
    # Imported here: the Docker image renders its configs above, and has no supervisor nor psutil.
    from farmctl.lifecycle import open_farm

    try:
        farm = open_farm(FarmConfig.from_env(), args.runtime)
        if args.command == "up":
            farm.up()
            https = f" (HTTPS, self-signed: {farm.config.https_url})" if farm.config.https_url else ""
            redis = ", Redis primary + replica + 3 Sentinels" if farm.config.sentinel else \
                ", a Redis Cluster of 3 primaries + 3 replicas" if farm.config.cluster else ""
            print(f"webfarm is up ({farm.name} runtime, {farm.config.instances} instances{redis}): "
                  f"{farm.config.balancer_url}{https}")
            if farm.config.prometheus_port:
                print(f"Prometheus: http://127.0.0.1:{farm.config.prometheus_port} (every instance's /metrics)")
            if farm.config.console:
                where = console_url(farm.config) if farm.name == "docker" else f"{farm.config.balancer_url}/console/"
                print(f"the live console (signed in): {where}")
        elif args.command == "down":
            farm.down()
            print("webfarm is down")
        elif args.command == "status":
            statuses = farm.status()
            rows = as_rows(statuses)
            width = max([4, *(len(name) for name, *_ in rows)])
            print(f"{'NAME':{width}} {'PORT':>6} {'PID':>8}  STATE")
            for row in rows:
                print("{:{w}} {:>6} {:>8}  {}".format(*row, w=width))
            if farm.config.cluster and (roles := farm.cluster_roles()):
                print("\nthe Redis Cluster, as its nodes see it:")
                for name, role in roles.items():
                    print(f"{name:{width}} {farm.config.redis_nodes.get(name, 0):>6}  {role}")
            if unsupervised := [s for s in statuses if s.state == UNSUPERVISED]:
                print(f"farmctl: supervisord is not running, but {len(unsupervised)} of the farm's processes are: "
                      "nothing restarts them if they die. `make down` stops them; `make up` starts the farm "
                      "again under a new supervisord.", file=sys.stderr)
                return 1
        elif args.command == "logs":
            config = farm.config
            names = args.names or [*config.redis_nodes, *config.sentinels, *farm.instance_names(), "nginx",
                                    "nginx-access"]
            if farm.name == "docker":
                os.execvp("docker", ["docker", "compose", "logs", "--follow", *args.names])
            os.execvp("tail", ["tail", "-n", "20", "-F", *(farm.log_path(n) for n in names)])
        elif args.command == "roll":
            for name, seconds in farm.roll():
                print(f"{name} restarted and back in rotation in {seconds:.1f} s")
        elif args.command == "restart":
            farm.restart(args.name)
            print(f"{args.name} restarted")
        elif args.command == "kill":
            pid = farm.kill(args.name, args.signal)
            print(f"sent SIG{args.signal} to {args.name}" + (f" (pid {pid})" if pid else ""))
    except (FarmError, ValueError) as exc:
        print(f"farmctl: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
