"""Running stages inside Ray workers: a chain of stage objects, timed, built once per worker process."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from preprocess.common import batch_len

# Fault injection for the retry tests: when this names a file that does not exist yet, the worker that
# sees it first creates it and kills its own process mid-batch (a real crash, which Ray must retry).
FAULT_ENV = "MCLD_DATA_KILL_ONCE"


@dataclass(frozen=True, kw_only=True)
class StageSpec:
    """One stage to build in a worker: a name (for timings and rejects), its class and its config."""

    name: str
    cls: type
    config: Any


def _maybe_kill_self() -> None:
    marker = os.environ.get(FAULT_ENV)
    if not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def timing_column(name: str) -> str:
    return f"seconds_{name}"


PLACED_PREFIX = "placed_"  # placed_{stage}: where the stage ran, "NODE_ID" or "NODE_ID/gpu:IDS" (stats.json)
# Every worker that builds a stage says where it is in Ray's internal key-value store, key JOB_ID/STAGE/WORKER_ID
# in this namespace (stats.json counts rows, so a started actor that got no batch would not show there).
PLACED_NAMESPACE = "mcld-data-placed"


def register_placement(names: list[str], where: str) -> None:
    import ray
    from ray.experimental.internal_kv import _internal_kv_put

    context = ray.get_runtime_context()
    worker = context.get_actor_id() or context.get_worker_id()
    for name in names:
        _internal_kv_put(f"{context.get_job_id()}/{name}/{worker}", where, namespace=PLACED_NAMESPACE)


def placement() -> str:
    """This Ray worker's node and the GPU ids Ray assigned it; "" outside Ray (then no column is added)."""
    import ray

    if not ray.is_initialized():
        return ""
    node = ray.get_runtime_context().get_node_id()
    gpus = ",".join(str(g) for g in ray.get_gpu_ids())
    return f"{node}/gpu:{gpus}" if gpus else node


class StageChain:
    """The stages of one Ray worker. In the fused layout that is every stage; in the staged one, one.

    Each stage's wall time is added to the batch as ``seconds_{stage}`` (the batch's time shared out
    per row), which the driver sums into stats.json.
    """

    def __init__(self, *, specs: list[StageSpec], threads: int = 1) -> None:
        import cv2
        import torch

        # A fixed thread count per worker keeps results independent of how many workers there are.
        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
        self.specs = specs
        self.stages = [(spec.name, spec.cls(config=spec.config)) for spec in specs]
        self.placement = placement()
        if self.placement:
            register_placement([spec.name for spec in specs], self.placement)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        _maybe_kill_self()
        for name, stage in self.stages:
            start = time.perf_counter()
            batch = stage(batch)
            elapsed = time.perf_counter() - start
            n = max(batch_len(batch), 1)
            batch[timing_column(name)] = np.full(batch_len(batch), elapsed / n, np.float64)
        if self.placement:
            for name, _ in self.stages:
                batch[PLACED_PREFIX + name] = np.full(batch_len(batch), self.placement, dtype=object)
        return batch


_CHAINS: dict[int, StageChain] = {}


def run_chain_task(batch: dict[str, np.ndarray], *, specs: list[StageSpec], threads: int = 1) -> dict[str, np.ndarray]:
    """The task form (CPU stages in the staged layout): the chain is built once per worker process."""
    key = hash(tuple((s.name, s.cls, s.config) for s in specs))
    chain = _CHAINS.get(key)
    if chain is None:
        chain = _CHAINS[key] = StageChain(specs=specs, threads=threads)
    return chain(batch)

