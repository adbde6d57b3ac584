"""Streaming training batches from shards: one reader per (rank, DataLoader worker), nothing via rank 0.

Any number of ranks x workers on any number of shards (>= 1). Each epoch has one global order (the shards
in a seeded permutation, each shard's samples in file order), cut into equal runs of whole batches: rank r
reads the r-th run, each of its workers a contiguous part of it. Every sample is read once per epoch; the
positions past the dataset's size (fewer than world_size x batch_size) repeat the first samples of the
order, so every rank yields the same number of batches and DDP never waits on a rank that ran dry. A reader
streams the shards its run covers whole (checked against the manifest's sha256) and seeks to its own
samples in a shard it shares with others, so sharing costs tar headers, not bytes. Samples are shuffled
raw in a per-reader buffer before decode; batches are collated inside the workers.

Position is exact and cheap to restore: an epoch's stream is a function of (seed, epoch, reader), and
resuming skips the batches already consumed on raw bytes, before decode.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, fields

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shards import storage
from shards.reader import ReadStats, ShardError, ShardSource, iter_samples, iter_shard_members, iter_shard_span
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


@dataclass(frozen=True, kw_only=True)
class Piece:
    """Samples ``start <= i < stop`` of one shard (file order); ``whole`` when that is the entire shard."""

    url: str
    start: int
    stop: int
    whole: bool


@dataclass(frozen=True, kw_only=True)
class EpochPlan:
    """One epoch's global sample order and who reads what of it.

    The order: the shards in a seeded permutation of (seed, epoch), each shard's samples in file order (the
    job shuffled them when it wrote the shards). It is cut into ``world_size * batches * batch_size``
    positions, taken cyclically: the positions past the dataset's size are the padding, the first samples
    of the order again. Rank r owns positions ``[r * batches * batch_size, (r + 1) * ...)``, and within a
    rank each DataLoader worker a contiguous run of whole batches, so a reader touches only the shards its
    run crosses and reads a shard that several readers share by seeking to its own samples.
    """

    urls: list[str]
    counts: list[int]
    order: list[int]  # shard indices, this epoch's order
    world_size: int
    workers: int
    batch_size: int
    batches: int  # per rank

    @property
    def samples(self) -> int:
        return sum(self.counts)

    @property
    def positions(self) -> int:
        return self.world_size * self.batches * self.batch_size

    @property
    def padding(self) -> int:
        """Positions beyond one pass over the data (the first samples of the order, read again); negative
        when ``batches`` is set below one pass."""
        return self.positions - self.samples

    def worker_batches(self, role: int) -> int:
        return split_count(self.batches, self.workers, role)

    def span(self, *, rank: int, role: int) -> tuple[int, int]:
        """[first, end) positions of reader (rank, role)."""
        first = rank * self.batches + sum(self.worker_batches(r) for r in range(role))
        return first * self.batch_size, (first + self.worker_batches(role)) * self.batch_size

    def pieces(self, *, rank: int, role: int) -> list[Piece]:
        first, end = self.span(rank=rank, role=role)
        total = self.samples
        bounds = np.concatenate([[0], np.cumsum([self.counts[k] for k in self.order])])
        pieces: list[Piece] = []
        position = first
        while position < end:
            cyclic = position % total
            slot = int(np.searchsorted(bounds, cyclic, side="right")) - 1
            shard = self.order[slot]
            start = cyclic - int(bounds[slot])
            stop = min(self.counts[shard], start + end - position)
            pieces.append(Piece(url=self.urls[shard], start=start, stop=stop,
                                whole=start == 0 and stop == self.counts[shard]))
            position += stop - start
        return pieces


def epoch_plan(*, urls: list[str], counts: list[int], seed: int, epoch: int, world_size: int, workers: int,
               batch_size: int, batches: int) -> EpochPlan:
    order = [int(i) for i in np.random.default_rng(mix_seed(seed, epoch)).permutation(len(urls))]
    return EpochPlan(urls=list(urls), counts=list(counts), order=order, world_size=world_size,
                     workers=max(1, workers), batch_size=batch_size, batches=batches)


class TrainStream(IterableDataset):
    """One epoch of one rank's batches; each DataLoader worker reads its own run of the epoch's order.

    Any number of ranks and workers on any number of shards (>= 1): every sample once per epoch across all
    readers, plus the padding :class:`EpochPlan` states.
    """

    def __init__(self, *, source: ShardSource, rank: int, world_size: int, num_workers: int, batch_size: int,
                 batches_per_epoch: int | None = None, seed: int, shuffle_buffer: int, verify_checksums: bool,
                 stats: ReadStats | None = None) -> None:
        super().__init__()
        if source.manifest is None:
            raise DataError("training reads an output folder with manifest.json (it needs each shard's sample count)")
        records = {r.name: r for r in source.manifest.shards}
        self.counts = []
        for url in source.urls:
            record = records.get(storage.name_of(url))
            if record is None:
                raise DataError(f"{url}: not listed in the manifest")
            self.counts.append(record.samples)
        self.source = source
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.batch_size = batch_size
        samples = sum(self.counts)
        if samples == 0:
            raise DataError("the shards hold no samples")
        self.batches_per_epoch = batches_per_epoch if batches_per_epoch is not None else \
            _one_pass(samples=samples, world_size=world_size, batch_size=batch_size)
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.verify_checksums = verify_checksums
        self.stats = stats  # bytes read, when measuring
        self.epoch = 0
        self.skip_batches = 0  # batches of this epoch already consumed (set on resume)

    def plan(self) -> EpochPlan:
        return epoch_plan(urls=self.source.urls, counts=self.counts, seed=self.seed, epoch=self.epoch,
                          world_size=self.world_size, workers=self.num_workers, batch_size=self.batch_size,
                          batches=self.batches_per_epoch)

    def worker_batches(self, role: int) -> int:
        return split_count(self.batches_per_epoch, max(1, self.num_workers), role)

    def raw_samples(self, role: int) -> Iterator[dict]:
        """One reader's raw samples for the epoch: its pieces in order, shuffled in a buffer, undecoded.

        A function of (seed, epoch, rank, role) only, never of process ids or clocks.
        """
        workers = max(1, self.num_workers)
        reader = self.rank * workers + role
        pieces = self.plan().pieces(rank=self.rank, role=role)
        expected = self.source.expected() if self.verify_checksums else {}
        raw = _read_pieces(pieces, expected=expected, stats=self.stats)
        if self.shuffle_buffer > 0:
            # Shuffled as raw bytes, before decode: the buffer costs memory, not decoding.
            seed = mix_seed(self.seed, self.epoch, reader)
            raw = wds.filters._shuffle(raw, bufsize=self.shuffle_buffer, initial=max(1, self.shuffle_buffer // 2),
                                       seed=seed)
        return iter(raw)

    def __iter__(self) -> Iterator[TrainBatch]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        workers = max(1, self.num_workers)
        # A resumed epoch's loader starts its round-robin at worker 0; rotating roles by the batches
        # already consumed makes worker 0 the reader whose turn it was.
        role = (worker + self.skip_batches) % workers
        total = self.worker_batches(role)
        skip = min(total, consumed_by_worker(self.skip_batches, workers=workers, worker=role))
        if total == 0:
            return
        raw = self.raw_samples(role)
        for _ in itertools.islice(raw, skip * self.batch_size):
            pass
        geometry = self.source.geometry
        for _ in range(total - skip):
            members = list(itertools.islice(raw, self.batch_size))
            yield collate([decode_members(m, geometry=geometry) for m in members])


def _read_pieces(pieces: list[Piece], *, expected: dict, stats: ReadStats | None) -> Iterator[dict]:
    """Whole shards stream (and are checked against the manifest's sha256); parts are read by seeking."""
    for piece in pieces:
        if piece.whole:
            yield from iter_shard_members(piece.url, expected=expected.get(piece.url), stats=stats)
        else:
            yield from iter_shard_span(piece.url, piece.start, piece.stop, stats=stats)


def _one_pass(*, samples: int, world_size: int, batch_size: int) -> int:
    return max(1, math.ceil(samples / (world_size * batch_size)))


def batches_per_epoch(*, samples: int, world_size: int, batch_size: int) -> int:
    """Per rank: enough batches that every sample is read once in an epoch (the rest is padding)."""
    return _one_pass(samples=samples, world_size=world_size, batch_size=batch_size)


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
