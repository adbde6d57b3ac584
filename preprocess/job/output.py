"""The output folder's policy: one run per folder unless --resume or --overwrite; stale shards and leftovers go."""

from __future__ import annotations

import shutil

from preprocess.job.config import JobConfig, JobError
from preprocess.job.features import FEATURES_DIR
from shards import storage
from shards.manifest import MANIFEST_NAME, REJECTS_NAME, STATS_NAME

LOG_NAME = "build_shards.log"  # the run's log; --overwrite removes it, --resume appends to it


def prepare_output(config: JobConfig) -> None:
    """Refuse to mix two runs in one folder unless --resume (reuse) or --overwrite (start afresh)."""
    out = config.out
    if storage.exists(out) and not storage.is_dir(out):
        raise JobError(f"--out {out}: exists and is not a folder")
    storage.makedirs(out)
    names = set(storage.list_names(out))
    ours = {MANIFEST_NAME, REJECTS_NAME, STATS_NAME, FEATURES_DIR}
    previous = {n for n in names if n in ours or n.endswith(".tar") or storage.is_temporary(n)}
    if previous and not (config.resume or config.overwrite):
        raise JobError(
            f"--out {out}: holds a previous run ({', '.join(sorted(previous)[:4])}...). Pass --resume to reuse its "
            "features (a killed or changed run continues; finished images are not recomputed), --overwrite to "
            "delete it, or choose another folder"
        )
    if config.overwrite:
        for name in previous | ({LOG_NAME} & names):
            location = storage.join(out, name)
            if storage.is_dir(location) and not storage.is_url(location):
                shutil.rmtree(location)
            else:
                storage.remove(location)
    elif MANIFEST_NAME in names:
        # From here until the new manifest is written, the folder is an unfinished output.
        storage.remove(storage.join(out, MANIFEST_NAME))


def remove_stale_shards(out: str, split: str, keep: set[str]) -> None:
    for name in storage.list_names(out):
        stale_shard = name.startswith(f"{split}-") and name.endswith(".tar") and name not in keep
        if stale_shard or storage.is_temporary(name):
            storage.remove(storage.join(out, name))
