"""NodeWatch, the bound on waiting for a cluster that lost the nodes a phase needs (the real cluster case is
test_node_loss.py's): the clock and the live nodes are given, so the wait's edges are exact."""

from __future__ import annotations

import threading
import time

import pytest

from preprocess.job.config import JobError
from preprocess.job.watch import NodeWatch, pipeline_needs

HEAD = {"CPU": 0.0, "memory": 1e9}  # a head without CPUs: the nodes able to work are gone


class Cluster:
    """Live nodes and a clock the test moves."""

    def __init__(self, nodes):
        self.nodes = nodes
        self.now = 0.0

    def watch(self, *, needs, wait_s, poll_s=0.01) -> NodeWatch:
        return NodeWatch(phase="features", needs=needs, wait_s=wait_s, poll_s=poll_s, nodes=lambda: self.nodes,
                         clock=lambda: self.now)


def test_node_loss_watch_waits_for_nodes_then_stops_naming_resume():
    """No node able to run the work: the job goes on waiting for --node-wait seconds (a node joining in
    between starts the count again), then stops with the message naming --resume."""
    cluster = Cluster([HEAD, {"CPU": 1.0}])
    watch = cluster.watch(needs=[{"CPU": 1.0}], wait_s=10)
    watch.check()
    cluster.nodes = [HEAD]
    cluster.now = 1
    watch.check()
    cluster.now = 10.9
    watch.check()
    cluster.nodes = [HEAD, {"CPU": 2.0}]  # a replacement joined: the wait starts over at the next loss
    cluster.now = 11
    watch.check()
    cluster.nodes = [HEAD]
    cluster.now = 12
    watch.check()
    cluster.now = 21.9
    watch.check()
    cluster.now = 22
    with pytest.raises(JobError, match=r"during features: no live node has 1 CPU and none joined in 10 s "
                                       r"\(--node-wait\)\. .*rerun the same command with --resume"):
        watch.check()


def test_node_loss_watch_needs_one_node_holding_a_whole_actor():
    """A GPU actor needs its CPU and its GPU on the same node; each stage's need is checked."""
    gpu_actor, cpu_task = {"CPU": 1.0, "GPU": 1.0}, {"CPU": 0.5}
    cluster = Cluster([HEAD, {"CPU": 8.0}, {"GPU": 1.0, "CPU": 0.0}])
    watch = cluster.watch(needs=[gpu_actor, cpu_task], wait_s=0)
    assert watch.unplaceable() == [gpu_actor]
    with pytest.raises(JobError, match="no live node has 1 CPU and 1 GPU"):
        watch.check()
    cluster.nodes = [HEAD, {"CPU": 2.0, "GPU": 1.0}]
    assert watch.unplaceable() == []


def test_node_loss_watch_needs_of_a_fused_cpu_plan():
    from preprocess.job.plan import make_plan, resolve_devices

    plan = make_plan(layout="fused", devices=resolve_devices(requested="cpu", overrides={}, caps=None),
                     resources={"CPU": 2.0}, nodes=1, batch_size=4, workers=None)
    assert pipeline_needs(plan) == [{"CPU": 1.0}]


def test_node_loss_watch_iterates_passes_errors_and_stops_a_blocked_wait():
    """Items come through in order and their errors are raised to the consumer; while the next item does not
    come and no node can run the work, the watch stops the wait, halts what the items wait on (the dataset's
    execution: Ray must not be left running it) and the pulling thread closes them."""
    cluster = Cluster([HEAD, {"CPU": 1.0}])
    halted = []
    assert list(cluster.watch(needs=[{"CPU": 1.0}], wait_s=0).iterate(range(5), halt=lambda: halted.append(1))) \
        == [0, 1, 2, 3, 4]
    assert not halted, "a finished iteration has nothing to halt"

    def failing():
        yield 1
        raise KeyError("content_hash")

    with pytest.raises(KeyError, match="content_hash"):
        list(cluster.watch(needs=[{"CPU": 1.0}], wait_s=0).iterate(failing()))

    release, closed = threading.Event(), threading.Event()

    def blocked():
        try:
            yield "first"
            release.wait(30)
            yield "second"
            yield "never pulled"
        finally:
            time.sleep(0.2)  # closing takes a while (Ray Data's last calls): the watch waits for it
            closed.set()

    items = cluster.watch(needs=[{"CPU": 1.0}], wait_s=0).iterate(blocked(), halt=release.set)
    assert next(items) == "first"
    cluster.nodes = [HEAD]
    with pytest.raises(JobError, match="--resume"):
        next(items)
    assert release.is_set(), "stopping did not halt what the items wait on (the dataset's execution)"
    assert closed.is_set(), "the pulling thread had not closed the items when the watch returned"


def test_node_loss_watch_bounds_the_wait_for_ray_tasks(ray_local):
    """The shard phase's wait: results come back as ray.get gives them; a task no node can run (here one asking
    for more CPUs than exist: Ray keeps it pending for ever, as after the last node is lost) is stopped."""
    import ray

    cluster = Cluster([HEAD, {"CPU": 1.0}])
    value = ray.remote(num_cpus=0)(lambda x: x)
    assert cluster.watch(needs=[{"CPU": 1.0}], wait_s=0).get([value.remote(1), value.remote(2)]) == [1, 2]
    stuck = ray.remote(num_cpus=10_000)(lambda: None).remote()
    cluster.nodes = [HEAD]
    try:
        with pytest.raises(JobError, match="no live node has 1 CPU and none joined in 0 s"):
            cluster.watch(needs=[{"CPU": 1.0}], wait_s=0).get([stuck])
    finally:
        ray.cancel(stuck)
