"""Under Docker, the live console (console/) runs on the host, beside the engine: it breaks the farm
through the docker CLI as `make loadtest`'s chaos does - a container is given no power over its
siblings, and no Docker socket. The farm's nginx, in a container, does not reach the host's
loopback, so the console is served on its own port (127.0.0.1:console_port); `up` starts it,
`down` stops it, and a pid file in the state dir says which process it is."""

import os
import signal
import subprocess
import sys

from farmctl.config import CONFIG_VARIABLE, PROJECT_ROOT, FarmConfig
from farmctl.runtime import FarmError
from farmctl.wait import answers, wait_until

STOP_TIMEOUT_S = 10.0


def url(config: FarmConfig) -> str:
    return f"http://127.0.0.1:{config.console_port}/console/"


def pid(config: FarmConfig) -> int:
    """The running console's pid (0 if none): the pid file's, if that process is the console."""
    import psutil  # here: the images' farmctl (farm-config, health) has no psutil, and no use for it

    try:
        recorded = int((config.state_dir / "console.pid").read_text())
        if "console" in psutil.Process(recorded).cmdline():
            return recorded
    except (OSError, ValueError, psutil.Error):
        pass
    return 0


def start(config: FarmConfig, timeout_s: float = 20) -> None:
    """Start the console of the farm `config` describes (a no-op if it runs); return once it answers."""
    if pid(config):
        return
    (config.state_dir / "logs").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, CONFIG_VARIABLE: config.model_dump_json(), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(PROJECT_ROOT), "RUNTIME": "docker"}
    with open(config.state_dir / "logs" / "console.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "console", "--runtime", "docker"], cwd=PROJECT_ROOT,
                                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # not killed with the shell that ran `make up`
    (config.state_dir / "console.pid").write_text(str(proc.pid))
    if not wait_until(lambda: proc.poll() is None and answers(f"{url(config)}healthz", 1), timeout_s):
        stop(config)
        raise FarmError(f"the console did not answer within {timeout_s:.0f} s: see "
                        f"{config.state_dir / 'logs' / 'console.log'}")


def stop(config: FarmConfig) -> None:
    """SIGTERM (it lifts the fault under way), then SIGKILL after STOP_TIMEOUT_S."""
    import psutil

    running = pid(config)
    if running:
        os.kill(running, signal.SIGTERM)
        try:
            psutil.Process(running).wait(STOP_TIMEOUT_S)
        except psutil.TimeoutExpired:
            os.kill(running, signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    (config.state_dir / "console.pid").unlink(missing_ok=True)
