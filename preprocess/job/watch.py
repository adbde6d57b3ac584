"""Waiting for the cluster when lost nodes leave a phase nothing to run on, then stopping with --resume.

Ray reruns the work of a lost node on the nodes left. When no node left can run the phase's work (the last
CPU or GPU node of a pool preempted), Ray Data and ``ray.get`` wait for resources without end ("The job may
hang forever unless the cluster scales up"). ``NodeWatch`` bounds that wait: while the driver waits for the
phase's next result, it looks at the live nodes (``ray.nodes()``) every ``poll_s`` seconds; once no live node
has the resources one unit of the phase's work needs (an actor of each pool, a shard task), it waits up to
``wait_s`` seconds (``--node-wait``: an autoscaling cluster replaces a preempted node in that time) for
nodes to join, and then stops the job with a JobError saying that ``--resume`` continues."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from preprocess.job.config import JobError

logger = logging.getLogger(__name__)

RESUME_HINT = ("What was finished is kept: rerun the same command with --resume to continue (finished images are "
               "not computed again, the shards come out the same)")
POLL_S = 2.0
JOIN_S = 30.0


def live_node_resources() -> list[dict[str, float]]:
    """The total resources of each live node of the cluster joined."""
    import ray

    return [dict(node.get("Resources", {})) for node in ray.nodes() if node.get("Alive")]


def pipeline_needs(plan) -> list[dict[str, float]]:
    """What one actor or task of each stage of a bound pipeline's plan (preprocess/job/plan.py) takes on a node."""
    needs: list[dict[str, float]] = []
    for stage in plan.stages:
        need = {name: float(value) for name, value in (("CPU", stage.cpus), ("GPU", stage.gpus)) if value}
        if need not in needs:
            needs.append(need)
    return needs


def halt_dataset(dataset) -> None:
    """Shut down a Ray Data dataset's running execution (its actors and tasks) without waiting for its next
    block. Ray Data has no public call for it; this is what it does itself when the dataset is collected (the
    executor it keeps on ``_current_executor``). A job stopping with Ray still joined must not leave it running
    (its thread would call Ray after ``ray.shutdown``)."""
    executor = getattr(dataset, "_current_executor", None)
    if executor is not None:
        executor.shutdown(force=True)


def _describe(need: dict[str, float]) -> str:
    return " and ".join(f"{value:g} {name}" for name, value in sorted(need.items())) or "nothing"


class NodeWatch:
    """One phase's wait for the cluster: ``check`` raises JobError once, for ``wait_s`` seconds in a row, no
    live node could host one of the phase's ``needs`` (each a resource dict one actor or task takes)."""

    def __init__(self, *, phase: str, needs: list[dict[str, float]], wait_s: float, poll_s: float = POLL_S,
                 nodes: Callable[[], list[dict[str, float]]] = live_node_resources,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if wait_s < 0:
            raise JobError(f"--node-wait {wait_s:g}: must not be negative")
        self.phase = phase
        self.needs = needs
        self.wait_s = wait_s
        self.poll_s = poll_s
        self.nodes = nodes
        self.clock = clock
        self.lacking_since: float | None = None

    def unplaceable(self) -> list[dict[str, float]]:
        """The needs no live node can host now."""
        nodes = self.nodes()
        return [need for need in self.needs
                if not any(all(node.get(name, 0.0) >= value for name, value in need.items()) for node in nodes)]

    def check(self) -> None:
        lacking = self.unplaceable()
        now = self.clock()
        if not lacking:
            if self.lacking_since is not None:
                logger.warning("%s: the cluster can run it again after %.0f s; going on", self.phase,
                               now - self.lacking_since)
            self.lacking_since = None
            return
        what = "; ".join(_describe(need) for need in lacking)
        if self.lacking_since is None:
            self.lacking_since = now
            logger.warning("%s: no live node of the cluster has %s (nodes lost?); waiting up to %g s (--node-wait) "
                           "for nodes to join", self.phase, what, self.wait_s)
        if now - self.lacking_since >= self.wait_s:
            raise JobError(
                f"the cluster lost its nodes during {self.phase}: no live node has {what} and none joined in "
                f"{self.wait_s:g} s (--node-wait). {RESUME_HINT}"
            )

    def iterate(self, items: Iterable[Any], *, halt: Callable[[], None] | None = None) -> Iterator[Any]:
        """``items`` (pulled by a daemon thread), checking the cluster whenever the next one takes over
        ``poll_s`` seconds; their errors are raised here. Closing this generator before the end stops the
        pulling and calls ``halt`` (which stops what ``items`` waits on: the dataset's execution); either way
        it returns once the pulling thread has closed ``items``."""
        ready: queue.Queue = queue.Queue(maxsize=1)
        stop = threading.Event()
        end = object()

        def offer(entry: tuple) -> bool:
            while not stop.is_set():
                try:
                    ready.put(entry, timeout=self.poll_s)
                    return True
                except queue.Full:
                    continue
            return False

        def pull() -> None:
            iterator = iter(items)
            try:
                for item in iterator:
                    if not offer((item, None)):
                        return
                offer((end, None))
            except BaseException as error:  # handed to the consumer, raised there
                offer((None, error))
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()

        puller = threading.Thread(target=pull, daemon=True, name=f"node-watch {self.phase}")
        puller.start()
        finished = False
        try:
            while True:
                try:
                    item, error = ready.get(timeout=self.poll_s)
                except queue.Empty:
                    self.check()
                    continue
                if error is not None:
                    raise error
                if item is end:
                    finished = True
                    return
                yield item
        finally:
            stop.set()  # the puller stops at its next item
            if not finished and halt is not None:
                halt()
            # the puller's last Ray calls (closing the iterator) before the caller may shut Ray down: a Ray
            # call after ray.shutdown would start a connection of its own
            puller.join(timeout=JOIN_S)
            if puller.is_alive():
                logger.warning("%s: the thread reading the results did not stop within %g s", self.phase, JOIN_S)

    def get(self, refs: list) -> list:
        """``ray.get(refs)``, checking the cluster every ``poll_s`` seconds while some are not done."""
        import ray

        pending = list(refs)
        while pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=self.poll_s)
            if pending:
                self.check()
        return ray.get(refs)
