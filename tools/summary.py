"""`mcld-data summary OUT`: what an output folder holds, in a screenful."""

from __future__ import annotations

from shards import storage
from shards.manifest import REJECTS_NAME, Manifest, read_manifest
from shards.rejects import count_by_reason, read_rejects


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _reasons(reasons: dict[str, int]) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items())) or "none"


def summarize(out_dir: str) -> tuple[list[str], bool]:
    """Lines to print, and whether every count adds up."""
    manifest: Manifest = read_manifest(out_dir)
    counts = manifest.counts
    lines = [f"{out_dir}: schema v{manifest.schema_version}, made by mcld-data {manifest.toolkit_version}"]
    lines.append(f"  command: {' '.join(manifest.command)}")
    if manifest.tiny:
        lines.append("  TINY MODELS: toy weights for tests and demos; these features are not for training")
    lines.append(
        f"  resolution {manifest.height}x{manifest.width}, latents {manifest.latent_channels}x"
        f"{manifest.height // 8}x{manifest.width // 8} {manifest.latent_dtype} (VAE scaling factor "
        f"{manifest.vae_scaling_factor}), CLIP dim {manifest.clip_dim}, pose resize {manifest.pose_resize}, "
        f"seed {manifest.seed}"
    )
    masks = manifest.settings.get("texture_part_masks_sha256")
    lines.append(  # absent in older shards: those were made in paper mode with derived masks
        f"  feature modes: face {manifest.settings.get('face_mode', 'paper')}, texture part masks "
        f"{'sha256 ' + masks[:16] if masks else 'derived from the DensePose chart'}"
    )
    problems = counts.problems()
    images_rejected = sum(counts.images_rejected.values())
    pairs_rejected = sum(counts.pairs_rejected.values())
    lines.append(
        f"  images: {counts.images_in} in = {counts.images_ok} ok + {images_rejected} rejected "
        f"({_reasons(counts.images_rejected)})"
    )
    lines.append(
        f"  pairs:  {counts.pairs_in} in = {counts.pairs_written} written + {pairs_rejected} rejected "
        f"({_reasons(counts.pairs_rejected)})"
    )
    rejects_path = storage.join(out_dir, REJECTS_NAME)
    if storage.exists(rejects_path):
        rejects = read_rejects(rejects_path)
        table = {"image": count_by_reason(rejects, "image"), "pair": count_by_reason(rejects, "pair")}
        if table["image"] != counts.images_rejected or table["pair"] != counts.pairs_rejected:
            problems.append(f"{REJECTS_NAME} ({table}) disagrees with the manifest's counts")
    else:
        problems.append(f"{REJECTS_NAME} is missing")
    lines.append("  counts add up" if not problems else "  COUNTS DO NOT ADD UP: " + "; ".join(problems))
    if counts.pairs_written:
        share = counts.pairs_face_ok / counts.pairs_written
        lines.append(f"  face coverage: {counts.pairs_face_ok}/{counts.pairs_written} samples ({share:.0%}) have a source face")
    total = sum(s.bytes for s in manifest.shards)
    lines.append(f"  shards: {len(manifest.shards)}, {_size(total)} in all")
    for split in manifest.splits:
        records = manifest.shards_of(split)
        samples = [r.samples for r in records]
        sizes = [r.bytes for r in records]
        lines.append(
            f"    {split}: {len(records)} shards, {sum(samples)} samples ({min(samples)}-{max(samples)} per shard), "
            f"{_size(min(sizes))}-{_size(max(sizes))} each"
        )
    lines.append("  models:")
    for model in manifest.models:
        label = " (tiny)" if model.tiny else ""
        lines.append(f"    {model.name}{label}: {model.source}")
        for name, digest in sorted(model.files.items()):
            lines.append(f"      {name}  sha256 {digest[:16]}")
        if model.settings:
            shown = ", ".join(f"{k}={v}" for k, v in sorted(model.settings.items()))
            lines.append(f"      settings: {shown}")
    return lines, not problems
