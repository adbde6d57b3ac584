"""The job: inputs -> per-image features (Ray Data, cached) -> pair join -> shards, rejects, stats, manifest.

The pieces live beside it: config (JobConfig, the error budget), output (the folder policy), inputs
(listing and hashing), layout (stages on Ray, Ray start-up), features (the cache), pairs (the join and the
shards), report (stats.json and the final table)."""

from __future__ import annotations

import io
import logging
import sys
import time
from collections import defaultdict

import numpy as np

from preprocess.clip.stats import EmbeddingStats
from preprocess.common import STATUS_OK
from preprocess.job import inputs as job_inputs
from preprocess.job.chain import PLACED_PREFIX
from preprocess.job.config import ErrorBudget, JobConfig, JobError
from preprocess.job.features import FEATURES_DIR, FeatureRow, features_dir, fingerprint, scan_features
from preprocess.job.layout import Pipeline, build_pipeline, init_ray, probe_models
from preprocess.job.output import prepare_output, remove_stale_shards
from preprocess.job.pairs import ShardPlan, join_pairs, plan_shards, write_shard
from preprocess.job.output import LOG_NAME
from preprocess.job.report import PartialStats, StageStats, format_table, job_stats, write_stats
from shards import storage
from shards.cli import RunLog
from shards.manifest import REJECTS_NAME, STATS_NAME, Counts, Manifest, toolkit_version, write_manifest
from shards.rejects import Reject, count_by_reason, write_rejects
from shards.schema import SCHEMA_VERSION, Geometry
from shards.writer import SPLIT_PATTERN


logger = logging.getLogger(__name__)


