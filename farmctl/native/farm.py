"""The native runtime: Redis, N uvicorn instances and nginx as children of supervisord.

supervisord is the process supervisor (it restarts whatever dies); this module starts it with the
files `farmctl.native.render` writes, and drives it through `farmctl.native.supervisor` - in an
order that drops no request."""

import signal
import subprocess
import sys
import time
from collections.abc import Collection
from pathlib import Path

import psutil

from farmctl import clusternodes
from farmctl.config import FarmConfig
from farmctl.native import cluster, netfault, redis_ha, rotation
from farmctl.native.render import render_nginx_native, write_configs
from farmctl.native.supervisor import Supervisor, terminate
from farmctl.ports import port_is_free
from farmctl.runtime import UNSUPERVISED, Capability, FarmError, ProcessStatus
from farmctl.wait import answers, balancer_answers, wait_until


class NativeFarm:
    """A farm of local processes under one supervisord, its files in `config.state_dir`."""

    name = "native"
    capabilities = frozenset(Capability)

    def __init__(self, config: FarmConfig) -> None:
        self.config = config
        self.state_dir = config.state_dir
        self.supervisor = Supervisor(self.state_dir / "supervisor.sock")

    def is_running(self) -> bool:
        return self.supervisor.is_running()

    # -- lifecycle -------------------------------------------------------------------------
    def up(self, timeout_s: float = 60) -> None:
        """Start the farm, or bring a running one in line with the config (instances added or
        removed, nginx reloaded without dropping connections). Returns when all is healthy."""
        running = self.is_running()
        if not running:
            if not self.supervisor.wait_exited(5):  # a `down` just before: it removes its socket last
                raise FarmError(f"the supervisord of {self.state_dir} is still shutting down")
            self._stop_unsupervised(timeout_s / 2)  # what a SIGKILLed supervisord left: started again below
            taken = [p for p in self.config.ports if not port_is_free(p)]
            if taken:
                raise FarmError(
                    f"port(s) {', '.join(map(str, taken))} already in use on 127.0.0.1; "
                    "stop what uses them (`ss -ltnp`) or choose others, "
                    "e.g. make up HTTP_PORT=9080 BASE_PORT=9001 REDIS_PORT=6390"
                )
        else:
            self._check_same_redis_mode()
        write_configs(self.config, starting=not running)
        if running:
            self._apply_config_changes()
        else:
            subprocess.run(
                [sys.executable, "-m", "supervisor.supervisord", "-c", str(self.state_dir / "supervisord.conf")],
                check=True,
            )
            # It spawns its programs in its loop, after a first one-second wait unless a call wakes it.
            wait_until(self.supervisor.is_running, 10, interval_s=0.05)
        if self.config.cluster:  # made of the six nodes at the first start, checked at every other
            wait_until(lambda: all(not port_is_free(p) for p in self.config.cluster_ports), timeout_s / 2)
            cluster.create(list(self.config.cluster_ports), self.config.redis_password)
        self.wait_healthy(timeout_s)

    def _check_same_redis_mode(self) -> None:
        running = self.supervisor.processes()
        was = "sentinel" if "redis-replica" in running else "cluster" if "redis-node1" in running else "single"
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
        self._wait_serving([name for name in added if name in web])
        for name in changed:
            if name not in web:  # Redis, a Sentinel or nginx itself: no way around a restart
                self.supervisor.remove(name)
                self.supervisor.add(name)
        self.reload_nginx()
        for name in removed:
            self.supervisor.remove(name)
        if "prometheus" in self.supervisor.processes() and "prometheus" not in added + changed:
            self.supervisor.signal("prometheus", "HUP")  # re-read prometheus.yml: the instances to scrape
        for name in changed:
            if name in web:
                self._replace_gracefully(name, reconfigure=True)
        for name, proc in self.supervisor.processes().items():
            if proc["statename"] in ("STOPPED", "EXITED", "FATAL"):
                self.supervisor.start(name)

    def down(self, timeout_s: float = 30) -> None:
        """Stop every process the farm started, supervised or not: those of a SIGKILLed supervisord,
        or the workers of a SIGKILLed nginx master, run on (see `Supervisor.session`)."""
        pid = self.supervisor.daemon_pid()
        if self.is_running():
            # Every process stopped, in order; supervisord itself, with nothing left to run and its
            # socket closed, exits at its next tick (up to 2 s later) - `up` waits for that if need be.
            self.supervisor.shutdown(timeout_s)
        netfault.reconnect_all(self.state_dir)
        self._stop_unsupervised(timeout_s, sid=pid)

    def _stop_unsupervised(self, timeout_s: float, sid: int = 0) -> None:
        """SIGTERM what runs of the farm without supervisord, Redis last as supervisord would; SIGKILL
        what is left after `timeout_s`; return once the farm's ports are free."""
        left = self.supervisor.session(sid)
        if not left:
            return
        store = [p for p in left if _name(p) == "redis-server"]
        terminate([p for p in left if p not in store], signal.SIGTERM, timeout_s)
        terminate(store, signal.SIGTERM, timeout_s)
        if not wait_until(lambda: all(port_is_free(p) for p in self.config.ports), 5):
            taken = [p for p in self.config.ports if not port_is_free(p)]
            raise FarmError(f"port(s) {', '.join(map(str, taken))} still in use after stopping the farm")

    # -- the rotation ----------------------------------------------------------------------
    def reload_nginx(self, change: rotation.Change = rotation.unchanged, finish: bool = True) -> None:
        """Apply `change` to the rotation and reload nginx (see `rotation.reload`)."""
        rotation.reload(self.state_dir, lambda down: render_nginx_native(self.config, down),
                        nginx_pid=lambda: self.pid("nginx"), hup=lambda: self.supervisor.signal("nginx", "HUP"),
                        change=change, finish=finish)

    def drain(self, *names: str) -> None:
        self.reload_nginx(lambda current: current.draining.update(names))

    def undrain(self, *names: str) -> None:
        def back(current: rotation.Rotation) -> None:
            current.draining = current.draining - set(names) if names else set()

        self.reload_nginx(back)

    def rotation_state(self) -> rotation.Rotation:
        """Who is out of nginx's rotation: drained, and held out by the health loop."""
        return rotation.read(self.state_dir)

    def out_of_rotation(self) -> dict[str, str]:
        return self.rotation_state().out

    def set_out_of_rotation(self, out: dict[str, str]) -> None:
        """The health loop's verdict (farmctl/native/health.py): these instances, and only these, are
        held out. In force once the new workers run: the old ones may be waiting on a hung instance."""
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
        self.drain(name)
        if reconfigure:
            self.supervisor.remove(name)
            self.supervisor.add(name)
        else:
            self.supervisor.stop(name)
            self.supervisor.start(name)
        self._wait_serving([name])
        self.undrain(name)

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
        ports |= self.config.monitoring | ({"console": self.config.console_port} if self.config.console else {})
        # The farm may run in another Redis mode than REDIS says now.
        ha, many = self.config.replace(redis_mode="sentinel"), self.config.replace(redis_mode="cluster")
        if not self.is_running():
            if left := self.supervisor.session():
                return self._unsupervised(left, ha.redis_nodes | ha.sentinels | many.redis_nodes | ports)
            return [ProcessStatus(name, port, 0, "STOPPED") for name, port in ports.items()]
        ports = ha.redis_nodes | ha.sentinels | many.redis_nodes | ports
        info = self.supervisor.processes()
        # Instances beyond this config's N (a `make scale` done without N now) follow the same scheme.
        ports |= {name: self.config.base_port + int(name[3:]) - 1 for name in info
                  if name.startswith("web") and name[3:].isdigit() and name not in ports}
        return [ProcessStatus(name, ports.get(name, 0), int(p["pid"]), str(p["statename"]))
                for name, p in info.items()]

    @staticmethod
    def _unsupervised(procs: list[psutil.Process], ports: dict[str, int]) -> list[ProcessStatus]:
        """Rows for the processes of a farm whose supervisord is gone, named by the port they listen on."""
        names = {port: name for name, port in ports.items()}
        rows = []
        for proc in procs:
            try:
                listening = [c.laddr.port for c in proc.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
                cmdline = proc.cmdline()
            except psutil.Error:
                continue
            name = next((names[p] for p in listening if p in names), None)
            if name is None:
                name = "health" if "farmctl.native.health" in cmdline else _name(proc)
            rows.append(ProcessStatus(name, ports.get(name, 0), proc.pid, UNSUPERVISED))
        return sorted(rows, key=lambda row: (list(ports).index(row.name) if row.name in ports else len(ports),
                                             row.pid))

    def instance_names(self) -> list[str]:
        return [i.name for i in self.config.web]

    def pid(self, name: str) -> int:
        return self.supervisor.pid(name)

    def redis_primary(self) -> str | None:
        """On a cluster: the primary of the lowest port, and None while a slot has no primary."""
        if self.config.cluster:
            ports = self.config.cluster_ports
            nodes = cluster.nodes(ports, self.config.redis_password)
            serving = sorted(n.port for n in nodes.values() if n.serving)
            if not serving or sum(nodes[p].slots for p in serving) < cluster.SLOTS:
                return None
            return f"redis-node{ports.index(serving[0]) + 1}"
        return redis_ha.primary_name(self.config) if self.config.sentinel else next(iter(self.config.redis_nodes))

    def cluster_roles(self) -> dict[str, str]:
        """REDIS=cluster: each node's role ("primary, 5461 slots", "replica of redis-node1", "down"),
        as the cluster sees it."""
        if not self.config.cluster:
            return {}
        nodes = cluster.nodes(self.config.cluster_ports, self.config.redis_password)
        names = {nodes[port].id: name for name, port in self.config.redis_nodes.items()}
        return {name: clusternodes.describe(nodes[port], names) for name, port in self.config.redis_nodes.items()}

    def failover_ready(self) -> bool:
        if self.config.cluster:
            return cluster.healthy(self.config.cluster_ports, password=self.config.redis_password)
        return self.config.sentinel and redis_ha.failover_ready(self.config)

    def kill(self, name: str, sig: str = "KILL") -> int:
        """Send a signal through the supervisor; returns the pid that got it."""
        pid = self.pid(name)
        self.supervisor.signal(name, sig)
        return pid

    def pause(self, name: str) -> None:
        self.supervisor.signal(name, "STOP")

    def resume(self, name: str) -> None:
        self.supervisor.signal(name, "CONT")

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
        # Held out by the health loop (a probe that timed out while the machine was busy starting
        # it): not healthy yet, or the first requests would all go to the others.
        bad += [name for name in self.out_of_rotation() if name not in bad]
        if not balancer_answers(self.config.balancer_url, "/healthz", instances_serve=not bad):
            bad.append("nginx")
        if not answers(f"{self.config.web[0].url}/readyz", 2):
            bad.append("redis")
        elif self.config.sentinel and not self.failover_ready():
            bad.extend(["redis-replica", *self.config.sentinels])
        elif self.config.cluster and not self.failover_ready():
            bad.extend(self.config.redis_nodes)
        if self.config.console and not answers(f"http://127.0.0.1:{self.config.console_port}/console/healthz", 1):
            bad.append("console")
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


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.Error:
        return ""
