"""The Redis server that the Redis backend sends its commands to, on one server or a cluster.

A ``redis://``, ``rediss://`` or ``redis+sentinel://`` URL names one server
(Sentinel names the current primary, and redis-py queries it again after a
failover), so its route is one fixed client: :class:`FixedRoute`.

A ``redis+cluster://`` (or ``rediss+cluster://``) URL names one or more nodes
of a Redis Cluster. Every key of a prefix hashes to one slot, so the backend
needs exactly one node: the master that owns that slot. :class:`ClusterRoute`
reads the slot map from the nodes (``CLUSTER SLOTS``, Redis 3.0 or newer) and
keeps a plain client to the owner. It follows the owner when it moves:

- A ``MOVED`` reply names the new owner, and the route switches to it at once.
  This happens after a failover (the old master, now a replica, redirects)
  and after the slot was migrated to another master.
- A lost connection, ``CLUSTERDOWN``, ``TRYAGAIN`` or ``ASK`` marks the route
  stale, and the next command reads the slot map again. It queries the nodes
  of the URL first, then every node of the last map, and the failed one last.
  The backend's retry loop waits with backoff in between, so a failover that
  takes the cluster's node timeout to promote a replica is retried, not failed.

Why not redis-py's ``RedisCluster``: every command of one backend goes to one
slot, so a cluster client's routing per command, its map of the whole
cluster and its pipelines split by node buy nothing here. A plain client to
the owner keeps the code path of a single server: the same script calls,
pipelines and pub/sub connection, and the hiredis command packer, which
``RedisCluster`` (redis-py 8.2) drops from the options it passes to its nodes.

Pub/sub: the scripts send wake-ups with classic ``PUBLISH``, which a cluster
forwards to every node, so a subscription on any node receives them. The
backend subscribes on the owner, through the same route, and subscribes
again on the new owner when its connection is lost. Each message crosses the
cluster bus to every node. Sharded pub/sub (``SPUBLISH``) would keep it within
the shard, but it needs Redis 7.0 and the backend supports 5.0.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import redis
from redis.crc import key_slot
from redis.exceptions import MovedError

from sluicegate.backends import redact
from sluicegate.errors import ConfigurationError

logger = logging.getLogger(__name__)

#: URL schemes of a Redis Cluster, and the scheme of one node of each.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

#: Port of a cluster node whose address in the URL names none.
DEFAULT_PORT = 6379


class Route(Protocol):
    """The client the backend sends commands through, and what it does when one fails."""

    def client(self) -> redis.Redis:
        """Return the client of the server to use now; may raise ``redis.ConnectionError``."""
        ...

    def failed(self, client: redis.Redis | None) -> None:
        """Note that a command on ``client`` failed with a connection or cluster error."""
        ...

    def moved(self, client: redis.Redis, error: MovedError) -> None:
        """Follow a ``MOVED`` reply that a command on ``client`` received."""
        ...

    def close(self) -> None:
        """Close every connection; a later :meth:`client` call connects again."""
        ...


class FixedRoute:
    """The route of a URL that names one server: always the same client."""

    def __init__(self, client: redis.Redis, address: str) -> None:
        self._client = client
        self._address = address

    def client(self) -> redis.Redis:
        return self._client

    def failed(self, client: redis.Redis | None) -> None:
        """Do nothing: redis-py reconnects on the next command."""

    def moved(self, client: redis.Redis, error: MovedError) -> None:
        raise ConfigurationError(
            f"the Redis server at {self._address} is a cluster node that does not own slot "
            f"{error.slot_id} of the key prefix; use a redis+cluster:// URL"
        )

    def close(self) -> None:
        self._client.close()
        self._client.connection_pool.disconnect()


@dataclass(frozen=True)
class ClusterURL:
    """A parsed ``redis+cluster://`` URL: its seed nodes and what each node URL repeats."""

    #: ``redis`` or ``rediss``.
    node_scheme: str
    #: ``user:password@`` as written in the URL (still percent-encoded), or empty.
    userinfo: str
    seeds: tuple[tuple[str, int], ...]
    #: The query string, passed on to redis-py for every node.
    query: str

    def node_url(self, host: str, port: int) -> str:
        """Return the ``redis://`` URL of one node, with the credentials and options."""
        netloc = f"{self.userinfo}{_url_host(host)}:{port}"
        return urlunsplit((self.node_scheme, netloc, "/0", self.query, ""))


def parse_cluster_url(url: str) -> ClusterURL:
    """Parse ``redis+cluster://[[user]:password@]host:port[,host:port...][/0][?options]``.

    Raises ``ConfigurationError`` for a database other than 0, which Redis
    Cluster does not have, and for an address without a host or with an
    invalid port.
    """
    parts = urlsplit(url)
    node_scheme = CLUSTER_SCHEMES.get(parts.scheme)
    if node_scheme is None:
        raise ConfigurationError(f"not a Redis Cluster URL: {redact(url)!r}")
    userinfo, at, hosts = parts.netloc.rpartition("@")
    segments = [segment for segment in parts.path.split("/") if segment]
    databases = [value for name, value in parse_qsl(parts.query) if name == "db"]
    if len(segments) > 1 or any(database != "0" for database in [*segments, *databases]):
        raise ConfigurationError(
            f"Redis Cluster has only database 0, but {redact(url)!r} names another; "
            "use redis+cluster://host:port/0"
        )
    seeds = []
    for address in hosts.split(","):
        try:
            parsed = urlsplit("//" + address)
            host, port = parsed.hostname, parsed.port or DEFAULT_PORT
        except ValueError:
            host = None
        if not host:
            raise ConfigurationError(
                f"invalid node address {address!r} in {redact(url)!r}; expected host:port"
            )
        seeds.append((host, port))
    return ClusterURL(node_scheme, userinfo + at, tuple(seeds), parts.query)


