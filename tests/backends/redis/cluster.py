"""A private Redis Cluster on loopback, for the tests of ``redis+cluster://`` URLs.

Each node is a ``redis-server`` of its own, in its own directory, on a free
loopback port with its cluster bus on a second free port (``cluster-port``,
Redis 7.0 or newer). ``redis-cli --cluster create`` joins the nodes and
assigns the slots. Nothing persists: ``--save ''`` and ``--appendonly no``.

The Redis backend tests and the conformance suite share one cluster per test
process through :func:`shared_cluster`, which starts it on first use and
stops it when the last user is done. Stopping SIGKILLs exactly the processes
the cluster started, by pid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.crc import key_slot

from worker.support import wait_until

#: Seconds the nodes may take to reply to PING, and then to agree on a healthy cluster.
START_TIMEOUT = 30.0

#: Seconds ``redis-cli --cluster create`` may take.
CREATE_TIMEOUT = 60.0

#: Milliseconds without a reply after which a node counts as failing. Redis's own
#: default (15 s), so a loaded machine does not fail a slow node in the shared cluster.
DEFAULT_NODE_TIMEOUT_MS = 15_000

#: Seconds a killed node may take to be reaped.
REAP_TIMEOUT = 10.0


class ClusterUnavailable(Exception):
    """A private cluster cannot run here; the message names the missing binary."""


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct free loopback ports, all bound at once while they are chosen."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]


def find_binaries() -> tuple[str, str]:
    """Return the paths of ``redis-server`` and ``redis-cli``, or raise ``ClusterUnavailable``."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None:
        raise ClusterUnavailable("no redis-server binary on PATH")
    if cli is None:
        raise ClusterUnavailable("no redis-cli binary on PATH")
    return server, cli


def prefix_slot(prefix: str) -> int:
    """Return the hash slot of every key under the backend's key prefix ``prefix``."""
    return int(key_slot(("{" + prefix + "}").encode()))


@dataclass
class ClusterNode:
    """One ``redis-server`` of the cluster: its port, bus port, directory and process."""

    port: int
    bus_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5.0, socket_connect_timeout=5.0)

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""


