"""`python -m console [FARM_JSON] [--runtime native|docker]`: serve the console of the farm that
FARM_JSON (or the variable WEBFARM_FARM_CONFIG) describes on 127.0.0.1:console_port until SIGTERM,
which lifts the fault under way first. Natively the supervisor runs it, behind nginx; under Docker
it runs on the host beside the engine (farmctl/docker/console.py) and is reached on its own port."""

from gevent import monkey

monkey.patch_all()  # first of all: Locust's users, the runtime's calls and the server share one gevent loop

import argparse  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

from console.hub import Console  # noqa: E402
from console.web import make_app  # noqa: E402
from farmctl.config import CONFIG_VARIABLE, FarmConfig  # noqa: E402
from farmctl.lifecycle import open_farm  # noqa: E402

log = logging.getLogger("console")


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per sample
    parser = argparse.ArgumentParser(prog="python -m console", description=__doc__)
    parser.add_argument("farm_json", nargs="?", type=Path, help=f"the farm's config (default: ${CONFIG_VARIABLE})")
    parser.add_argument("--runtime", choices=("native", "docker"), default="native")
    args = parser.parse_args(argv[1:])
    text = args.farm_json.read_text() if args.farm_json else os.environ.get(CONFIG_VARIABLE, "")
    if not text:
        parser.error(f"give the farm's config: a file, or ${CONFIG_VARIABLE}")
    config = FarmConfig.from_json(text)
    console = Console(open_farm(config, args.runtime))
    console.desk.mend()  # a console killed mid-fault left it behind
    server = WSGIServer(("127.0.0.1", config.console_port), make_app(console), log=None,
                        error_log=logging.getLogger("console.http"))

    def shutdown() -> None:
        log.info("console: stopping")
        console.shutdown()
        server.stop(timeout=2)

    gevent.signal_handler(signal.SIGTERM, shutdown)
    gevent.spawn(console.run)
    log.info("console: serving on 127.0.0.1:%d", config.console_port)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