class ClusterRoute:
    """The route of a ``redis+cluster://`` URL: a client of the master that owns one slot.

    Thread-safe. Nothing connects until the first :meth:`client` call.
    """

    def __init__(
        self, url: ClusterURL, slot_key: str, options: dict[str, Any], address: str
    ) -> None:
        self._url = url
        self._options = options
        self._address = address
        self.slot = int(key_slot(slot_key.encode()))
        self._lock = threading.Lock()
        self._current: redis.Redis | None = None
        #: The owner that ``_current`` talks to, as ``(host, port)``.
        self.node: tuple[str, int] | None = None
        #: Set after a failed command: the next ``client()`` call reads the slot map again.
        self._stale = False
        #: Every node of the last slot map read, masters and replicas.
        self._known: list[tuple[str, int]] = []

    def client(self) -> redis.Redis:
        current = self._current
        if current is not None and not self._stale:
            return current
        with self._lock:
            if self._current is None or self._stale:
                client, node = self._discover()
                self._switch(client, node, "slot map")
                self._stale = False
            assert self._current is not None
            return self._current

    def failed(self, client: redis.Redis | None) -> None:
        if client is not None and client is self._current:
            self._stale = True

    def moved(self, client: redis.Redis, error: MovedError) -> None:
        with self._lock:
            if client is not self._current or self.node is None:
                return  # Another thread followed the owner already.
            node = (error.host or self.node[0], int(error.port))
            if node == self.node:
                self._stale = True  # Redirected to itself: read the slot map instead.
                return
            self._switch(self._node_client(node), node, "MOVED")

    def close(self) -> None:
        with self._lock:
            current, self._current, self.node = self._current, None, None
        if current is not None:
            current.close()
            current.connection_pool.disconnect()

    def _switch(self, client: redis.Redis, node: tuple[str, int], reason: str) -> None:
        """Make ``client`` of ``node`` the current client; the caller holds the lock."""
        old, old_node = self._current, self.node
        self._current, self.node = client, node
        if old is client:
            return
        if old_node is None:
            # Every process logs this once at its first command, so it stays out of INFO.
            logger.debug(
                "redis cluster slot owner found address=%s slot=%d node=%s",
                self._address,
                self.slot,
                _format_node(node),
            )
        else:
            logger.info(
                "redis cluster slot owner changed address=%s slot=%d from=%s to=%s reason=%s",
                self._address,
                self.slot,
                _format_node(old_node),
                _format_node(node),
                reason,
            )
        if old is not None:
            # Commands of other threads may still run on the old client. They fail or
            # get MOVED and then use the new client, so only idle connections close now.
            old.connection_pool.disconnect(inuse_connections=False)

    def _discover(self) -> tuple[redis.Redis, tuple[str, int]]:
        """Read the slot map from the nodes; return a client of the slot's owner and its address.

        Raises ``redis.ConnectionError`` when no node names an owner, and
        ``ConfigurationError`` when a node is not in cluster mode.
        """
        errors = []
        for node in self._candidates():
            probe = self._node_client(node)
            try:
                ranges = probe.cluster("SLOTS")
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                probe.close()
                errors.append(f"{_format_node(node)}: {exc}")
                continue
            except redis.ResponseError as exc:
                probe.close()
                if "cluster support disabled" in str(exc):
                    raise ConfigurationError(
                        f"the Redis server at {_format_node(node)} is not in cluster mode; "
                        "use a redis:// URL for it"
                    ) from None
                errors.append(f"{_format_node(node)}: {exc}")
                continue
            owner = self._read_map(ranges, node[0])
            if owner is None:
                probe.close()
                errors.append(f"{_format_node(node)}: slot {self.slot} has no master")
                continue
            if owner == self.node and self._current is not None:
                probe.close()
                return self._current, owner  # Unchanged: its connections reconnect by themselves.
            if owner == node:
                return probe, owner
            probe.close()
            return self._node_client(owner), owner
        raise redis.ConnectionError(
            f"no node of the cluster named the owner of slot {self.slot}: " + "; ".join(errors)
        )

    def _candidates(self) -> list[tuple[str, int]]:
        """Return the nodes to ask for the slot map: the URL's, the known ones, the current last."""
        ordered = list(dict.fromkeys([*self._url.seeds, *self._known]))
        if self.node in ordered:
            ordered.remove(self.node)
            ordered.append(self.node)
        return ordered

    def _read_map(self, ranges: Any, answered_host: str) -> tuple[str, int] | None:
        """Remember the nodes of a ``CLUSTER SLOTS`` reply; return the master of the slot."""
        owner = None
        known: list[tuple[str, int]] = []
        for start, end, *nodes in ranges:
            addresses = [_endpoint(node, answered_host) for node in nodes]
            known += addresses
            if int(start) <= self.slot <= int(end) and addresses:
                owner = addresses[0]
        self._known = list(dict.fromkeys(known))
        return owner

    def _node_client(self, node: tuple[str, int]) -> redis.Redis:
        client: redis.Redis = redis.Redis.from_url(self._url.node_url(*node), **self._options)
        return client


def _endpoint(node: Any, answered_host: str) -> tuple[str, int]:
    """Return the ``(host, port)`` of one node entry of a ``CLUSTER SLOTS`` reply.

    A node whose endpoint is unknown is reported as ``""`` or ``"?"``; it is
    on the host of the node that sent the reply.
    """
    host = node[0].decode() if isinstance(node[0], bytes) else str(node[0])
    if host in ("", "?"):
        host = answered_host
    return host, int(node[1])


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _format_node(node: tuple[str, int]) -> str:
    return f"{_url_host(node[0])}:{node[1]}"
