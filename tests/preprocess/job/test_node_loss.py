"""A node lost mid-run: a local multi-node Ray cluster (a head and two worker nodes, separate raylets, from
``ray.cluster_utils.Cluster``) runs the job; one worker node is killed (its raylet, object store and
workers, SIGKILL: `remove_node(allow_graceful=False)`) while features are computed, or while shards are
written. The job finishes on what is left, and its shards are byte-identical to the undisturbed run's
(the pinned reference of test_reference_shards.py, the same inputs and settings).

The head has no CPU, so the feature actors and shard tasks run on the two worker nodes (one CPU each)
and the killed node always held work. The job is a separate process joining the cluster by --address.

With ONE worker node, killed during features, nothing is left to run the work: the job waits --node-wait
seconds, stops naming --resume, and the resumed run on a new node gives the same shards."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.preprocess.job.test_reference_shards import COMMON, REFERENCE, _compare, digest_output

ROOT = Path(__file__).resolve().parents[3]


def _features_started(out: Path) -> bool:
    return any(out.glob("features/*/part-*.parquet"))


def _shards_started(out: Path) -> bool:
    return any(out.glob("train-*.tar")) or any(out.glob(".train-*"))


@contextlib.contextmanager
def node_cluster(*, workers: int):
    """A fresh local cluster: a head without CPUs and ``workers`` worker nodes of one CPU each (separate
    raylets); yields (cluster, worker nodes)."""
    from ray.cluster_utils import Cluster

    from tests.conftest import free_port

    # a free GCS port: other Ray instances may run on this machine
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 0, "include_dashboard": False, "gcs_server_port": free_port()})
    try:
        nodes = [cluster.add_node(num_cpus=1) for _ in range(workers)]
        cluster.wait_for_nodes()
        yield cluster, nodes
    finally:
        cluster.shutdown()


def job_command(demo_inputs, out: Path, address: str, *extra: str) -> list[str]:
    images, pairs = demo_inputs
    return [sys.executable, str(ROOT / "preprocess" / "build_shards.py"), "--images", str(images), "--pairs",
            str(pairs), "--out", str(out), "--address", address, *COMMON, *extra]


def run_killing(command: list[str], log: Path, *, when=lambda: False, kill=lambda: None,
                timeout: float = 900) -> tuple[int, str, bool]:
    """The job as a subprocess; ``kill()`` once, as soon as ``when()`` holds. The job is killed itself past
    ``timeout`` seconds (a hang fails the test's exit-code check). Returns (exit code, output, killed)."""
    killed = False
    with log.open("w") as stream:
        job = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while job.poll() is None and time.monotonic() < deadline:
            if not killed and when():
                kill()
                killed = True
            time.sleep(0.05)
        if job.poll() is None:
            job.kill()
        code = job.wait()
    return code, log.read_text(), killed


def run_losing_a_node(demo_inputs, out: Path, *, when, timeout: float = 900) -> tuple[int, str, bool]:
    """The job on a fresh 3-node cluster; a worker node SIGKILLed as soon as ``when(out)`` holds.
    Returns (exit code, output, whether the node was killed)."""
    with node_cluster(workers=2) as (cluster, (victim, _)):
        return run_killing(job_command(demo_inputs, out, cluster.address), out.parent / f"{out.name}.log",
                           when=lambda: when(out), kill=lambda: cluster.remove_node(victim, allow_graceful=False),
                           timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize("phase, started", [("features", _features_started), ("shard writing", _shards_started)],
                         ids=["features", "shard_writing"])
def test_node_loss_finishes_with_the_same_shards(phase, started, demo_inputs, model_cache, tmp_path):
    """One test per phase (ids: features, shard_writing)."""
    out = tmp_path / "out"
    code, output, killed = run_losing_a_node(demo_inputs, out, when=started)
    assert killed, f"the job finished its {phase} before a node could be killed"
    assert code == 0, output[-4000:]
    _compare(digest_output(out), json.loads(REFERENCE.read_text())["demo"])


@pytest.mark.slow
def test_node_loss_of_the_last_node_stops_and_resume_gives_the_same_shards(demo_inputs, model_cache, tmp_path):
    """One worker node, killed while features are computed: nothing is left to run the feature actors and Ray
    Data would wait for resources for ever; the job waits --node-wait seconds for a node to join, then stops
    (exit 1) with the one-line message naming --resume. A node joins; the same command with --resume finishes
    with the pinned shards, reusing the feature files written before the loss."""
    out = tmp_path / "out"
    with node_cluster(workers=1) as (cluster, (victim,)):
        command = job_command(demo_inputs, out, cluster.address, "--node-wait", "5")
        code, output, killed = run_killing(command, tmp_path / "lost.log", when=lambda: _features_started(out),
                                           kill=lambda: cluster.remove_node(victim, allow_graceful=False),
                                           timeout=600)
        assert killed, "the job finished its features before the node could be killed"
        assert code == 1, output[-4000:]
        stops = [line for line in output.splitlines() if line.startswith("build_shards.py: ")]
        assert len(stops) == 1 and re.fullmatch(
            r"build_shards\.py: the cluster lost its nodes during features: no live node has 1 CPU and none joined "
            r"in 5 s \(--node-wait\)\. What was finished is kept: rerun the same command with --resume .*",
            stops[0]), output[-4000:]
        kept = {p.name for p in out.glob("features/*/part-*.parquet")}
        assert kept

        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        code, output, _ = run_killing([*command, "--resume"], tmp_path / "resumed.log", timeout=600)
    assert code == 0, output[-4000:]
    _compare(digest_output(out), json.loads(REFERENCE.read_text())["demo"])
    stats = json.loads((out / "stats.json").read_text())
    listed = stats["counts"]["images_in"]
    assert stats["images_cached"] >= 1 and stats["images_computed"] + stats["images_cached"] == listed, stats
    assert kept <= {p.name for p in out.glob("features/*/part-*.parquet")}


def test_node_loss_ray_cannot_recover_stops_with_a_message_naming_resume():
    """The stop itself (no cluster: the errors Ray raises when it gives up are raised here directly): a
    cluster error becomes one line naming --resume; an error of the task's own code stays what it is."""
    import ray

    from preprocess.job.config import JobError
    from preprocess.job.run import cluster_failures

    with pytest.raises(JobError, match=r"during features .*ActorDiedError.*rerun the same command with --resume"):
        with cluster_failures("features"):
            raise ray.exceptions.ActorDiedError()
    with pytest.raises(JobError, match="during shard writing .*NodeDiedError"):
        with cluster_failures("shard writing"):
            raise ray.exceptions.NodeDiedError("node 1a2b died")
    own = ray.exceptions.RayTaskError("task", "Traceback ...", KeyError("content_hash"))
    with pytest.raises(ray.exceptions.RayTaskError):
        with cluster_failures("shard writing"):
            raise own
