"""The Redis backend on a real Redis Cluster: ``redis+cluster://`` URLs, routing and pub/sub.

The conformance suite runs on the same private cluster as the backend kind
``redis-cluster``. These tests cover what only a cluster has. A prefix's slot
can be on a node that the URL does not name, a slot can move to another
master, and a master can fail over to its replica. Wake-ups published on one
node reach every node, and a worker process drains a queue through a cluster
URL.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from sluicegate.backends import open_backend
from sluicegate.backends._redis_route import ClusterURL, parse_cluster_url
from sluicegate.backends.redis import RedisBackend, describe
from sluicegate.broker import Action, QueueBounds, Settlement
from sluicegate.errors import ConfigurationError, StoreUnavailable
from sluicegate.message import OutgoingMessage, new_id
from sluicegate.store import JobState, JobUpdate, NewJob
from worker.support import wait_until

from .cluster import ClusterNode, ClusterUnavailable, PrivateRedisCluster, prefix_slot
from .conftest import free_port, unavailable
from .support import RedisApps

BOUNDS = QueueBounds()
LEASE = 30.0

#: Upper bound, in seconds, on waiting for a wake-up that should come at once.
WAKE_TIMEOUT = 5.0

#: Node timeout of the cluster with replicas: a replica takes over a master that
#: has not replied for this long (plus an election of about a second).
FAILOVER_NODE_TIMEOUT_MS = 2000

#: Upper bound, in seconds, on a failover and the backend's switch to the new master.
FAILOVER_TIMEOUT = 60.0

OpenBackend = Callable[..., RedisBackend]


def message(queue: str = "q", delay: float = 0.0) -> OutgoingMessage:
    now = time.time()
    return OutgoingMessage(new_id(), queue, b"{}", 0, now + delay, now)


@pytest.fixture
def replicated_cluster(tmp_path: Path) -> Iterator[PrivateRedisCluster]:
    """A private cluster of three masters with one replica each, for one test."""
    cluster = PrivateRedisCluster(
        tmp_path / "replicated", replicas=1, node_timeout_ms=FAILOVER_NODE_TIMEOUT_MS
    )
    try:
        cluster.start()
    except ClusterUnavailable as exc:
        unavailable(str(exc))
    yield cluster
    cluster.stop()


@pytest.fixture
def open_cluster_backend() -> Iterator[OpenBackend]:
    """Open backends on cluster URLs; each is emptied and closed after the test."""
    opened: list[RedisBackend] = []

    def open_backend_at(url: str, **options: object) -> RedisBackend:
        backend = RedisBackend(url, **options)
        opened.append(backend)
        return backend

    yield open_backend_at
    for backend in opened:
        with contextlib.suppress(redis.RedisError, StoreUnavailable):
            backend.delete_all()
        backend.close()


def keys_on(node: ClusterNode, prefix: str) -> list[bytes]:
    """Return the keys of ``prefix`` stored on ``node`` (none unless it owns the slot)."""
    with contextlib.closing(node.client()) as client:
        return list(client.scan_iter(match="{" + prefix + "}:*", count=1000))


def run_one_job(backend: RedisBackend) -> JobState:
    """Enqueue, reserve and acknowledge one job; return the state of its record."""
    new = NewJob(message(), "t")
    backend.enqueue_jobs([new], BOUNDS)
    (delivery,) = backend.reserve(["q"], 1, LEASE, "w1")
    update = JobUpdate(JobState.SUCCEEDED, result=b"1")
    (settled,) = backend.settle([Settlement(delivery, Action.ACK, update)])
    assert settled is True
    record = backend.get_job(new.message.id)
    assert record is not None
    return record.state


# -- URLs


def test_cluster_url_parsed() -> None:
    parsed = parse_cluster_url("redis+cluster://app:s%40cret@a.internal:7000,b.internal,[::1]:7002")

    assert parsed.seeds == (("a.internal", 7000), ("b.internal", 6379), ("::1", 7002))
    assert parsed.node_scheme == "redis"
    assert parsed.userinfo == "app:s%40cret@"


def test_cluster_url_node_url() -> None:
    parsed = parse_cluster_url("rediss+cluster://:pw@a:7000/0?socket_timeout=5")

    assert parsed.node_url("10.0.0.5", 7001) == "rediss://:pw@10.0.0.5:7001/0?socket_timeout=5"
    assert parsed.node_url("::1", 7001) == "rediss://:pw@[::1]:7001/0?socket_timeout=5"


def test_cluster_url_without_database() -> None:
    assert parse_cluster_url("redis+cluster://a:7000") == ClusterURL(
        "redis", "", (("a", 7000),), ""
    )


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://a:7000/1",
        "redis+cluster://a:7000/0/1",
        "redis+cluster://a:7000/0?db=2",
        "redis+cluster://a:7000/x",
    ],
)
def test_cluster_url_other_database_rejected(url: str) -> None:
    with pytest.raises(ConfigurationError, match="only database 0"):
        RedisBackend(url)


@pytest.mark.parametrize("url", ["redis+cluster://:pw@/0", "redis+cluster://a:7000,b:port/0"])
def test_cluster_url_bad_address_rejected(url: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid node address") as caught:
        RedisBackend(url)

    assert "pw" not in str(caught.value)


def test_describe_cluster_hides_password() -> None:
    url = "redis+cluster://admin:hunter2@10.0.0.1:7000,10.0.0.2/0"

    assert describe(url) == "redis+cluster://10.0.0.1:7000,10.0.0.2:6379/0"


def test_open_backend_cluster_connects_lazily() -> None:
    # Nothing listens on the port: building the backend must not connect.
    backend = open_backend(f"redis+cluster://127.0.0.1:{free_port()}/0?prefix=sgtest-lazy")
    try:
        assert isinstance(backend, RedisBackend)
        assert backend.layout.prefix == "sgtest-lazy"
    finally:
        backend.close()


def test_unreachable_cluster_raises_store_unavailable() -> None:
    port = free_port()
    backend = RedisBackend(
        f"redis+cluster://:hunter2@127.0.0.1:{port}/0?prefix=sgtest-gone", reconnect_timeout=0.3
    )
    try:
        with pytest.raises(StoreUnavailable) as caught:
            backend.ping()
    finally:
        backend.close()

    assert f"redis+cluster://127.0.0.1:{port}/0" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_cluster_url_at_plain_server_rejected(redis_url: str) -> None:
    host_port = redis_url.split("://", 1)[1].split("/", 1)[0]
    backend = RedisBackend(f"redis+cluster://{host_port}/0?prefix=sgtest-plain")
    try:
        with pytest.raises(ConfigurationError, match="not in cluster mode"):
            backend.ping()
    finally:
        backend.close()


def test_plain_url_at_cluster_node_rejected(redis_cluster: PrivateRedisCluster) -> None:
    seed = redis_cluster.nodes[0]
    prefix = redis_cluster.prefix_on(lambda node: node is not seed, "a node other than the URL's")
    backend = RedisBackend(f"redis://{seed.address}/0?prefix={prefix}")
    try:
        with pytest.raises(ConfigurationError, match=r"redis\+cluster://"):
            backend.length("q")
    finally:
        backend.close()


# -- routing


def test_prefixes_on_other_masters(
    redis_cluster: PrivateRedisCluster, open_cluster_backend: OpenBackend
) -> None:
    seed, second, third = redis_cluster.nodes
    prefixes = [
        redis_cluster.prefix_on(lambda node: node is second, "the second master"),
        redis_cluster.prefix_on(lambda node: node is third, "the third master"),
    ]
    backends = [open_cluster_backend(redis_cluster.url(prefix, seed)) for prefix in prefixes]

    states = [run_one_job(backend) for backend in backends]

    assert states == [JobState.SUCCEEDED, JobState.SUCCEEDED]
    assert [backend._route.node for backend in backends] == [
        ("127.0.0.1", second.port),
        ("127.0.0.1", third.port),
    ]
    assert keys_on(seed, prefixes[0]) == []
    assert keys_on(seed, prefixes[1]) == []
    assert keys_on(second, prefixes[0]) != []
    assert keys_on(third, prefixes[1]) != []


def test_keys_of_prefix_on_owner_only(
    redis_cluster: PrivateRedisCluster, open_cluster_backend: OpenBackend
) -> None:
    prefix = redis_cluster.prefix_on(lambda node: True, "any master")
    backend = open_cluster_backend(redis_cluster.url(prefix))
    jobs = [NewJob(message(), "t", idempotency_key="k1"), NewJob(message(delay=60), "t")]
    backend.enqueue_jobs(jobs, BOUNDS)
    backend.reserve(["q"], 1, LEASE, "w1")
    backend.compare_and_set("breaker:x", None, b"closed")
    backend.acquire_lock("leader", "a", 10)
    owner = redis_cluster.owner(prefix)

    counts = {node.port: len(keys_on(node, prefix)) for node in redis_cluster.nodes}

    assert counts[owner.port] >= 8
    assert sum(counts.values()) == counts[owner.port]


def test_url_naming_several_nodes(
    redis_cluster: PrivateRedisCluster, open_cluster_backend: OpenBackend
) -> None:
    # No server listens on the first address, so the backend reads the slot map from the next.
    nodes = ",".join(["127.0.0.1:" + str(free_port()), redis_cluster.nodes[1].address])
    prefix = f"sgcluster-{uuid.uuid4().hex[:12]}"
    backend = open_cluster_backend(f"redis+cluster://{nodes}/0?prefix={prefix}")

    assert run_one_job(backend) is JobState.SUCCEEDED


def test_slot_moved_to_other_master(
    redis_cluster: PrivateRedisCluster,
    open_cluster_backend: OpenBackend,
    caplog: pytest.LogCaptureFixture,
) -> None:
    prefix = redis_cluster.prefix_on(lambda node: True, "any master")
    backend = open_cluster_backend(redis_cluster.url(prefix))
    queued = [NewJob(message(), "t") for _ in range(3)]
    backend.enqueue_jobs(queued, BOUNDS)
    listener = backend.listener()
    try:
        source = redis_cluster.owner(prefix)
        target = next(node for node in redis_cluster.nodes if node is not source)
        redis_cluster.move_slot(prefix_slot(prefix), target)
        listener.drain()
        with caplog.at_level(logging.INFO, logger="sluicegate.backends._redis_route"):
            deliveries = backend.reserve(["q"], 10, LEASE, "w1")
        backend.publish([message()], BOUNDS)
        woken = listener.wait(WAKE_TIMEOUT)
    finally:
        listener.close()

    assert sorted(d.message_id for d in deliveries) == sorted(j.message.id for j in queued)
    assert backend._route.node == ("127.0.0.1", target.port)
    assert f"from=127.0.0.1:{source.port} to=127.0.0.1:{target.port} reason=MOVED" in caplog.text
    assert woken is True
    assert keys_on(source, prefix) == []


@pytest.mark.slow
def test_failover_to_replica(
    replicated_cluster: PrivateRedisCluster,
    open_cluster_backend: OpenBackend,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = replicated_cluster
    prefix = cluster.prefix_on(lambda node: True, "any master")
    owner = cluster.owner(prefix)
    # The URL names only the master that dies: the backend must find the others
    # through the slot map it read before.
    backend = open_cluster_backend(cluster.url(prefix, owner), reconnect_timeout=FAILOVER_TIMEOUT)
    queued = [NewJob(message(), "t") for _ in range(5)]
    backend.enqueue_jobs(queued, BOUNDS)
    listener = backend.result_listener()
    with contextlib.closing(owner.client()) as client:
        # Replication is asynchronous: wait until the replica has the jobs.
        wait_until(lambda: client.wait(1, 1000) >= 1, 30, "the replica to acknowledge the writes")

    cluster.kill(owner)
    try:
        with caplog.at_level(logging.INFO, logger="sluicegate.backends._redis_route"):
            deliveries = backend.reserve(["q"], 10, LEASE, "w1")
        woken_by_resubscribe = listener.wait(FAILOVER_TIMEOUT)
        new_owner = cluster.owner(prefix)
        with contextlib.closing(new_owner.client()) as client:
            channel = backend.layout.results_channel
            wait_until(
                lambda: client.pubsub_numsub(channel)[0][1] == 1,
                FAILOVER_TIMEOUT,
                "the results subscription on the new master",
            )
        listener.drain()
        update = JobUpdate(JobState.SUCCEEDED, result=b"1")
        settled = backend.settle([Settlement(deliveries[0], Action.ACK, update)])
        woken_by_result = listener.wait(WAKE_TIMEOUT)
    finally:
        listener.close()

    assert sorted(d.message_id for d in deliveries) == sorted(j.message.id for j in queued)
    assert new_owner is not owner
    assert backend._route.node == ("127.0.0.1", new_owner.port)
    assert f"from=127.0.0.1:{owner.port} to=127.0.0.1:{new_owner.port}" in caplog.text
    assert settled == [True]
    assert woken_by_resubscribe is True
    assert woken_by_result is True


# -- pub/sub


def test_wakeup_reaches_every_node(
    redis_cluster: PrivateRedisCluster, open_cluster_backend: OpenBackend
) -> None:
    # The scripts PUBLISH on the slot's master; the cluster forwards it to every node.
    prefix = redis_cluster.prefix_on(lambda node: True, "any master")
    backend = open_cluster_backend(redis_cluster.url(prefix))
    with contextlib.ExitStack() as stack:
        subscriptions = []
        for node in redis_cluster.nodes:
            client = stack.enter_context(contextlib.closing(node.client()))
            pubsub = stack.enter_context(contextlib.closing(client.pubsub()))
            pubsub.subscribe(backend.layout.wake_channel)
            assert pubsub.get_message(timeout=WAKE_TIMEOUT)["type"] == "subscribe"
            subscriptions.append(pubsub)

        backend.publish([message("mail")], BOUNDS)
        received = [pubsub.get_message(timeout=WAKE_TIMEOUT) for pubsub in subscriptions]

    assert [reply and reply["data"] for reply in received] == [b"mail"] * 3


def test_result_listener_wakes(
    redis_cluster: PrivateRedisCluster, open_cluster_backend: OpenBackend
) -> None:
    seed = redis_cluster.nodes[0]
    prefix = redis_cluster.prefix_on(lambda node: node is not seed, "a node other than the URL's")
    backend = open_cluster_backend(redis_cluster.url(prefix, seed))
    new = NewJob(message(), "t")
    backend.enqueue_jobs([new], BOUNDS)
    (delivery,) = backend.reserve(["q"], 1, LEASE, "w1")
    listener = backend.result_listener()
    try:
        update = JobUpdate(JobState.SUCCEEDED, result=b"1")
        backend.settle([Settlement(delivery, Action.ACK, update)])
        woken = listener.wait(WAKE_TIMEOUT)
    finally:
        listener.close()

    assert woken is True


# -- a worker process

SOURCE = """
@app.task
def record_run(index: int) -> int:
    mark("run")
    return index
"""


def test_worker_drains_through_cluster_url(
    redis_cluster: PrivateRedisCluster, redis_apps: RedisApps
) -> None:
    seed = redis_cluster.nodes[0]
    prefix = redis_cluster.prefix_on(lambda node: node is not seed, "a node other than the URL's")
    owner = redis_cluster.owner(prefix)
    module = redis_apps.make(SOURCE, redis_cluster.url(prefix, seed))
    jobs = module.task("record_run").enqueue_many([((i,), {}) for i in range(200)])
    ids = [job.id for job in jobs]
    try:
        worker = redis_apps.start(module, "-c", "4")
        records = module.wait_final(ids, timeout=60)
        later = module.task("record_run").enqueue(200)
        late_record = module.wait_final([later.id], timeout=30)[later.id]
        # The job records live on the slot's owner, which is not the node the URL names.
        on_owner = owner.client().exists(f"{{{prefix}}}:j:{later.id}")
    finally:
        module.app.backend.delete_all()

    assert {record.state for record in records.values()} == {JobState.SUCCEEDED}
    assert set(module.event_counts("run")) == {*ids, later.id}
    assert late_record.state is JobState.SUCCEEDED
    assert on_owner == 1
    assert worker.alive
