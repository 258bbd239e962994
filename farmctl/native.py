"""The native runtime: Redis, N uvicorn instances and nginx as children of supervisord.

supervisord is the process supervisor (it restarts whatever dies); this module renders its
config, starts it, and drives it through `farmctl.supervisor` - in an order that drops no request."""

import subprocess
import sys
import time
from collections.abc import Callable, Collection
from pathlib import Path

import psutil

from farmctl import netfault, redis_ha, rotation
from farmctl.config import FarmConfig
from farmctl.ports import port_is_free
from farmctl.redis_node import started_marker
from farmctl.render import (
    proxy_secret_path,
    render_nginx_native,
    render_sentinel,
    render_supervisord,
    require_binary,
)
from farmctl.runtime import FarmError, ProcessStatus
from farmctl.secret import proxy_secret, proxy_secret_conf
from farmctl.supervisor import Supervisor
from farmctl.tls import ensure_certificate
from farmctl.wait import answers, wait_until


class NativeFarm:
    """A farm of local processes under one supervisord, its files in `config.state_dir`."""

    name = "native"

    def __init__(self, config: FarmConfig) -> None:
        self.config = config
        self.state_dir = config.state_dir
        self.supervisor = Supervisor(self.state_dir / "supervisor.sock")

    def is_running(self) -> bool:
        return self.supervisor.is_running()

    # -- lifecycle -------------------------------------------------------------------------
    def _write_configs(self, starting: bool) -> None:
        """`starting`: supervisord is not running yet. Only then are the Sentinels' files written:
        from their first start on, they belong to the Sentinels, who rewrite them."""
        for sub in ("logs", "nginx", *self.config.redis_nodes):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        if starting:
            rotation.reset(self.state_dir)
            for node in self.config.redis_nodes:
                started_marker(self.state_dir / node).unlink(missing_ok=True)
            for i, port in enumerate(self.config.sentinels.values(), 1):
                (self.state_dir / f"sentinel-{i}.conf").write_text(render_sentinel(self.config, port))
        if self.config.https_port:
            ensure_certificate(self.state_dir)
        try:
            supervisord_conf = render_supervisord(self.config, sys.executable)
        except FileNotFoundError as missing:
            raise FarmError(
                f"'{missing}' is not installed. On Debian/Ubuntu: sudo apt-get install -y nginx-light redis-server"
            ) from None
        (self.state_dir / "supervisord.conf").write_text(supervisord_conf)
        (self.state_dir / "farm.json").write_text(self.config.model_dump_json())  # for farmctl/health.py
        secret_conf = proxy_secret_path(self.state_dir)
        secret_conf.touch(0o600)
        secret_conf.write_text(proxy_secret_conf(proxy_secret(self.state_dir)))
        (self.state_dir / "nginx.conf").write_text(render_nginx_native(self.config, rotation.read(self.state_dir).down))
        check = subprocess.run(
            [require_binary("nginx"), "-t", "-q", "-p", f"{self.state_dir}/nginx",
             "-c", f"{self.state_dir}/nginx.conf"],
            capture_output=True, text=True, check=False,
        )
        if check.returncode != 0:
            raise FarmError(f"the rendered nginx config is invalid:\n{check.stderr}")

    def up(self, timeout_s: float = 60) -> None:
        """Start the farm, or bring a running one in line with the config (instances added or
        removed, nginx reloaded without dropping connections). Returns when all is healthy."""
        running = self.is_running()
        if not running:
            taken = [p for p in self.config.ports if not port_is_free(p)]
            if taken:
                raise FarmError(
                    f"port(s) {', '.join(map(str, taken))} already in use on 127.0.0.1; "
                    "stop what uses them (`ss -ltnp`) or choose others, "
                    "e.g. make up HTTP_PORT=9080 BASE_PORT=9001 REDIS_PORT=6390"
                )
        else:
            self._check_same_redis_mode()
        self._write_configs(starting=not running)
        if running:
            self._apply_config_changes()
        else:
            subprocess.run(
                [sys.executable, "-m", "supervisor.supervisord", "-c", str(self.state_dir / "supervisord.conf")],
                check=True,
            )
        self.wait_healthy(timeout_s)

    def _check_same_redis_mode(self) -> None:
        was = "sentinel" if "redis-replica" in self.supervisor.processes() else "single"
        if was != self.config.redis_mode:
            raise FarmError(f"the farm runs with REDIS={was}; `make down` first to switch to "
                            f"REDIS={self.config.redis_mode}")

    def _apply_config_changes(self) -> None:
        """Like `supervisorctl update`, in an order that drops no request: new instances serve
        before nginx sends them anything, and nginx stops sending to removed ones before they stop."""
        added, changed, removed = self.supervisor.reread()
        web = {i.name for i in self.config.web}
        for name in added:
            self.supervisor.add(name)
        self._wait_serving(added)
        for name in changed:
            if name not in web:  # Redis, a Sentinel or nginx itself: no way around a restart
                self.supervisor.remove(name)
                self.supervisor.add(name)
        self.reload_nginx()
        for name in removed:
            self.supervisor.remove(name)
        for name in changed:
            if name in web:
                self._replace_gracefully(name, reconfigure=True)
        for name, proc in self.supervisor.processes().items():
            if proc["statename"] in ("STOPPED", "EXITED", "FATAL"):
                self.supervisor.start(name)

    def down(self, timeout_s: float = 30) -> None:
        if not self.is_running():
            return
        pid = int((self.state_dir / "supervisord.pid").read_text())
        self.supervisor.shutdown()
        netfault.reconnect_all(self.state_dir)
        if not wait_until(lambda: not psutil.pid_exists(pid), timeout_s):
            raise FarmError(f"supervisord (pid {pid}) did not stop within {timeout_s:.0f} s")

    # -- graceful operations ---------------------------------------------------------------
    def _nginx_workers(self) -> dict[int, str]:
        """pid -> title of each child of the nginx master ("nginx: worker process [is shutting down]")."""
        workers = {}
        try:
            children = psutil.Process(self.pid("nginx")).children()
        except psutil.Error:
            return {}
        for child in children:
            try:
                workers[child.pid] = " ".join(child.cmdline()).strip()
            except psutil.Error:
                continue
        return workers

    def reload_nginx(self, change: Callable[[rotation.Rotation], object] = lambda _: None,
                     timeout_s: float = 15, finish: bool = True) -> None:
        """Apply `change` to the rotation (which instances are `down`), re-render and reload nginx
        (SIGHUP: new workers take new requests, old ones finish theirs), and return once the new
        workers run and, with `finish`, every old one is gone (its requests done: a drained
        instance can then be stopped)."""
        with rotation.editing(self.state_dir) as current:
            change(current)
            (self.state_dir / "nginx.conf").write_text(render_nginx_native(self.config, current.down))
            before = set(self._nginx_workers())
            self.supervisor.signal("nginx", "HUP")

            def reloaded() -> bool:
                workers = self._nginx_workers()
                new = {pid for pid, title in workers.items() if "shutting down" not in title} - before
                return bool(new) and not (finish and set(workers) - new)

            if not wait_until(reloaded, timeout_s, interval_s=0.05):
                raise FarmError(f"nginx did not finish reloading within {timeout_s:.0f} s")

    def set_draining(self, names: Collection[str]) -> None:
        """Exactly these instances are drained (out of rotation for an operation; the bench uses fewer)."""
        def drain(current: rotation.Rotation) -> None:
            current.draining = set(names)

        self.reload_nginx(drain)

    def out_of_rotation(self) -> dict[str, str]:
        return rotation.read(self.state_dir).out

    def set_out_of_rotation(self, out: dict[str, str]) -> None:
        """The health loop's verdict (farmctl/health.py): these instances, and only these, are held
        out. In force once the new workers run: the old ones may be waiting on a hung instance."""
        def hold(current: rotation.Rotation) -> None:
            current.out = dict(out)

        self.reload_nginx(hold, finish=False)

    def _wait_serving(self, names: Collection[str], timeout_s: float = 30) -> None:
        for name in names:
            if not wait_until(lambda: self.is_serving(name), timeout_s):  # noqa: B023 - called at once
                raise FarmError(f"{name} is not serving after {timeout_s:.0f} s:\n{self.tail(name)}")

    def _replace_gracefully(self, name: str, reconfigure: bool = False) -> None:
        """Take `name` out of nginx's rotation, stop it (SIGTERM: uvicorn finishes what it has),
        start it (with its new supervisor config if `reconfigure`), wait until it serves, put it back."""
        self.reload_nginx(lambda current: current.draining.add(name))
        if reconfigure:
            self.supervisor.remove(name)
            self.supervisor.add(name)
        else:
            self.supervisor.stop(name)
            self.supervisor.start(name)
        self._wait_serving([name])
        self.reload_nginx(lambda current: current.draining.discard(name))

    def roll(self) -> list[tuple[str, float]]:
        """Restart every instance, one at a time, without failing a request; returns (name, seconds)."""
        took = []
        for inst in self.config.web:
            started = time.monotonic()
            self._replace_gracefully(inst.name)
            took.append((inst.name, time.monotonic() - started))
        return took

    def restart(self, name: str) -> None:
        """Stop and start one process through the supervisor (an instance: out of rotation meanwhile)."""
        if name in self.instance_names():
            self._replace_gracefully(name)
        else:
            self.stop(name)
            self.start(name)
        self.wait_healthy()

    # -- inspecting and breaking -----------------------------------------------------------
    def status(self) -> list[ProcessStatus]:
        ports = {i.name: i.port for i in self.config.web} | self.config.redis_nodes | self.config.sentinels | {
            "nginx": self.config.http_port}
        if not self.is_running():
            return [ProcessStatus(name, port, 0, "STOPPED") for name, port in ports.items()]
        ha = self.config.replace(redis_mode="sentinel")  # the farm may run in sentinel mode without REDIS set
        ports = ha.redis_nodes | ha.sentinels | ports
        info = self.supervisor.processes()
        # Instances beyond this config's N (a `make scale` done without N now) follow the same scheme.
        ports |= {name: self.config.base_port + int(name[3:]) - 1 for name in info
                  if name.startswith("web") and name[3:].isdigit() and name not in ports}
        return [ProcessStatus(name, ports.get(name, 0), int(p["pid"]), str(p["statename"]))
                for name, p in info.items()]

    def instance_names(self) -> list[str]:
        return [i.name for i in self.config.web]

    def pid(self, name: str) -> int:
        return self.supervisor.pid(name)

    def kill(self, name: str, sig: str = "KILL") -> int:
        """Send a signal through the supervisor; returns the pid that got it."""
        pid = self.pid(name)
        self.supervisor.signal(name, sig)
        return pid

    def stop(self, name: str) -> None:
        self.supervisor.stop(name)

    def start(self, name: str) -> None:
        self.supervisor.start(name)

    def cut_off(self, name: str) -> None:
        netfault.cut_off(self.state_dir, name, self.pid(name),
                         [*self.config.redis_nodes.values(), *self.config.sentinels.values()])

    def reconnect(self, name: str) -> None:
        netfault.reconnect(self.state_dir, name)

    def is_serving(self, name: str) -> bool:
        inst = next(i for i in self.config.web if i.name == name)
        return answers(f"{inst.url}/healthz", 1)

    def unhealthy(self) -> list[str]:
        """Names of the parts that do not answer yet (empty when the farm is healthy)."""
        bad = [i.name for i in self.config.web if not self.is_serving(i.name)]
        if not answers(f"{self.config.balancer_url}/healthz", 1):
            bad.append("nginx")
        if not answers(f"{self.config.web[0].url}/readyz", 2):
            bad.append("redis")
        elif self.config.sentinel and not redis_ha.failover_ready(self.config):
            bad.extend(["redis-replica", *self.config.sentinels])
        return bad

    def wait_healthy(self, timeout_s: float = 60) -> None:
        if wait_until(lambda: not self.unhealthy(), timeout_s, interval_s=0.2):
            return
        bad = self.unhealthy()
        if not bad:
            return
        tails = "\n".join(f"--- {self.log_path(n)} ---\n{self.tail(n)}" for n in bad)
        raise FarmError(f"not healthy after {timeout_s:.0f} s: {', '.join(bad)}\n{tails}")

    def log_path(self, name: str) -> str:
        return str(self.state_dir / "logs" / f"{name}.log")

    def tail(self, name: str, lines: int = 15) -> str:
        try:
            return "".join(Path(self.log_path(name)).read_text().splitlines(keepends=True)[-lines:])
        except OSError:
            return "(no log)"

