"""The job's non-model path at dataset scale: planning, the per-image feature table and the pair join into
shards, for N images and about 2N pairs, on synthetic cached features of the real sizes at 512x512.

The features are what the job would have cached: rows made by the job's own encoder (``batch_to_table``)
from stage outputs of the real shapes (8x64x64 float16 latents, 768-d CLIP, 512-d face embeddings,
512x512 IUV PNGs, previews), in files of ``batch_size`` rows as the job writes them. A pool of
``templates`` distinct rows is cycled (the bytes of one image's members do not change the cost of copying
them); every image has its own content hash, id and path. What is timed then runs the job's functions:
``read_pairs`` / ``list_inputs`` / ``join_pairs`` / ``plan_shards`` (planning), ``scan_features`` (the
feature table index) and ``write_shards`` (Ray tasks copying members into tars).
"""

from __future__ import annotations

import csv
import hashlib
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from shards import storage
from shards.schema import Geometry

GEOMETRY = Geometry(height=512, width=512, clip_dim=768)


@dataclass(frozen=True, kw_only=True)
class ScaleConfig:
    images: int
    out: str  # scratch folder: pairs.csv, features/, shards
    pairs_per_image: int = 2
    batch_size: int = 4  # rows per feature file, as the job's default --batch-size
    shard_bytes: int = 10**9
    previews: bool = True
    templates: int = 64
    seed: int = 0


def image_path(index: int) -> str:
    return f"img/{index // 1000:03d}/{index:06d}.jpg"


def image_hash(index: int) -> str:
    return hashlib.sha256(f"scale-image-{index}".encode()).hexdigest()


def pair_rows(images: int, per_image: int) -> list[tuple[int, int]]:
    """Each image is the source of ``per_image`` pairs with distinct targets (offsets 1, 7, 31, ...)."""
    offsets = [1, 7, 31, 127, 509][:per_image]
    return [(i, (i + k) % images) for i in range(images) for k in offsets if images > k]


def write_pairs_csv(location: str, images: int, per_image: int) -> int:
    rows = pair_rows(images, per_image)
    with open(location, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["from", "to"])
        writer.writerows((image_path(s), image_path(t)) for s, t in rows)
    return len(rows)


