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
from preprocess.job.allocator import pin_driver_mmap_threshold
from preprocess.job.chain import PLACED_PREFIX
from preprocess.job.config import ErrorBudget, JobConfig, JobError
from preprocess.job.decode import READ_STAGE, STATUS_CACHED
from preprocess.job.features import FEATURES_DIR, FeatureIndex, FeatureRow, features_dir, fingerprint, scan_features
from preprocess.job.layout import Pipeline, build_pipeline, init_ray, probe_models
from preprocess.job.output import prepare_output, remove_stale_shards
from preprocess.job.inputs import PairList
from preprocess.job.pairs import ImageFeatures, ShardCut, ShardPlan, image_rows, join_pairs, plan_shards, write_shard
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
    """What the feature phase gives the driver: per-stage figures and the feature files written; what each
    listed file's one read found goes into the catalog (its hash and size, or its OSError), and ``read``
    marks the catalog's paths some worker reported."""

    stats: dict[str, StageStats]
    written: set[str]
    read: np.ndarray  # bool per catalog path
    computed: int = 0  # images whose features were computed (not found in the cache)
    cached: int = 0


def work_table(catalog: job_inputs.Catalog, cache_ids=None):
    """The feature phase's input rows, one per listed file, sorted by id (an Arrow table: compact at 1M).
    ``cache_ids``: the feature cache's (image_id, content_hash) table (FeatureIndex.cache_ids; None: no cache)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    order = catalog.id_order()
    n = len(order)
    ids = pa.array([catalog.ids[p] for p in order], pa.string())
    if cache_ids is None:
        cached = pa.nulls(n, pa.string())
    else:
        cached = pc.take(cache_ids.column("content_hash"), pc.index_in(ids, value_set=cache_ids.column("image_id")))
    return pa.table({
        "image_id": ids,
        "source_path": pa.array([catalog.paths[p] for p in order], pa.string()),
        "listed_size": pa.array(catalog.sizes[order], pa.int64()),
        "cached_hash": pc.fill_null(cached, ""),
        "content_hash": pa.array(catalog.digests[order]).cast(pa.string()),  # "" unless hashed while planning
        "status": pa.array(np.full(n, STATUS_OK, dtype=object), pa.string()),
        "reject_stage": pa.array(np.full(n, "", dtype=object), pa.string()),
        "detail": pa.array(np.full(n, "", dtype=object), pa.string()),
    })


def plan_inputs(config: JobConfig) -> tuple[job_inputs.PairTable, job_inputs.Catalog]:
    """The driver's planning before any image is read: the pairs CSV, one listing per folder, ids from paths
    (hashing only paths whose ids collide). Columns, not objects: a few hundred bytes per image."""
    pin_driver_mmap_threshold()
    table = job_inputs.read_pairs(config.pairs)
    if not len(table):
        raise JobError(f"--pairs {config.pairs}: no pairs (only a header, or empty)")
    paths = job_inputs.referenced_paths(table)
    logger.info(f"{len(table)} pairs naming {len(paths)} images under {config.images}")
    # The driver lists folders (no request per image); the workers read and hash each image once.
    catalog = job_inputs.list_images(config.images, paths)
    del paths
    job_inputs.plan_ids(config.images, catalog)
    return table, catalog


def compute_features(
    config: JobConfig,
    pipeline: Pipeline,
    work,
    catalog: job_inputs.Catalog,
    *,
    budget: ErrorBudget,
    errors_so_far: int,
    images_total: int,
) -> FeaturePhase:
    """Read every listed image once (workers: hash, then decode), run the per-image stages on those whose
    content is not in the cache; features land in the table."""
    import ray
    from tqdm import tqdm

    phase = FeaturePhase(stats=defaultdict(StageStats), written=set(), read=np.zeros(len(catalog), bool))
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
                status, stage = str(status), str(stage)
                phase.read[catalog.record_read(str(path), digest=str(digest), size=int(size), missing=status == "missing_file",
                                               error=str(error) if stage == READ_STAGE else None)] = True
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


def clip_statistics(features: FeatureIndex, positions: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-dimension mean and std of the source-image CLIP embeddings over the run's ok images (the index's
    rows at ``positions``; the reference adds noise of this scale to the source-image embedding), merged exactly."""
    import pyarrow.parquet as pq

    wanted: dict[str, set[int]] = defaultdict(set)
    for seq, row in zip(features.column("seq", positions), features.column("row", positions)):
        wanted[features.files[seq]].add(int(row))
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


