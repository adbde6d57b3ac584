"""A node lost mid-run: a local multi-node Ray cluster (a head and two worker nodes, separate raylets, from
``ray.cluster_utils.Cluster``) runs the job; one worker node is killed (its raylet, object store and
workers, SIGKILL: `remove_node(allow_graceful=False)`) while features are computed, or while shards are
written. The job finishes on what is left, and its shards are byte-identical to the undisturbed run's
(the pinned reference of test_reference_shards.py, the same inputs and settings).

The head has no CPU, so the feature actors and shard tasks run on the two worker nodes (one CPU each)
and the killed node always held work. The job is a separate process joining the cluster by --address."""

from __future__ import annotations

import json
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


def run_losing_a_node(demo_inputs, out: Path, *, when, timeout: float = 900) -> tuple[int, str, bool]:
    """The job on a fresh 3-node cluster; a worker node SIGKILLed as soon as ``when(out)`` holds.
    Returns (exit code, output, whether the node was killed)."""
    from ray.cluster_utils import Cluster

    images, pairs = demo_inputs
    from tests.conftest import free_port

    # a free GCS port: other Ray instances may run on this machine
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 0, "include_dashboard": False, "gcs_server_port": free_port()})
    victim = cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    command = [sys.executable, str(ROOT / "preprocess" / "build_shards.py"), "--images", str(images), "--pairs",
               str(pairs), "--out", str(out), "--address", cluster.address, *COMMON]
    log = out.parent / f"{out.name}.log"
    killed = False
    try:
        with log.open("w") as stream:
            job = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, cwd=ROOT)
            deadline = time.monotonic() + timeout
            while job.poll() is None and time.monotonic() < deadline:
                if not killed and when(out):
                    cluster.remove_node(victim, allow_graceful=False)
                    killed = True
                time.sleep(0.05)
            if job.poll() is None:
                job.kill()
            code = job.wait()
    finally:
        cluster.shutdown()
    return code, log.read_text(), killed


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
