"""`python -m console FARM_JSON`: serve the console of the farm that FARM_JSON describes on
127.0.0.1:console_port until SIGTERM, which lifts the fault under way first."""

from gevent import monkey

monkey.patch_all()  # first of all: Locust's users, the runtime's calls and the server share one gevent loop

import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

from console.hub import Console  # noqa: E402
from console.web import make_app  # noqa: E402
from farmctl.config import FarmConfig  # noqa: E402
from farmctl.lifecycle import open_farm  # noqa: E402

log = logging.getLogger("console")


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per sample
    if len(argv) != 2:
        print("usage: python -m console STATE_DIR/farm.json", file=sys.stderr)
        return 2
    config = FarmConfig.from_json(Path(argv[1]).read_text())
    console = Console(open_farm(config, "native"))
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
