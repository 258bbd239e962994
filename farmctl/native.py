"""The native runtime: Redis, N uvicorn instances and nginx as children of supervisord.

supervisord is the process supervisor (it restarts whatever dies); this module only renders
its config, starts it, and talks to it over its XML-RPC socket."""

import os
import random
import shutil
import socket
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
from supervisor.xmlrpc import SupervisorTransport

from farmctl import redis_ha
from farmctl.config import FarmConfig
from farmctl.redis_node import started_marker
from farmctl.render import render_nginx_native, render_sentinel, render_supervisord, require_binary


class FarmError(RuntimeError):
    """Something the user can act on; the CLI prints it without a traceback."""


@dataclass(frozen=True)
class ProcessStatus:
    name: str
    port: int
    pid: int
    state: str

    @property
    def up(self) -> bool:
        return self.state == "RUNNING"


def free_port_block(count: int) -> int:
    """The first of `count` consecutive free loopback ports, picked at random so that parallel
    or leftover runs do not collide - and below the kernel's ephemeral range, where any outgoing
    connection (to Redis, nginx's to an instance) could take a port between this check and the bind."""
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    for _ in range(200):
        base = random.randrange(10000, max(ephemeral_low, 10000 + 2 * count) - count)
        if all(port_is_free(p) for p in range(base, base + count)):
            return base
    raise FarmError(f"no block of {count} free ports on 127.0.0.1")


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class NativeFarm:
    name = "native"

    def __init__(self, config: FarmConfig) -> None:
        self.config = config
        self.state_dir = config.state_dir
        self.socket_path = self.state_dir / "supervisor.sock"

    # -- talking to supervisord ------------------------------------------------------------
    def _rpc(self) -> Any:
        transport = SupervisorTransport(serverurl=f"unix://{self.socket_path}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor

    def is_running(self) -> bool:
        if not self.socket_path.exists():
            return False
        try:
            return bool(self._rpc().getState()["statename"] == "RUNNING")
        except (OSError, xmlrpc.client.Fault):
            return False

    # -- lifecycle -------------------------------------------------------------------------
    def ensure_certificate(self) -> None:
        """A self-signed certificate for the HTTPS listener, made once (TLS_CERT/TLS_KEY to bring your own)."""
        tls = self.state_dir / "tls"
        tls.mkdir(parents=True, exist_ok=True)
        cert, key = tls / "cert.pem", tls / "key.pem"
        own_cert, own_key = os.environ.get("TLS_CERT"), os.environ.get("TLS_KEY")
        if own_cert and own_key:
            shutil.copyfile(own_cert, cert)
            shutil.copyfile(own_key, key)
        if cert.exists() and key.exists():
            return
        openssl = shutil.which("openssl")
        if openssl is None:
            raise FarmError("openssl is needed to make the demo's self-signed certificate (apt-get install openssl), "
                            "or set HTTPS_PORT=0")
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "365", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True,
        )
        key.chmod(0o600)

    def _write_configs(self, starting: bool) -> None:
        """`starting`: supervisord is not running yet. Only then are the Sentinels' files written:
        from their first start on, they belong to the Sentinels, who rewrite them."""
        for sub in ("logs", "nginx", *self.config.redis_nodes):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        if starting:
            for node in self.config.redis_nodes:
                started_marker(self.state_dir / node).unlink(missing_ok=True)
            for i, port in enumerate(self.config.sentinels.values(), 1):
                (self.state_dir / f"sentinel-{i}.conf").write_text(render_sentinel(self.config, port))
        if self.config.https_port:
            self.ensure_certificate()
        try:
            supervisord_conf = render_supervisord(self.config, sys.executable)
        except FileNotFoundError as missing:
            raise FarmError(
                f"'{missing}' is not installed. On Debian/Ubuntu: sudo apt-get install -y nginx-light redis-server"
            ) from None
        (self.state_dir / "supervisord.conf").write_text(supervisord_conf)
        (self.state_dir / "nginx.conf").write_text(render_nginx_native(self.config))
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
        running = {p["name"] for p in self._rpc().getAllProcessInfo()}
        was = "sentinel" if "redis-replica" in running else "single"
        if was != self.config.redis_mode:
            raise FarmError(f"the farm runs with REDIS={was}; `make down` first to switch to "
                            f"REDIS={self.config.redis_mode}")

    def _apply_config_changes(self) -> None:
        """Like `supervisorctl update`, in an order that drops no request: new instances serve
        before nginx sends them anything, and nginx stops sending to removed ones before they stop."""
        rpc = self._rpc()
        [[added, changed, removed]] = rpc.reloadConfig()
        web = {i.name for i in self.config.web}
        for name in added:
            rpc.addProcessGroup(name)
        self._wait_serving(added)
        for name in changed:
            if name not in web:  # Redis, a Sentinel or nginx itself: no way around a restart
                rpc.stopProcessGroup(name)
                rpc.removeProcessGroup(name)
                rpc.addProcessGroup(name)
        self.reload_nginx()
        for name in removed:
            rpc.stopProcessGroup(name)
            rpc.removeProcessGroup(name)
        for name in changed:
            if name in web:
                self._replace_gracefully(name, reconfigure=True)
        for proc in rpc.getAllProcessInfo():
            if proc["statename"] in ("STOPPED", "EXITED", "FATAL"):
                rpc.startProcess(proc["name"])

    # -- graceful operations ---------------------------------------------------------------
    def _nginx_workers(self) -> dict[int, str]:
        """pid -> title of each child of the nginx master ("nginx: worker process [is shutting down]")."""
        master = self.pid("nginx")
        workers = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == master:
                    workers[int(stat.parent.name)] = (stat.parent / "cmdline").read_text().replace("\0", " ").strip()
            except (OSError, IndexError, ValueError):
                continue
        return workers

    def reload_nginx(self, draining: Collection[str] = (), timeout_s: float = 15) -> None:
        """Re-render and reload nginx (SIGHUP: new workers take new requests, old ones finish
        theirs), and return once every old worker is gone - only then is the change in force."""
        (self.state_dir / "nginx.conf").write_text(render_nginx_native(self.config, draining))
        before = set(self._nginx_workers())
        self._rpc().signalProcess("nginx", "HUP")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            workers = self._nginx_workers()
            if workers and not before & set(workers) and not any("shutting down" in t for t in workers.values()):
                return
            time.sleep(0.05)
        raise FarmError(f"nginx did not finish reloading within {timeout_s:.0f} s")

    def _wait_serving(self, names: Collection[str], timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        for name in names:
            while not self.is_serving(name):
                if time.monotonic() > deadline:
                    raise FarmError(f"{name} is not serving after {timeout_s:.0f} s:\n{self.tail(name)}")
                time.sleep(0.1)

    def _replace_gracefully(self, name: str, reconfigure: bool = False) -> None:
        """Take `name` out of nginx's rotation, stop it (SIGTERM: uvicorn finishes what it has),
        start it (with its new supervisor config if `reconfigure`), wait until it serves, put it back."""
        self.reload_nginx(draining={name})
        rpc = self._rpc()
        if reconfigure:
            rpc.stopProcessGroup(name)
            rpc.removeProcessGroup(name)
            rpc.addProcessGroup(name)
        else:
            rpc.stopProcess(name)
            rpc.startProcess(name)
        self._wait_serving([name])
        self.reload_nginx()

    def roll(self) -> list[tuple[str, float]]:
        """Restart every instance, one at a time, without failing a request; returns (name, seconds)."""
        took = []
        for inst in self.config.web:
            started = time.monotonic()
            self._replace_gracefully(inst.name)
            took.append((inst.name, time.monotonic() - started))
        return took

    def down(self, timeout_s: float = 30) -> None:
        if not self.is_running():
            return
        pid = int((self.state_dir / "supervisord.pid").read_text())
        self._rpc().shutdown()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                subprocess.run(["kill", "-0", str(pid)], check=True, capture_output=True)
            except subprocess.CalledProcessError:
                break
            time.sleep(0.1)
        else:
            raise FarmError(f"supervisord (pid {pid}) did not stop within {timeout_s:.0f} s")

    # -- inspecting and breaking -----------------------------------------------------------
    def status(self) -> list[ProcessStatus]:
        ports = {i.name: i.port for i in self.config.web} | self.config.redis_nodes | self.config.sentinels | {
            "nginx": self.config.http_port}
        if not self.is_running():
            return [ProcessStatus(name, port, 0, "STOPPED") for name, port in ports.items()]
        ha = replace(self.config, redis_mode="sentinel")  # the farm may run in sentinel mode without REDIS set
        ports = ha.redis_nodes | ha.sentinels | ports
        info = {p["name"]: p for p in self._rpc().getAllProcessInfo()}
        # Instances beyond this config's N (a `make scale` done without N now) follow the same scheme.
        ports |= {name: self.config.base_port + int(name[3:]) - 1 for name in info
                  if name.startswith("web") and name[3:].isdigit() and name not in ports}
        return [ProcessStatus(name, ports.get(name, 0), int(p["pid"]), str(p["statename"]))
                for name, p in info.items()]

    def instance_names(self) -> list[str]:
        return [i.name for i in self.config.web]

    def pid(self, name: str) -> int:
        return int(self._rpc().getProcessInfo(name)["pid"])

    def kill(self, name: str, sig: str = "KILL") -> int:
        """Send a signal through the supervisor; returns the pid that got it."""
        pid = self.pid(name)
        self._rpc().signalProcess(name, sig)
        return pid

    def stop(self, name: str) -> None:
        self._rpc().stopProcess(name)

    def start(self, name: str) -> None:
        self._rpc().startProcess(name)

    def is_serving(self, name: str) -> bool:
        inst = next(i for i in self.config.web if i.name == name)
        try:
            return httpx.get(f"{inst.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def unhealthy(self) -> list[str]:
        """Names of the parts that do not answer yet (empty when the farm is healthy)."""
        bad = [i.name for i in self.config.web if not self.is_serving(i.name)]
        try:
            if httpx.get(f"{self.config.balancer_url}/healthz", timeout=1).status_code != 200:
                bad.append("nginx")
        except httpx.HTTPError:
            bad.append("nginx")
        try:
            ready = httpx.get(f"{self.config.web[0].url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            ready = False
        if not ready:
            bad.append("redis")
        elif self.config.sentinel and not redis_ha.failover_ready(self.config):
            bad.extend(["redis-replica", *self.config.sentinels])
        return bad

    def wait_healthy(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while (bad := self.unhealthy()) and time.monotonic() < deadline:
            time.sleep(0.2)
        if bad:
            tails = "\n".join(f"--- {self.log_path(n)} ---\n{self.tail(n)}" for n in bad)
            raise FarmError(f"not healthy after {timeout_s:.0f} s: {', '.join(bad)}\n{tails}")

    def log_path(self, name: str) -> str:
        return str(self.state_dir / "logs" / f"{name}.log")

    def tail(self, name: str, lines: int = 15) -> str:
        try:
            with open(self.log_path(name)) as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"


def as_rows(statuses: list[ProcessStatus]) -> list[tuple[str, str, str, str]]:
    return [(s.name, str(s.port or "-"), str(s.pid or "-"), "up" if s.up else s.state.lower())
            for s in statuses]