def write_shards(config: JobConfig, cuts: list[ShardCut], samples: PairList, rows: ImageFeatures, geometry) -> list:
    """One Ray task per shard; a task whose worker dies is retried by Ray, one whose store stops answering
    is retried in place (storage.retry_transient); either way the shard is rewritten whole. A shard's
    samples become objects only while its task is sent (``rows``: each image's feature row)."""
    import ray

    @ray.remote(num_cpus=SHARD_TASK_CPUS, max_retries=3)
    def task(plan: ShardPlan, rows: dict[str, FeatureRow]):
        return storage.retry_transient(
            lambda: write_shard(out_dir=config.out, plan=plan, geometry=geometry, features=rows,
                                previews=config.previews),
            what=f"shard {storage.join(config.out, plan.name)}",
        )

    futures = []
    for cut in cuts:
        images = sorted(set(samples.source[cut.members].tolist()) | set(samples.target[cut.members].tolist()))
        futures.append(task.remote(cut.plan(samples), {samples.images.content_hash(i): row
                                                       for i, row in zip(images, rows.rows(images))}))
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
    import pyarrow.compute as pc
    import ray

    phases: dict[str, float] = {}
    table, catalog = plan_inputs(config)
    phases["list_inputs"] = time.perf_counter() - started
    failures = len(catalog.errors)
    if budget.exceeded(failures, len(catalog)):
        examples = "; ".join(f"{catalog.paths[i]}: {e.strerror or e}" for i, e in sorted(catalog.errors.items())[:3])
        raise JobError(
            f"{failures} of {len(catalog)} images named by --pairs cannot be read ({examples}), "
            f"more than --max-errors allows ({budget.describe()}). Is --images the folder the pairs are relative to?"
        )

    pipeline, description = build_pipeline(config)
    fp = fingerprint(description["fingerprint"])
    directory = features_dir(config.out, fp)
    storage.makedirs(directory)
    cached = scan_features(directory, with_ids=True)
    work = work_table(catalog, cached.cache_ids)
    planned = catalog.readable()
    logger.info(
        f"{len(planned)} images listed, {pc.sum(pc.not_equal(work.column('cached_hash'), '')).as_py() or 0} of them in the "
        f"feature cache if unchanged; each is read once by a worker, the others to compute; models fingerprint {fp[:16]}"
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
                config, pipeline, work, catalog, budget=budget, errors_so_far=failures, images_total=len(catalog),
            )
        del work
        phases["features"] = time.perf_counter() - t
        unread = planned[~phase.read[planned]]
        if len(unread):
            raise JobError(f"{len(unread)} listed images came back from no worker (e.g. {catalog.paths[unread[0]]}); "
                           "rerun with --resume")
        listed = job_inputs.plan_pairs(table, catalog)
        del table
        features = cached.merged(scan_features(directory, names=phase.written))
        del cached
        images = listed.images
        try:
            rows = image_rows(images, features)
        except KeyError as error:
            raise JobError(f"an image has no feature row after the run ({error.args[0]}); rerun with --resume") from error
        image_rejects = list(listed.image_rejects)
        failed = np.flatnonzero(~rows.ok())
        for i, row in zip(failed, rows.rows(failed)):
            image_rejects.append(Reject(kind="image", id=images.image_id(i), stage=row.values["reject_stage"],
                                        reason=row.values["status"], detail=row.values["detail"],
                                        path=images.source_path(i)))
        samples, joined_rejects = join_pairs(listed.pairs, rows)
        pair_rejects = listed.pair_rejects + joined_rejects
        t = time.perf_counter()
        cuts = plan_shards(samples, rows, split=config.split, seed=config.seed,
                           shard_bytes=config.shard_bytes, min_shards=config.min_shards)
        remove_stale_shards(config.out, config.split, {c.name for c in cuts})
        with cluster_failures("shard writing"):
            records = write_shards(config, cuts, samples, rows, geometry)
        phases["shards"] = time.perf_counter() - t
    finally:
        if owns_ray:
            ray.shutdown()

    ok = rows.ok()
    clip_mean, clip_std = clip_statistics(features, np.unique(rows.positions[ok]))  # one per content
    counts = Counts(
        images_in=listed.images_in,
        images_ok=int(ok.sum()),
        images_rejected=count_by_reason(image_rejects, "image"),
        pairs_in=listed.pairs_in,
        pairs_written=sum(r.samples for r in records),
        pairs_rejected=count_by_reason(pair_rejects, "pair"),
        pairs_face_ok=int(rows.column("face_ok", fill=False)[samples.source].sum()),
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


