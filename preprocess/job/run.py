"""The job: inputs -> per-image features (Ray Data, cached) -> pair join -> shards, rejects, stats, manifest.

The pieces live beside it: config (JobConfig, the error budget), output (the folder policy), inputs
(listing and hashing), layout (stages on Ray, Ray start-up), features (the cache), pairs (the join and the
shards), report (stats.json and the final table)."""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from preprocess.clip.stats import EmbeddingStats
from preprocess.common import STATUS_OK
from preprocess.job import inputs as job_inputs
from preprocess.job.chain import PLACED_PREFIX
from preprocess.job.config import ErrorBudget, JobConfig, JobError
from preprocess.job.decode import READ_STAGE, STATUS_CACHED
from preprocess.job.features import CHANGED, FEATURES_DIR, FeatureRow, features_dir, fingerprint, scan_features
from preprocess.job.layout import Pipeline, build_pipeline, init_ray, probe_models
from preprocess.job.output import prepare_output, remove_stale_shards
from preprocess.job.pairs import ShardPlan, join_pairs, plan_shards, write_shard
from preprocess.job.output import LOG_NAME
from preprocess.job.report import PartialStats, StageStats, format_table, job_stats, write_stats
from preprocess.job.watch import RESUME_HINT, NodeWatch, halt_dataset, pipeline_needs
from shards import storage
from shards.cli import RunLog
from shards.manifest import REJECTS_NAME, STATS_NAME, Counts, Manifest, toolkit_version, write_manifest
from shards.rejects import Reject, count_by_reason, write_rejects
from shards.schema import SCHEMA_VERSION, Geometry
from shards.writer import SPLIT_PATTERN


logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class FeaturePhase:
    """What the feature phase gives the driver: per-stage figures, the feature files written, and per
    listed path what its one read found: (sha256, size), or the OSError text of an unreadable file."""

    stats: dict[str, StageStats]
    written: set[str]
    hashes: dict[str, tuple[str, int] | OSError]
    computed: int = 0  # images whose features were computed (not found in the cache)
    cached: int = 0


def work_table(ids: dict[str, str], sizes: dict[str, int], known: dict[str, tuple[str, int]],
               cached_by_id: dict[str, str]):
    """The feature phase's input rows, one per listed file, sorted by id (an Arrow table: compact at 1M)."""
    import pyarrow as pa

    order = sorted(ids, key=ids.__getitem__)
    n = len(order)
    return pa.table({
        "image_id": [ids[p] for p in order],
        "source_path": order,
        "listed_size": pa.array([sizes[p] for p in order], pa.int64()),
        "cached_hash": [cached_by_id.get(ids[p], "") for p in order],
        "content_hash": [known[p][0] if p in known else "" for p in order],
        "status": [STATUS_OK] * n,
        "reject_stage": [""] * n,
        "detail": [""] * n,
    })


def compute_features(
    config: JobConfig,
    pipeline: Pipeline,
    work,
    *,
    budget: ErrorBudget,
    errors_so_far: int,
    images_total: int,
) -> FeaturePhase:
    """Read every listed image once (workers: hash, then decode), run the per-image stages on those whose
    content is not in the cache; features land in the table."""
    import ray
    from tqdm import tqdm

    phase = FeaturePhase(stats=defaultdict(StageStats), written=set(), hashes={})
    stats = phase.stats
    if not work.num_rows:
        return phase
    partial = PartialStats(storage.join(config.out, STATS_NAME), pipeline=pipeline, images_to_compute=work.num_rows)
    done = 0
    step = config.batch_size
    dataset = ray.data.from_arrow([work.slice(start, step) for start in range(0, work.num_rows, step)])
    blocks = (work.num_rows + step - 1) // step
    dataset = pipeline.apply(dataset, blocks=blocks)
    errors = errors_so_far
    bar = tqdm(total=work.num_rows, desc="images", unit="img", disable=not config.progress, file=sys.stderr)
    watch = NodeWatch(phase="features", needs=pipeline_needs(pipeline.plan), wait_s=config.node_wait)
    batches = watch.iterate(dataset.iter_batches(batch_size=None, batch_format="numpy"),
                            halt=lambda: halt_dataset(dataset))
    try:
        for batch in batches:
            n = len(batch["image_id"])
            done += n
            bar.update(n)
            phase.written.update(str(name) for name in batch["feature_file"] if name)
            for column, values in batch.items():
                if column.startswith("seconds_"):
                    stats[column.removeprefix("seconds_")].seconds += float(np.sum(values))
                elif column.startswith(PLACED_PREFIX):  # where the stage ran (node, GPU ids): stats.json
                    stats[column.removeprefix(PLACED_PREFIX)].placed.update(str(v) for v in values)
            for name in pipeline.stage_names:
                stats[name].rows += n
            for path, digest, size, status, stage, error in zip(
                batch["source_path"], batch["content_hash"], batch["read_size"], batch["status"],
                batch["reject_stage"], batch["read_error"],
            ):
                path, status, stage = str(path), str(status), str(stage)
                if stage == READ_STAGE:
                    phase.hashes[path] = (FileNotFoundError if status == "missing_file" else OSError)(str(error))
                else:
                    phase.hashes[path] = (str(digest), int(size))
                if status == STATUS_CACHED:
                    phase.cached += 1
                    continue
                phase.computed += stage != READ_STAGE
                if status != STATUS_OK:
                    stats[stage].rejected[status] += 1
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
        batches.close()
        bar.close()
    return phase


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


