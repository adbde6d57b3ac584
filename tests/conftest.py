"""Helpers every test folder shares: a stage batch with its bookkeeping columns, a network guard, and one
feature-modes job run."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from preprocess.common import object_column


def stage_batch(n: int, *, status: list[str] | None = None, ids: list[str] | None = None,
                failed_stage: str = "decode", failed_detail: str = "earlier", **columns) -> dict[str, np.ndarray]:
    """A batch as a stage receives it: the bookkeeping columns of preprocess.common for ``n`` rows (rows whose
    status is not "ok" failed in ``failed_stage`` with ``failed_detail``), plus the given columns. A list of
    per-row arrays becomes an object column, as Ray hands variable-size images."""
    status = list(status or ["ok"] * n)
    batch = {
        "image_id": np.array(ids or [f"img{i}" for i in range(n)], dtype=object),
        "status": np.array(status, dtype=object),
        "reject_stage": np.array(["" if s == "ok" else failed_stage for s in status], dtype=object),
        "detail": np.array(["" if s == "ok" else failed_detail for s in status], dtype=object),
    }
    for name, values in columns.items():
        batch[name] = object_column(values) if isinstance(values, list) else values
    return batch


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test, even one the code under test catches: the
    attempt raises OSError (what a missing network gives) and is recorded, and the test fails if any was."""
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    yield attempts
    assert attempts == [], f"network access attempted: {attempts}"


@pytest.fixture(scope="session")
def feature_modes_run(tmp_path_factory):
    """One job run with the reference's feature modes (tiny models, face.mode reference, texture.part_masks),
    on a few demo photos plus a file that does not decode and an all-black photo: (out, images, masks).

    Shared by the job's feature-mode tests and the stats gallery's browser test (one run, not two)."""
    from tests.preprocess.feature_modes import run_feature_modes_job

    return run_feature_modes_job(tmp_path_factory.mktemp("feature-modes"))
