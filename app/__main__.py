"""python -m app --host H --port P - one web instance under uvicorn, with the flags every runtime uses.

supervisord (native), the Docker image's CMD and the bench's peer apps all start uvicorn through
this, so the server's behaviour (keep-alive, shutdown, headers) is written down once."""

import argparse
import os

import uvicorn

#: Idle keep-alive, longer than nginx's upstream keepalive_timeout: nginx always drops an idle
#: connection first, so it never sends a request down one uvicorn is closing.
KEEPALIVE_S = 75
#: In-flight requests get this long after SIGTERM; the supervisors wait longer before SIGKILL.
GRACEFUL_SHUTDOWN_S = 10
DEFAULT_FACTORY = "app.main:create_instance"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    # APP_FACTORY: how the bench runs its floors (bench.floors) as a farm's instances, served like ours.
    parser.add_argument("--factory", default=os.environ.get("APP_FACTORY") or DEFAULT_FACTORY,
                        help="module:function returning the ASGI app (default: $APP_FACTORY, else ours)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    uvicorn.run(args.factory, factory=True, host=args.host, port=args.port,
                timeout_keep_alive=KEEPALIVE_S, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
                server_header=False, access_log=False,
                # Forwarded headers are trusted by the proxy secret, not by address (app.middleware).
                proxy_headers=False)


if __name__ == "__main__":
    main()