SHARD_TASK_CPUS = 1


def write_shards(config: JobConfig, plans: list[ShardPlan], features: dict[str, FeatureRow], geometry) -> list:
    """One Ray task per shard; a task whose worker dies is retried by Ray, one whose store stops answering
    is retried in place (storage.retry_transient); either way the shard is rewritten whole."""
    import ray

    @ray.remote(num_cpus=SHARD_TASK_CPUS, max_retries=3)
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
    watch = NodeWatch(phase="shard writing", needs=[{"CPU": float(SHARD_TASK_CPUS)}], wait_s=config.node_wait)
    return watch.get(futures)


@contextlib.contextmanager
def cluster_failures(phase: str):
    """What Ray could not recover from and raised (a lost actor that cannot be restarted, an object whose
    owner died) stops the job with one line saying how to continue. Ray itself reruns the batches and shard
    tasks of a lost node on the nodes left; where no node is left Ray waits instead of raising, and
    watch.NodeWatch bounds that wait."""
    import ray

    try:
        yield
    except ray.exceptions.RayError as error:
        if isinstance(error, ray.exceptions.RayTaskError) and not isinstance(error.cause, ray.exceptions.RayError):
            raise  # an error of the task's own code, not of the cluster
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise JobError(
            f"the cluster lost workers or nodes during {phase} and Ray could not recover "
            f"({type(error).__name__}: {first[:300]}). {RESUME_HINT}"
        ) from error


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
    # The driver lists folders (no request per image); the workers read and hash each image once.
    sizes, failures = job_inputs.list_images(config.images, paths)
    ids, known, hash_failures = job_inputs.plan_ids(config.images, sizes)
    failures.update(hash_failures)
    for path in hash_failures:
        del sizes[path]
    phases["list_inputs"] = time.perf_counter() - started
    if budget.exceeded(len(failures), len(paths)):
        examples = "; ".join(f"{p}: {e.strerror or e}" for p, e in sorted(failures.items())[:3])
        raise JobError(
            f"{len(failures)} of {len(paths)} images named by --pairs cannot be read ({examples}), "
            f"more than --max-errors allows ({budget.describe()}). Is --images the folder the pairs are relative to?"
        )

    pipeline, description = build_pipeline(config)
    fp = fingerprint(description["fingerprint"])
    directory = features_dir(config.out, fp)
    storage.makedirs(directory)
    cached_by_id: dict[str, str] = {}
    cached = scan_features(directory, ids=cached_by_id)
    work = work_table(ids, sizes, known, cached_by_id)
    del sizes
    logger.info(
        f"{len(ids)} images listed, {sum(ids[p] in cached_by_id for p in ids)} of them in the feature cache if "
        f"unchanged; each is read once by a worker, the others to compute; models fingerprint {fp[:16]}"
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
        with cluster_failures("features"):
            phase = compute_features(
                config, pipeline, work, budget=budget, errors_so_far=len(failures), images_total=len(paths),
            )
        phases["features"] = time.perf_counter() - t
        unread = set(ids) - set(phase.hashes)
        if unread:
            raise JobError(f"{len(unread)} listed images came back from no worker (e.g. {min(unread)}); rerun with --resume")
        listed = job_inputs.list_inputs(images_root=config.images, rows=rows, hashes={**failures, **phase.hashes}, ids=ids)
        features = dict(cached)
        for digest, row in scan_features(directory, names=phase.written).items():
            if digest not in features or features[digest].values["status"] == CHANGED:
                features[digest] = row
        missing = [image for image in listed.images if image.content_hash not in features]
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
        with cluster_failures("shard writing"):
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
    stats = job_stats(config, pipeline, phase.stats, phases, computed=phase.computed, cached=phase.cached,
                      counts=counts)
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


