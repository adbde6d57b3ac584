"""Fixtures shared across test folders."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def feature_modes_run(tmp_path_factory):
    """One job run with the reference's feature modes (tiny models, face.mode reference, texture.part_masks),
    on a few demo photos plus a file that does not decode and an all-black photo: (out, images, masks).

    Shared by the job's feature-mode tests and the stats gallery's browser test (one run, not two)."""
    from tests.preprocess.feature_modes import run_feature_modes_job

    return run_feature_modes_job(tmp_path_factory.mktemp("feature-modes"))