def template_rows(count: int, *, seed: int, previews: bool):
    """``count`` feature rows encoded by the job's own ``batch_to_table`` from stage outputs of real shapes."""
    from preprocess.job.features import batch_to_table
    from shards.synthetic import synthetic_pose

    rng = np.random.default_rng(seed)
    g = GEOMETRY
    n = count
    latent = (g.latent_channels, g.height // 8, g.width // 8)
    face_ok = np.array([i % 4 != 0 for i in range(n)])  # a quarter without a face, as on DeepFashion's backs

    def smooth_photo(height: int, width: int) -> np.ndarray:
        figure = synthetic_pose(rng, height, width).astype(np.float32)
        noise = rng.normal(0, 6, (height, width, 3))
        return np.clip(figure[..., [0, 1, 2]] * [8, 0.5, 0.3] + 60 + noise, 0, 255).astype(np.uint8)

    batch = {
        "content_hash": np.array([f"t{i}" for i in range(n)], dtype=object),
        "image_id": np.array([f"t{i}" for i in range(n)], dtype=object),
        "status": np.array(["ok"] * n, dtype=object),
        "reject_stage": np.array([""] * n, dtype=object),
        "detail": np.array([""] * n, dtype=object),
        "img_latent": rng.normal(0, 1, (n, *latent)).astype(np.float16),
        "tex_latent": rng.normal(0, 1, (n, *latent)).astype(np.float16),
        "img_clip": rng.normal(0, 1, (n, g.clip_dim)).astype(np.float16),
        "tex_clip": rng.normal(0, 1, (n, g.clip_dim)).astype(np.float16),
        "face_emb": (rng.normal(0, 1, (n, g.face_dim)) * 20 * face_ok[:, None]).astype(np.float32),
        "pose_resized": np.stack([synthetic_pose(rng, g.height, g.width) for _ in range(n)]),
        "texture_resized": rng.integers(0, 255, (n, 64, 64, 3), dtype=np.uint8),
        "texture": rng.integers(0, 255, (n, 512, 512, 3), dtype=np.uint8),  # the texture stage's map (preview)
        "image_resized": np.stack([smooth_photo(1101, 750) for _ in range(n)]),  # DeepFashion's photo size
        "face_crop": rng.integers(60, 200, (n, 112, 112, 3), dtype=np.uint8),
        "face_ok": face_ok,
        "orig_h": np.full(n, 1101), "orig_w": np.full(n, 750),
        "person_box": rng.uniform(0, 700, (n, 4)).astype(np.float32), "person_score": rng.uniform(0.5, 1, n),
        "person_count": np.ones(n, np.int32),
        "face_status": np.where(face_ok, "ok", "no_face").astype(object),
        "face_found_by": np.where(face_ok, "image", "").astype(object),
        "face_box": rng.uniform(0, 700, (n, 4)).astype(np.float32), "face_score": rng.uniform(0.5, 1, n),
        "face_det_score": rng.uniform(0.5, 1, n), "face_emb_norm": rng.uniform(15, 25, n),
    }
    return batch_to_table(batch, previews=previews)


def config_templates(config: ScaleConfig):
    """The encoded template rows a config's feature files copy (made once per prepare, shared by its tasks)."""
    return template_rows(min(config.templates, config.images), seed=config.seed, previews=config.previews)


def write_feature_range(directory: str, ids: list[str], start: int, stop: int, *, config: ScaleConfig,
                        templates) -> int:
    """Feature files for images [start, stop), ``batch_size`` rows each, as the job's writer names them,
    copying ``templates`` (the encoded rows of :func:`config_templates`)."""
    import pyarrow as pa

    from preprocess.job.features import write_feature_file

    files = 0
    for first in range(start, stop, config.batch_size):
        indices = list(range(first, min(stop, first + config.batch_size)))
        table = templates.take(pa.array([i % templates.num_rows for i in indices]))
        table = table.set_column(0, "content_hash", pa.array([image_hash(i) for i in indices], pa.string()))
        table = table.set_column(1, "image_id", pa.array([ids[i] for i in indices], pa.string()))
        write_feature_file(directory, table)
        files += 1
    return files


@dataclass(kw_only=True)
class PeakRss:
    """Samples the resident memory of this process and of its Ray worker processes (``ray::`` children)."""

    interval: float = 0.1
    driver_start_mb: float = 0.0  # before the timed phases: imports, Ray's client
    driver_mb: float = 0.0
    workers_mb: float = 0.0  # the largest single worker
    workers_total_mb: float = 0.0  # all workers at one moment
    _cpu: dict = field(default_factory=dict)  # worker pid -> (first, last) user+system CPU seconds
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        import psutil

        me = psutil.Process()
        self.driver_mb = max(self.driver_mb, me.memory_info().rss / 2**20)
        total = 0.0
        for child in me.children(recursive=True):
            try:
                if not child.name().startswith("ray::") and "default_worker" not in " ".join(child.cmdline()):
                    continue
                rss = child.memory_info().rss / 2**20
                times = child.cpu_times()
                first, _ = self._cpu.get(child.pid, (times.user + times.system, 0.0))
                self._cpu[child.pid] = (first, times.user + times.system)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            total += rss
            self.workers_mb = max(self.workers_mb, rss)
        self.workers_total_mb = max(self.workers_total_mb, total)

    @property
    def workers_cpu_seconds(self) -> float:
        """CPU time the workers spent while sampled: on a shared machine, the cost that wall time hides."""
        return sum(last - first for first, last in self._cpu.values())

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> PeakRss:
        import psutil

        self.driver_start_mb = psutil.Process().memory_info().rss / 2**20
        self.sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def prepare(config: ScaleConfig) -> tuple[str, str, int]:
    """Write pairs.csv and the synthetic feature table (Ray tasks, untimed); (pairs CSV, feature folder, pairs)."""
    import ray

    from preprocess.job import inputs as job_inputs
    from preprocess.job.features import features_dir

    storage.makedirs(config.out)
    pairs_csv = os.path.join(config.out, "pairs.csv")
    pairs = write_pairs_csv(pairs_csv, config.images, config.pairs_per_image)
    rows = job_inputs.read_pairs(pairs_csv)
    hashes = {image_path(i): (image_hash(i), 100_000) for i in range(config.images)}
    listed = job_inputs.list_inputs(rows=rows, hashes=hashes)
    by_path = {image.source_path: image.image_id for image in listed.images}
    ids = [by_path[image_path(i)] for i in range(config.images)]
    directory = features_dir(config.out, hashlib.sha256(b"scale-bench").hexdigest())
    storage.makedirs(directory)
    # The template rows are encoded once (in a task of their own: the generators' arrays are gone before
    # anything is measured) and shared; each chunk only copies them into files.
    templates_ref = ray.remote(num_cpus=1, max_calls=1)(config_templates).remote(config)
    task = ray.remote(num_cpus=1, max_calls=1)(write_feature_range)
    chunk = 1024
    ids_ref = ray.put(ids)
    ray.get([task.remote(directory, ids_ref, start, min(config.images, start + chunk), config=config,
                         templates=templates_ref)
             for start in range(0, config.images, chunk)])
    return pairs_csv, directory, pairs


def run_scale(config: ScaleConfig) -> dict:
    """Prepare, then time the three phases; the result the bench prints (without machine facts)."""
    import ray

    from preprocess.job import inputs as job_inputs
    from preprocess.job.features import scan_features
    from preprocess.job.pairs import image_rows, join_pairs, plan_shards
    from preprocess.job.config import JobConfig
    from preprocess.job.run import write_shards

    t = time.perf_counter()
    pairs_csv, directory, _ = prepare(config)
    prepare_s = time.perf_counter() - t
    job = JobConfig(images=config.out, pairs=pairs_csv, out=config.out, shard_bytes=config.shard_bytes,
                    previews=config.previews, progress=False)
    phases: dict[str, float] = {}
    with PeakRss() as peak:
        t0 = time.perf_counter()
        features = scan_features(directory)
        phases["feature_table"] = time.perf_counter() - t0
        t = time.perf_counter()
        rows = job_inputs.read_pairs(pairs_csv)
        hashes = {image_path(i): (image_hash(i), 100_000) for i in range(config.images)}
        listed = job_inputs.list_inputs(rows=rows, hashes=hashes)
        image_features = image_rows(listed.images, features)
        samples, rejects = join_pairs(listed.pairs, image_features)
        cuts = plan_shards(samples, image_features, split="train", seed=config.seed, shard_bytes=config.shard_bytes,
                           min_shards=1)
        phases["planning"] = time.perf_counter() - t
        t = time.perf_counter()
        records = write_shards(job, cuts, samples, image_features, GEOMETRY)
        phases["join_write"] = time.perf_counter() - t
        seconds = time.perf_counter() - t0
    if rejects:
        raise RuntimeError(f"{len(rejects)} synthetic pairs rejected: {rejects[0].detail}")
    cores = int(ray.cluster_resources().get("CPU", 1))
    pairs = sum(r.samples for r in records)
    shard_bytes = sum(r.bytes for r in records)
    return {
        "images": config.images,
        "pairs": pairs,
        "shards": len(records),
        "shard_bytes_total": shard_bytes,
        "bytes_per_pair": round(shard_bytes / pairs),
        "seconds": round(seconds, 2),
        "phases_seconds": {k: round(v, 2) for k, v in phases.items()},
        "pairs_per_second": round(pairs / seconds, 1),
        "join_write_pairs_per_second_per_core": round(pairs / phases["join_write"] / cores, 1),
        "microseconds_per_pair": round(1e6 * seconds / pairs, 1),
        "cores": cores,
        "workers_cpu_seconds": round(peak.workers_cpu_seconds, 1),
        "join_write_pairs_per_worker_cpu_second": round(pairs / max(peak.workers_cpu_seconds, 1e-9), 1),
        "load_average_1min_at_end": round(os.getloadavg()[0], 1),
        "peak_rss_driver_mb": round(peak.driver_mb, 1),
        "rss_driver_before_mb": round(peak.driver_start_mb, 1),
        "peak_rss_workers_mb": round(peak.workers_mb, 1),
        "peak_rss_workers_total_mb": round(peak.workers_total_mb, 1),
        "prepare_seconds_untimed": round(prepare_s, 1),
        "records": records,
    }


def write_tiny_images(root: str, images: int) -> None:
    """``images`` distinct files of a few bytes at :func:`image_path` (the planning cost does not depend on
    their pixels); a marker file makes a kept ``--scale-out`` folder reusable."""
    marker = os.path.join(root, f".complete-{images}")
    if os.path.exists(marker):
        return
    for i in range(images):
        path = os.path.join(root, image_path(i))
        if i % 1000 == 0:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as stream:
            stream.write(f"scale-image-{i}".encode())
    open(marker, "wb").close()


def run_plan(config: ScaleConfig, *, read_batch: int = 1024) -> dict:
    """The job's planning phase alone, on N tiny files and ~2N pairs: the pairs CSV, the folders' listings,
    the ids, every file read and hashed once by the job's decode stage on Ray workers (``read_batch`` rows a
    batch), and the pair plan (``plan_pairs``), through the job's own functions. Driver RSS is sampled throughout."""
    import ray

    from preprocess.job import inputs as job_inputs
    from preprocess.job.decode import READ_STAGE, DecodeConfig, DecodeStage
    from preprocess.job.config import JobConfig
    from preprocess.job.run import plan_inputs, work_table

    root = os.path.join(config.out, "images")
    t = time.perf_counter()
    write_tiny_images(root, config.images)
    pairs_csv = os.path.join(config.out, "pairs.csv")
    write_pairs_csv(pairs_csv, config.images, config.pairs_per_image)
    prepare_s = time.perf_counter() - t
    cores = int(ray.cluster_resources().get("CPU", 1))
    phases: dict[str, float] = {}
    with PeakRss() as peak:
        t0 = time.perf_counter()
        table, catalog = plan_inputs(JobConfig(images=root, pairs=pairs_csv, out=config.out, progress=False))
        work = work_table(catalog)
        phases["read_pairs_list_and_ids"] = time.perf_counter() - t0
        t = time.perf_counter()
        dataset = ray.data.from_arrow([work.slice(s, read_batch) for s in range(0, work.num_rows, read_batch)])
        del work
        dataset = dataset.map_batches(DecodeStage, fn_constructor_kwargs={"config": DecodeConfig(images_root=root)},
                                      batch_size=read_batch, compute=ray.data.ActorPoolStrategy(size=cores),
                                      num_cpus=1)
        dataset = dataset.select_columns(["source_path", "content_hash", "read_size", "reject_stage", "read_error"])
        for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            for path, digest, size, stage, error in zip(*(batch.column(c).to_pylist() for c in batch.column_names)):
                # as the job records each read (a tiny file is read, hashed, then rejected by decode)
                catalog.record_read(path, digest=digest, size=size, missing=False,
                                    error=error if stage == READ_STAGE else None)
        phases["read_and_hash_on_workers"] = time.perf_counter() - t
        t = time.perf_counter()
        listed = job_inputs.plan_pairs(table, catalog)
        phases["pair_plan"] = time.perf_counter() - t
        seconds = time.perf_counter() - t0
    if len(listed.images) != config.images or listed.image_rejects:
        raise RuntimeError(f"{len(listed.image_rejects)} of {config.images} tiny files were not read")
    return {
        "images": config.images,
        "pairs": len(listed.pairs),
        "plan_seconds": round(seconds, 2),
        "microseconds_per_image": round(1e6 * seconds / config.images, 1),
        "phases_seconds": {k: round(v, 2) for k, v in phases.items()},
        "cores": cores,
        "driver_rss_baseline_mb": round(peak.driver_start_mb, 1),
        "driver_rss_peak_mb": round(peak.driver_mb, 1),
        "driver_rss_growth_bytes_per_image": round((peak.driver_mb - peak.driver_start_mb) * 2**20 / config.images),
        "workers_rss_peak_mb": round(peak.workers_mb, 1),
        "load_average_1min_at_end": round(os.getloadavg()[0], 1),
        "prepare_seconds_untimed": round(prepare_s, 1),
    }