@dataclass
class PrivateRedisCluster:
    """A Redis Cluster of ``masters`` masters, each with ``replicas`` replicas, on loopback."""

    directory: Path
    masters: int = 3
    replicas: int = 0
    node_timeout_ms: int = DEFAULT_NODE_TIMEOUT_MS
    nodes: list[ClusterNode] = field(default_factory=list)

    def start(self) -> None:
        """Start the nodes, join them into a cluster and wait until every node reports it ok.

        Raises ``ClusterUnavailable`` when a binary is missing. Any other
        failure stops the nodes started so far, and a failed wait or
        ``redis-cli`` run raises ``AssertionError`` with the tail of their logs.
        """
        server, cli = find_binaries()
        count = self.masters * (1 + self.replicas)
        ports = free_ports(2 * count)
        try:
            for index in range(count):
                port, bus_port = ports[2 * index], ports[2 * index + 1]
                self.nodes.append(self._start_node(server, index, port, bus_port))
            for node in self.nodes:
                wait_until(lambda n=node: self._replies_to_ping(n), START_TIMEOUT, "PING")
            self._create(cli)
            wait_until(self._healthy, START_TIMEOUT, "cluster_state:ok on every node")
        except BaseException as exc:
            logs = "\n".join(f"--- {node.address}\n{node.log()[-2000:]}" for node in self.nodes)
            self.stop()
            if isinstance(exc, AssertionError):
                raise AssertionError(f"{exc}\n{logs}") from exc
            raise

    def _start_node(self, server: str, index: int, port: int, bus_port: int) -> ClusterNode:
        directory = self.directory / f"node-{index}"
        directory.mkdir(parents=True)
        node = ClusterNode(port, bus_port, directory)
        command = [
            server,
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-port", str(bus_port),
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(directory),
            "--logfile", str(directory / "redis.log"),
        ]  # fmt: skip
        node.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
        return node

    def _replies_to_ping(self, node: ClusterNode) -> bool:
        assert node.process is not None
        if node.process.poll() is not None:
            raise AssertionError(
                f"redis-server on {node.address} exited with {node.process.returncode}"
            )
        with contextlib.closing(node.client()) as client:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

    def _create(self, cli: str) -> None:
        command = [
            cli,
            "--cluster", "create",
            *(node.address for node in self.nodes),
            "--cluster-replicas", str(self.replicas),
            "--cluster-yes",
        ]  # fmt: skip
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=CREATE_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"redis-cli --cluster create exited with {result.returncode}:\n"
                f"{(result.stdout + result.stderr)[-3000:]}"
            )

    def _healthy(self) -> bool:
        """Return whether every node reports the cluster ok, with every slot and node known."""
        for node in self.nodes:
            with contextlib.closing(node.client()) as client:
                try:
                    info = client.cluster("INFO")
                except redis.RedisError:
                    return False
            if (
                info.get("cluster_state") != "ok"
                or int(info.get("cluster_slots_ok", 0)) != 16384
                or int(info.get("cluster_known_nodes", 0)) != len(self.nodes)
            ):
                return False
        return True

    def stop(self) -> None:
        """SIGKILL every node this cluster started, by pid, and reap it."""
        for node in self.nodes:
            self.kill(node)

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL one node by pid and reap it; a node already stopped is left alone."""
        process, node.process = node.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(REAP_TIMEOUT)

    def url(self, prefix: str, node: ClusterNode | None = None) -> str:
        """Return a ``redis+cluster://`` URL that names one node (the first by default)."""
        seed = node or self.nodes[0]
        return f"redis+cluster://{seed.address}/0?prefix={prefix}"

    def live_nodes(self) -> list[ClusterNode]:
        """Return the nodes that have not been killed."""
        return [node for node in self.nodes if node.process is not None]

    def node_by_port(self, port: int) -> ClusterNode:
        for node in self.nodes:
            if node.port == port:
                return node
        raise KeyError(f"no node of the cluster listens on port {port}")

    def owner(self, prefix: str) -> ClusterNode:
        """Return the master that owns the slot of ``prefix``, as the first live node reports it."""
        return self._slot_owner(prefix_slot(prefix))

    def move_slot(self, slot: int, target: ClusterNode) -> None:
        """Migrate ``slot`` and its keys to ``target`` the way ``redis-cli --cluster reshard`` does.

        Returns once every node maps the slot to ``target``.
        """
        source = self._slot_owner(slot)
        with contextlib.ExitStack() as stack:
            source_client = stack.enter_context(contextlib.closing(source.client()))
            target_client = stack.enter_context(contextlib.closing(target.client()))
            source_id = source_client.cluster("MYID").decode()
            target_id = target_client.cluster("MYID").decode()
            target_client.cluster("SETSLOT", slot, "IMPORTING", source_id)
            source_client.cluster("SETSLOT", slot, "MIGRATING", target_id)
            for _ in range(100_000):  # 100 keys a round; the tests keep far fewer in a slot.
                keys = source_client.cluster("GETKEYSINSLOT", slot, 100)
                if not keys:
                    break
                source_client.migrate("127.0.0.1", target.port, keys, 0, 5000)
            others = [
                node for node in self.live_nodes() if node is not target and node is not source
            ]
            for node in [target, source, *others]:
                with contextlib.closing(node.client()) as client:
                    if client.execute_command("ROLE")[0] == b"master":
                        client.cluster("SETSLOT", slot, "NODE", target_id)
        wait_until(
            lambda: all(self._slot_owner(slot, node) is target for node in self.live_nodes()),
            START_TIMEOUT,
            f"every node to map slot {slot} to {target.address}",
        )

    def _slot_owner(self, slot: int, queried: ClusterNode | None = None) -> ClusterNode:
        """Return the master of ``slot`` as ``queried`` (default: the first live node) maps it."""
        with contextlib.closing((queried or self.live_nodes()[0]).client()) as client:
            ranges = client.execute_command("CLUSTER", "SLOTS")
        for start, end, primary, *_ in ranges:
            if int(start) <= slot <= int(end):
                return self.node_by_port(int(primary[1]))
        raise AssertionError(f"no node owns slot {slot}")

    def prefix_on(self, accept: Callable[[ClusterNode], bool], description: str) -> str:
        """Return a fresh test prefix whose slot's owner passes ``accept``."""
        for _ in range(1000):  # Each master owns a third of the slots, so a few tries suffice.
            prefix = f"sgcluster-{uuid.uuid4().hex[:12]}"
            if accept(self.owner(prefix)):
                return prefix
        raise AssertionError(f"no prefix found whose slot is on {description}")


_shared_lock = threading.Lock()
_shared: PrivateRedisCluster | None = None
_shared_users = 0


@contextlib.contextmanager
def shared_cluster(make_directory: Callable[[], Path]) -> Iterator[PrivateRedisCluster]:
    """Yield this process's shared three-master cluster, starting it on first use.

    Session fixtures of several test directories use it, so one test process
    starts one cluster; the last user to leave stops it.
    """
    global _shared, _shared_users
    with _shared_lock:
        if _shared is None:
            cluster = PrivateRedisCluster(make_directory())
            cluster.start()
            _shared = cluster
        _shared_users += 1
        cluster = _shared
    try:
        yield cluster
    finally:
        with _shared_lock:
            _shared_users -= 1
            if _shared_users == 0:
                _shared = None
                cluster.stop()