def compute_features(
    config: JobConfig,
    pipeline: Pipeline,
    todo: list[job_inputs.ImageInput],
    *,
    budget: ErrorBudget,
    errors_so_far: int,
    images_total: int,
) -> tuple[dict[str, StageStats], set[str]]:
    """Run the per-image stages over the images not yet in the cache; features land in the table.

    Returns the per-stage figures and the names of the feature files written."""
    import ray
    from tqdm import tqdm

    stats: dict[str, StageStats] = defaultdict(StageStats)
    written: set[str] = set()
    if not todo:
        return stats, written
    partial = PartialStats(storage.join(config.out, STATS_NAME), pipeline=pipeline, images_to_compute=len(todo))
    done = 0
    blocks = max(1, min(len(todo), (len(todo) + config.batch_size - 1) // config.batch_size))
    dataset = ray.data.from_items(
        [
            {
                "image_id": image.image_id,
                "source_path": image.source_path,
                "content_hash": image.content_hash,
                "status": STATUS_OK,
                "reject_stage": "",
                "detail": "",
            }
            for image in todo
        ],
        override_num_blocks=blocks,
    )
    dataset = pipeline.apply(dataset, blocks=blocks)
    errors = errors_so_far
    bar = tqdm(total=len(todo), desc="images", unit="img", disable=not config.progress, file=sys.stderr)
    try:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            n = len(batch["image_id"])
            done += n
            bar.update(n)
            written.update(str(name) for name in batch["feature_file"])
            for column, values in batch.items():
                if column.startswith("seconds_"):
                    stats[column.removeprefix("seconds_")].seconds += float(np.sum(values))
                elif column.startswith(PLACED_PREFIX):  # where the stage ran (node, GPU ids): stats.json
                    stats[column.removeprefix(PLACED_PREFIX)].placed.update(str(v) for v in values)
            for name in pipeline.stage_names:
                stats[name].rows += n
            for status, stage in zip(batch["status"], batch["reject_stage"]):
                if status != STATUS_OK:
                    stats[str(stage)].rejected[str(status)] += 1
                    errors += 1
            exceeded = budget.exceeded(errors, images_total)
            partial.update(stats, images_done=done, force=exceeded)
            if exceeded:
                raise JobError(
                    f"error budget spent: {errors} of {images_total} images rejected, more than --max-errors allows "
                    f"({budget.describe()}). The features computed so far are kept: look at the reasons with "
                    f"`python -c \"import pyarrow.parquet as pq; print(pq.read_table('{storage.join(config.out, FEATURES_DIR)}', "
                    f"columns=['image_id','status','detail']).to_pandas().query('status != \\\"ok\\\"'))\"`, fix the "
                    "inputs or raise --max-errors, then rerun with --resume"
                )
    finally:
        bar.close()
    return stats, written


def clip_statistics(rows: list[FeatureRow]) -> tuple[list[float], list[float]]:
    """Per-dimension mean and std of the source-image CLIP embeddings over the run's ok images (the
    reference adds noise of this scale to the source-image embedding), merged exactly."""
    import pyarrow.parquet as pq

    wanted: dict[str, set[int]] = defaultdict(set)
    for row in rows:
        wanted[row.file].add(row.row)
    stats = None
    for file, row_numbers in sorted(wanted.items()):
        with storage.open_read(file) as stream:
            column = pq.read_table(stream, columns=["img_clip"]).column("img_clip")
        vectors = np.stack([np.load(io.BytesIO(column[row].as_py())) for row in sorted(row_numbers)])
        stats = stats or EmbeddingStats(vectors.shape[1])
        stats.update(vectors.astype(np.float16))
    if stats is None:
        return [], []
    return [float(v) for v in stats.mean()], [float(v) for v in stats.std()]


def write_shards(config: JobConfig, plans: list[ShardPlan], features: dict[str, FeatureRow], geometry) -> list:
    """One Ray task per shard; a task whose worker dies is retried by Ray, one whose store stops answering
    is retried in place (storage.retry_transient); either way the shard is rewritten whole."""
    import ray

    @ray.remote(num_cpus=1, max_retries=3)
    def task(plan: ShardPlan, rows: dict[str, FeatureRow]):
        return storage.retry_transient(
            lambda: write_shard(out_dir=config.out, plan=plan, geometry=geometry, features=rows,
                                previews=config.previews),
            what=f"shard {storage.join(config.out, plan.name)}",
        )

    futures = []
    for plan in plans:
        needed = {s.source.content_hash for s in plan.samples} | {s.target.content_hash for s in plan.samples}
        futures.append(task.remote(plan, {h: features[h] for h in needed}))
    return ray.get(futures)


def run_job(config: JobConfig) -> Manifest:
    """The whole job; its log (INFO and up, whatever the console shows) goes to OUT/build_shards.log."""
    if not SPLIT_PATTERN.match(config.split):
        raise JobError(f"--split {config.split!r}: use lowercase letters and digits (it names the shards)")
    budget = ErrorBudget.parse(config.max_errors)
    started = time.perf_counter()
    prepare_output(config)
    with RunLog(storage.join(config.out, LOG_NAME), names=("preprocess", "shards")):
        logger.info("build_shards %s", " ".join(config.command) or "(called from Python)")
        try:
            return _run_job(config, budget=budget, started=started)
        except JobError as error:
            logger.error("%s", error)
            raise


def _run_job(config: JobConfig, *, budget: ErrorBudget, started: float) -> Manifest:
    import ray

    phases: dict[str, float] = {}
    rows = job_inputs.read_pairs(config.pairs)
    if not rows:
        raise JobError(f"--pairs {config.pairs}: no pairs (only a header, or empty)")
    paths = job_inputs.referenced_paths(rows)
    logger.info(f"{len(rows)} pairs naming {len(paths)} images under {config.images}")
    hashes = job_inputs.hash_inputs(config.images, paths)
    listed = job_inputs.list_inputs(images_root=config.images, rows=rows, hashes=hashes)
    phases["list_inputs"] = time.perf_counter() - started
    if budget.exceeded(len(listed.image_rejects), listed.images_in):
        examples = "; ".join(r.detail for r in listed.image_rejects[:3])
        raise JobError(
            f"{len(listed.image_rejects)} of {listed.images_in} images named by --pairs cannot be read ({examples}), "
            f"more than --max-errors allows ({budget.describe()}). Is --images the folder the pairs are relative to?"
        )

    pipeline, description = build_pipeline(config)
    fp = fingerprint(description["fingerprint"])
    directory = features_dir(config.out, fp)
    storage.makedirs(directory)
    cached = scan_features(directory)
    representatives: dict[str, job_inputs.ImageInput] = {}
    for image in listed.images:
        representatives.setdefault(image.content_hash, image)
    todo = [image for digest, image in sorted(representatives.items()) if digest not in cached]
    logger.info(
        f"{len(listed.images)} readable images ({len(representatives)} distinct), {len(representatives) - len(todo)} "
        f"already in the feature cache, {len(todo)} to compute; models fingerprint {fp[:16]}"
    )

    owns_ray = not ray.is_initialized()
    if owns_ray:
        init_ray(config)
    try:
        t = time.perf_counter()
        probe = probe_models(config, pipeline)
        phases["load_models"] = time.perf_counter() - t
        pipeline.bind(directory=directory, ray_resources=ray.cluster_resources())
        geometry = Geometry(height=config.height, width=config.width, clip_dim=probe["clip_dim"],
                            latent_channels=probe["latent_channels"])
        logger.info(pipeline.describe())
        t = time.perf_counter()
        stage_stats, written = compute_features(
            config, pipeline, todo, budget=budget, errors_so_far=len(listed.image_rejects),
            images_total=listed.images_in,
        )
        phases["features"] = time.perf_counter() - t
        features = {**scan_features(directory, names=written), **cached}
        missing = [image for image in representatives.values() if image.content_hash not in features]
        if missing:
            raise JobError(f"{len(missing)} images have no feature rows after the run (e.g. {missing[0].source_path}); rerun with --resume")

        image_rejects = list(listed.image_rejects)
        by_id = {image.image_id: image for image in listed.images}
        for image in listed.images:
            row = features[image.content_hash]
            if not row.ok:
                image_rejects.append(Reject(kind="image", id=image.image_id, stage=row.values["reject_stage"],
                                            reason=row.values["status"], detail=row.values["detail"],
                                            path=image.source_path))
        samples, joined_rejects = join_pairs(listed.pairs, by_id, features)
        pair_rejects = listed.pair_rejects + joined_rejects
        t = time.perf_counter()
        plans = plan_shards(samples, features, split=config.split, seed=config.seed,
                            shard_bytes=config.shard_bytes, min_shards=config.min_shards)
        remove_stale_shards(config.out, config.split, {p.name for p in plans})
        records = write_shards(config, plans, features, geometry)
        phases["shards"] = time.perf_counter() - t
    finally:
        if owns_ray:
            ray.shutdown()

    ok_rows = [features[h] for h in {i.content_hash for i in listed.images} if features[h].ok]
    clip_mean, clip_std = clip_statistics(ok_rows)
    counts = Counts(
        images_in=listed.images_in,
        images_ok=sum(features[i.content_hash].ok for i in listed.images),
        images_rejected=count_by_reason(image_rejects, "image"),
        pairs_in=listed.pairs_in,
        pairs_written=sum(r.samples for r in records),
        pairs_rejected=count_by_reason(pair_rejects, "pair"),
        pairs_face_ok=sum(1 for s in samples if features[s.source.content_hash].values["face_ok"]),
    )
    problems = counts.problems()
    if problems:
        raise JobError(f"internal accounting error, please report: {problems}")
    write_rejects(storage.join(config.out, REJECTS_NAME), image_rejects + pair_rejects)
    phases["total"] = time.perf_counter() - started
    stats = job_stats(config, pipeline, stage_stats, phases, listed, todo, counts)
    write_stats(storage.join(config.out, STATS_NAME), stats)
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        toolkit_version=toolkit_version(),
        command=list(config.command),
        tiny=description["tiny"],
        height=config.height,
        width=config.width,
        pose_resize=config.pose_resize,
        latent_channels=geometry.latent_channels,
        latent_dtype="float16",
        vae_scaling_factor=probe["vae_scaling_factor"],
        clip_dim=geometry.clip_dim,
        clip_dtype="float16",
        clip_null_embedding=probe["clip_null_embedding"],
        clip_mean=clip_mean,
        clip_std=clip_std,
        face_dim=geometry.face_dim,
        seed=config.seed,
        models=description["models"],
        shards=sorted(records, key=lambda r: r.name),
        counts=counts,
        settings={**description["settings"], "features_fingerprint": fp, "face_provider": probe.get("face_provider")},
    )
    write_manifest(config.out, manifest)
    logger.info("finished:\n%s", format_table(stats))
    return manifest


