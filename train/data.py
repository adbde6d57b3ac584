"""Streaming training batches from shards: one reader per (rank, DataLoader worker), nothing via rank 0.

Each reader owns a disjoint slice of the shard list and draws from it with replacement (webdataset's
ResampledShards), shuffles raw samples in a buffer, and only then decodes. Every rank yields the same
number of batches per epoch, so DDP never waits on a rank that ran dry. Batches are collated inside the
workers; the main process only moves them to the device.

Position is exact and cheap to restore: an epoch's stream is a function of (seed, epoch, reader), and
resuming skips the batches already consumed on raw bytes, before decode.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shards.reader import ShardError, ShardSource, iter_samples, iter_shard_members
from shards.schema import Geometry, SchemaError, decode_sample


class DataError(ValueError):
    """Shards that cannot feed this run as configured; the message says why and what to change."""


@dataclass(kw_only=True)
class TrainBatch:
    """A collated batch. Latents and CLIP stay float16 as stored; pose stays uint8 (V, U, I) channels first."""

    keys: list[str]
    tgt_latent: torch.Tensor  # (B, 8, h, w) float16, mean ++ logvar
    ref_latent: torch.Tensor  # (B, 8, h, w) float16
    src_clip: torch.Tensor  # (B, D) float16
    tex_clip: torch.Tensor  # (B, D) float16
    face_emb: torch.Tensor  # (B, 512) float32
    face_ok: torch.Tensor  # (B,) bool
    tgt_pose: torch.Tensor  # (B, 3, H, W) uint8, channels (V, U, I): the reference's PIL view of the PNG

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "keys"}

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> TrainBatch:
        moved = {k: v.to(device, non_blocking=non_blocking) for k, v in self._tensors().items()}
        return TrainBatch(keys=list(self.keys), **moved)

    def pin_memory(self) -> TrainBatch:
        return TrainBatch(keys=list(self.keys), **{k: v.pin_memory() for k, v in self._tensors().items()})

    def __len__(self) -> int:
        return len(self.keys)


def pose_channels_first(iuv: np.ndarray) -> np.ndarray:
    """(H, W, 3) array (I, U, V) -> (3, H, W) in (V, U, I) order, i.e. the channels a PIL/RGB decode gives."""
    return np.ascontiguousarray(iuv[:, :, ::-1].transpose(2, 0, 1))


def collate(samples: list[dict]) -> TrainBatch:
    """Decoded schema samples (numpy) -> one TrainBatch."""

    def stack(name: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([s[name] for s in samples]))

    return TrainBatch(
        keys=[s["__key__"] for s in samples],
        tgt_latent=stack("tgt_latent"),
        ref_latent=stack("ref_latent"),
        src_clip=stack("src_clip"),
        tex_clip=stack("tex_clip"),
        face_emb=stack("face_emb"),
        face_ok=torch.tensor([bool(s["meta"]["face_ok"]) for s in samples], dtype=torch.bool),
        tgt_pose=torch.from_numpy(np.stack([pose_channels_first(s["tgt_pose"]) for s in samples])),
    )


def decode_members(members: dict, *, geometry: Geometry | None) -> dict:
    url = members.get("__url__", "?")
    try:
        return decode_sample(members, geometry=geometry)
    except SchemaError as error:
        raise ShardError(f"{url}: {error}") from error


def split_count(total: int, parts: int, index: int) -> int:
    """How many of ``total`` items part ``index`` of ``parts`` gets (the first ones get one more)."""
    return total // parts + (1 if index < total % parts else 0)


def consumed_by_worker(consumed: int, *, workers: int, worker: int) -> int:
    """Batches worker ``worker`` produced among the first ``consumed`` a DataLoader returned.

    The DataLoader takes batches from its workers in turn (batch i from worker i % workers); per-worker
    counts differ by at most one with the larger counts first, so the turn order holds to the end.
    """
    return max(0, (consumed - worker + workers - 1) // workers)


def mix_seed(*parts: int) -> int:
    value = 0
    for part in parts:
        value = (value * 1_000_003 + int(part)) % (2**31 - 1)
    return value


class TrainStream(IterableDataset):
    """One epoch of one rank's batches; each DataLoader worker reads its own shards."""

    def __init__(self, *, source: ShardSource, rank: int, world_size: int, num_workers: int, batch_size: int,
                 batches_per_epoch: int, seed: int, shuffle_buffer: int, verify_checksums: bool) -> None:
        super().__init__()
        self.source = source
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.batch_size = batch_size
        self.batches_per_epoch = batches_per_epoch
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.verify_checksums = verify_checksums
        self.epoch = 0
        self.skip_batches = 0  # batches of this epoch already consumed (set on resume)
        readers = world_size * max(1, num_workers)
        if len(source.urls) < readers:
            raise DataError(
                f"{len(source.urls)} shard(s) for {readers} readers ({world_size} process(es) x "
                f"{max(1, num_workers)} DataLoader worker(s)): every reader needs shards of its own. Write more, "
                "smaller shards (build_shards.py --shard-size) or lower data.num_workers"
            )

    def reader_urls(self, role: int) -> list[str]:
        readers = self.world_size * max(1, self.num_workers)
        reader = self.rank * max(1, self.num_workers) + role
        return self.source.urls[reader::readers]

    def worker_batches(self, role: int) -> int:
        return split_count(self.batches_per_epoch, max(1, self.num_workers), role)

    def raw_samples(self, role: int) -> Iterator[dict]:
        """The infinite raw-sample stream of one reader: resampled own shards, shuffled, undecoded.

        A function of (seed, epoch, rank, role) only, never of process ids or clocks.
        """
        workers = max(1, self.num_workers)
        reader = self.rank * workers + role
        urls = self.reader_urls(role)
        expected = ShardSource(urls=urls, manifest=self.source.manifest).expected() if self.verify_checksums else {}
        seed = mix_seed(self.seed, self.epoch, reader)
        stages = [
            wds.ResampledShards(urls, seed=seed, worker_seed=lambda: reader, deterministic=True),
            _expand(expected),
        ]
        if self.shuffle_buffer > 0:
            # Shuffled as raw bytes, before decode: the buffer costs memory, not decoding.
            stages.append(wds.shuffle(bufsize=self.shuffle_buffer, initial=max(1, self.shuffle_buffer // 2), seed=seed))
        return iter(wds.DataPipeline(*stages))

    def __iter__(self) -> Iterator[TrainBatch]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        workers = max(1, self.num_workers)
        # A resumed epoch's loader starts its round-robin at worker 0; rotating roles by the batches
        # already consumed makes worker 0 the reader whose turn it was.
        role = (worker + self.skip_batches) % workers
        total = self.worker_batches(role)
        skip = min(total, consumed_by_worker(self.skip_batches, workers=workers, worker=role))
        raw = self.raw_samples(role)
        for _ in itertools.islice(raw, skip * self.batch_size):
            pass
        geometry = self.source.geometry
        for _ in range(total - skip):
            members = list(itertools.islice(raw, self.batch_size))
            yield collate([decode_members(m, geometry=geometry) for m in members])


def _expand(expected: dict) -> Callable[[Iterable[dict]], Iterator[dict]]:
    def expand(shards: Iterable[dict]) -> Iterator[dict]:
        for shard in shards:
            yield from iter_shard_members(shard["url"], expected=expected.get(shard["url"]))

    return expand


def batches_per_epoch(*, samples: int, world_size: int, batch_size: int) -> int:
    """An epoch is about one pass over the data across all ranks (at least one batch)."""
    return max(1, samples // (world_size * batch_size))


def make_loader(stream: TrainStream, *, pin_memory: bool) -> DataLoader:
    workers = stream.num_workers
    # The loader's own generator: starting an epoch must not draw from the global RNG the training
    # step uses, or a resumed run would diverge from an uninterrupted one.
    generator = torch.Generator().manual_seed(stream.seed)
    return DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=pin_memory, generator=generator,
                      prefetch_factor=2 if workers > 0 else None, persistent_workers=False)


def load_pairs(source: str | list[str], *, count: int, geometry: Geometry) -> list[dict]:
    """The first ``count`` samples of a shard folder, in order: fixed validation pairs."""
    pairs = []
    for sample in iter_samples(source):
        pairs.append(sample)
        if len(pairs) == count:
            break
    found = Geometry(height=pairs[0]["tgt_pose"].shape[0], width=pairs[0]["tgt_pose"].shape[1],
                     clip_dim=pairs[0]["src_clip"].shape[0])
    if (found.height, found.width, found.clip_dim) != (geometry.height, geometry.width, geometry.clip_dim):
        raise DataError(
            f"{source}: validation samples are {found.height}x{found.width} with CLIP width {found.clip_dim}; "
            f"training shards are {geometry.height}x{geometry.width} with {geometry.clip_dim}"
        )
    return pairs
