"""`mcld-data evaluate` on hand-made inputs: the sampler's GEN folder format, the FID cache, and every case the
reference leaves undefined (identical images, non-RGB files, missing generated files, pairs without a face)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tools.cli import main
from tools.evaluate.metrics import FeatureStats, frechet_distance, pixel_scores


def _rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _save(array: np.ndarray, path, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path)


def _evaluate(*args) -> int:
    return main(["evaluate", *map(str, args), "--workers", "0", "--batch-size", "2", "--quiet"])


@pytest.fixture(scope="module")
def visible_set(first_set):
    return first_set


# ------------------------------------------------------------------ the sampler's GEN folder


def _reference_resize(path, height: int, width: int) -> np.ndarray:
    """The reference dataset's gt: PIL bicubic resize (torchvision Resize on a PIL image, antialias)."""
    return np.asarray(Image.open(path).convert("RGB").resize((width, height), Image.Resampling.BICUBIC))


def _write_gen(visible_set, tmp_path):
    """A GEN folder in the sampler's contract format over three originals (different sizes, one grayscale)."""
    images = tmp_path / "images"
    train = sorted((visible_set / "fashion" / "train").glob("*.jpg"))
    originals = {"img-a": train[0], "img-b": train[1], "img-c": train[2]}
    for name, source in originals.items():
        (images / "WOMEN").mkdir(parents=True, exist_ok=True)
        shutil.copy(source, images / "WOMEN" / f"{name}.jpg")
    keys = [("img-c", "img-a"), ("img-a", "img-b"), ("img-b", "img-c")]
    gen = tmp_path / "gen"
    rng = np.random.default_rng(0)
    for height, width in ((256, 176), (512, 352)):
        for number, (source, target) in enumerate(keys):
            key = f"{source}__{target}"
            truth = _reference_resize(images / "WOMEN" / f"{target}.jpg", height, width)
            if number == 0:
                generated = truth  # exactly the gt the reference would make: PSNR inf, LPIPS 0
            elif number == 1:
                generated = np.clip(truth.astype(int) + rng.integers(-20, 21, truth.shape), 0, 255).astype(np.uint8)
            elif height == 512:
                continue  # missing at 512x352
            else:
                generated = np.ascontiguousarray(truth[:, ::-1])
            _save(generated, gen / f"{height}x{width}" / f"{key}.png")
    _save(np.zeros((64, 64, 3), np.uint8), gen / "64x64" / "img-c__img-a.png")  # the shards' own size: not scored
    pq.write_table(pa.table({
        "key": [f"{s}__{t}" for s, t in keys], "source_id": [s for s, _ in keys], "target_id": [t for _, t in keys],
        "source_path": [f"WOMEN/{s}.jpg" for s, _ in keys], "target_path": [f"WOMEN/{t}.jpg" for _, t in keys],
        "seed": pa.array([42] * 3, pa.int64())}), gen / "index.parquet")
    (gen / "settings.json").write_text(json.dumps({"steps": 2, "seed": 42}))
    return gen, images


def test_gen_folder_scored_against_resized_originals_with_cached_fid(visible_set, eval_models, tmp_path, capsys):
    gen, images = _write_gen(visible_set, tmp_path)
    common = [gen, "--images", images, "--train-images", images / "WOMEN", "--models", eval_models,
              "--cache-dir", tmp_path / "cache"]
    assert _evaluate(*common, "-o", tmp_path / "r1") == 0
    first = json.loads((tmp_path / "r1" / "metrics.json").read_text())
    assert first["layout"] == "gen" and first["sampling_settings"] == {"steps": 2, "seed": 42}
    small, large = first["resolutions"]["256x176"], first["resolutions"]["512x352"]
    assert (small["pairs"], small["scored"], small["missing_generated"]) == (3, 3, [])
    assert (large["pairs"], large["scored"], large["missing_generated"]) == (3, 2, ["img-b__img-c"])
    assert small["FID_real_cache"] == large["FID_real_cache"] == "miss" and small["FID_real_images"] == 3
    assert math.isfinite(small["FID"]) and small["FID"] > 0
    rows = {(r["resolution"], r["name"]): r for r in pq.read_table(tmp_path / "r1" / "per_image.parquet").to_pylist()}
    # The unchanged reference-resized gt scores as identical at both sizes: gt is resized exactly as the reference.
    for folder in ("256x176", "512x352"):
        identical = rows[(folder, "img-c__img-a")]
        assert identical["psnr"] == math.inf and identical["lpips"] == 0.0 and identical["ssim"] == 1.0
        assert rows[(folder, "img-a__img-b")]["psnr"] < 40
    assert rows[("512x352", "img-b__img-c")]["status"] == "missing_generated"
    assert small["PSNR"] == "inf" and small["PSNR_infinite"] == 1
    assert small["PSNR_finite_mean"] == pytest.approx(np.mean([rows[("256x176", k)]["psnr"]
                                                               for k in ("img-a__img-b", "img-b__img-c")]))
    assert rows[("256x176", "img-c__img-a")]["face_status"] is not None  # faces scored at 256 only
    assert rows[("512x352", "img-c__img-a")]["face_status"] is None
    page = (tmp_path / "r1" / "report.html").read_text()
    assert "data:image/png;base64," in page and "Worst lpips at 256x176" in page and "img-b__img-c" in page
    capsys.readouterr()

    # Second evaluation: the training images' statistics come from the cache, same numbers.
    assert _evaluate(*common, "-o", tmp_path / "r2", "--resolutions", "256") == 0
    second = json.loads((tmp_path / "r2" / "metrics.json").read_text())["resolutions"]["256x176"]
    assert second["FID_real_cache"] == "hit" and second["FID"] == small["FID"]
    # A changed training image changes the content hash: recomputed.
    (images / "WOMEN" / "img-a.jpg").write_bytes((visible_set / "fashion" / "train" / "10_tr_rocket.jpg").read_bytes())
    assert _evaluate(*common, "-o", tmp_path / "r3", "--resolutions", "256") == 0
    third = json.loads((tmp_path / "r3" / "metrics.json").read_text())["resolutions"]["256x176"]
    assert third["FID_real_cache"] == "miss" and third["FID"] != small["FID"]


# ------------------------------------------------------------------ what the reference leaves undefined


def test_undefined_cases_are_defined(visible_set, eval_models, tmp_path, capsys):
    gt_256, made = visible_set / "gt" / "256", tmp_path / "ref"
    sources = sorted(gt_256.glob("*.png"))
    a, b, c, e = (_rgb(p) for p in sources[:4])
    grey = np.full_like(a, 128)
    _save(a, made / "gt/256/a.png"), _save(a, made / "mcld/256/a.png")                     # identical
    _save(b, made / "gt/256/b.png"), _save(b, made / "mcld/256/b.png", mode="L")           # grayscale generated
    _save(c, made / "gt/256/c.png", mode="RGBA"), _save(255 - c, made / "mcld/256/c.png")  # RGBA gt
    _save(grey, made / "gt/256/d.png"), _save(grey, made / "mcld/256/d.png")               # flat vs flat
    _save(e, made / "gt/256/e.png"), _save((e * 0.12).astype(np.uint8), made / "mcld/256/e.png")  # no face
    _save(e, made / "gt/256/f.png")                                                        # no generated file
    _save(e, made / "gt/256/g.png"), (made / "mcld/256/g.png").write_bytes(b"\x89PNG cut")  # unreadable
    train = tmp_path / "train"
    train.mkdir()
    for path in sorted((visible_set / "fashion" / "train").glob("*.jpg"))[:3]:
        shutil.copy(path, train / path.name)
    shutil.copy(sources[0], train / "ignored.png")  # the reference's *.jpg glob skips it
    assert _evaluate(made / "mcld", "--gt", made / "gt", "--train-images", train, "--models", eval_models,
                     "-o", tmp_path / "report", "--resolutions", "256", "--cache-dir", tmp_path / "cache") == 0
    printed = capsys.readouterr().out
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    result = metrics["resolutions"]["256x176"]
    rows = {r["name"]: r for r in pq.read_table(tmp_path / "report" / "per_image.parquet").to_pylist()}

    assert result["FID_real_images"] == 3
    # Missing generated file: named and counted, the rest scored.
    assert result["missing_generated"] == ["f.png"] and result["scored"] == 5 and rows["f.png"]["status"] == \
        "missing_generated"
    assert "MISSING 1 generated image(s)" in printed
    # An unreadable generated file: named with its reason, counted, not scored; the run goes on.
    assert rows["g.png"]["status"] == "unreadable" and math.isnan(rows["g.png"]["lpips"])
    assert result["unreadable"] == {"g.png": rows["g.png"]["reason"]}
    assert rows["g.png"]["reason"].startswith(f"{made / 'mcld/256/g.png'}: cannot read image")
    assert "UNREADABLE 1 pair(s)" in printed and result["pairs"] == 7
    assert "could not be read" in (tmp_path / "report" / "evaluate.log").read_text()
    # Identical images: PSNR inf per image; the reference's mean is inf, the finite mean is reported beside it.
    assert rows["a.png"]["psnr"] == math.inf and rows["a.png"]["lpips"] == 0.0 and rows["a.png"]["ssim"] == 1.0
    assert rows["d.png"]["psnr"] == math.inf
    assert result["PSNR"] == "inf" and result["PSNR_infinite"] == 2
    finite = [rows[n]["psnr"] for n in ("b.png", "c.png", "e.png")]
    assert result["PSNR_finite_mean"] == pytest.approx(np.mean(finite), abs=1e-12)
    assert "PSNR: inf" in printed and "2 identical pair(s) (inf)" in printed
    # Flat generated and gt: SSIM_256's data range is 0 -> nan, as in the reference, and counted.
    assert math.isnan(rows["d.png"]["ssim_256"]) and result["SSIM_256_nan"] == 1 and result["SSIM_256"] == "nan"
    # Grayscale / RGBA files are converted to RGB (the reference crashes) and flagged.
    assert rows["b.png"]["converted"] == "generated:L" and rows["c.png"]["converted"] == "gt:RGBA"
    assert result["converted_to_rgb"] == 2
    grey_b = np.asarray(Image.fromarray(b).convert("L").convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255
    expected_b = pixel_scores(b.astype(np.float32).transpose(2, 0, 1) / 255, grey_b)
    assert rows["b.png"]["psnr"] == expected_b.psnr and rows["b.png"]["ssim"] == expected_b.ssim
    # No face in the dark generated image: kept in per_image with its reason, counted, left out of the means.
    assert rows["e.png"]["face_status"] == "no_face_generated" and math.isnan(rows["e.png"]["face_cosine"])
    face = metrics["face"]
    assert face["no_face_generated"] >= 1
    assert face["pairs_scored"] == sum(r["face_status"] == "ok" for r in rows.values())
    kept = [r["face_cosine"] for r in rows.values() if r["face_status"] == "ok"]
    assert face["Face cosine similarity"] == pytest.approx(np.mean(np.array(kept, np.float32)), abs=1e-7)
    assert "without a face left out" in printed


def test_input_errors_are_one_clear_line(visible_set, eval_models, tmp_path, capsys):
    # Evaluation is local: a URL is refused by the argument parser, naming it (not read as a relative path).
    with pytest.raises(SystemExit):
        _evaluate("s3://bucket/gen", "--images", tmp_path, "--models", eval_models, "-o", tmp_path / "o")
    assert "s3://bucket/gen: evaluate works on local folders only" in capsys.readouterr().err
    ref = tmp_path / "ref"
    (ref / "gt" / "512").mkdir(parents=True)
    _save(_rgb(next((visible_set / "gt" / "256").glob("*.png"))), ref / "gt" / "256" / "x.png")
    # Empty gt/512 (the reference: ValueError from an empty concatenate).
    assert _evaluate(ref / "mcld", "--gt", ref / "gt", "--models", eval_models, "-o", tmp_path / "o") == 1
    assert f"{ref / 'gt' / '512'}: no ground-truth images" in capsys.readouterr().err
    # Generated and gt of different sizes.
    _save(np.zeros((128, 88, 3), np.uint8), ref / "mcld" / "256" / "x.png")
    assert _evaluate(ref / "mcld", "--gt", ref / "gt", "--models", eval_models, "-o", tmp_path / "o",
                     "--resolutions", "256") == 1
    err = capsys.readouterr().err
    assert f"{ref / 'mcld' / '256' / 'x.png'}: size 88x128 differs from its ground truth" in err
    # A GEN folder without --images; a missing models file; a models file naming a missing weight file.
    (tmp_path / "gen").mkdir()
    pq.write_table(pa.table({"key": ["a__b"], "target_path": ["b.jpg"]}), tmp_path / "gen" / "index.parquet")
    assert _evaluate(tmp_path / "gen", "--models", eval_models, "-o", tmp_path / "o") == 1
    assert "needs --images" in capsys.readouterr().err
    assert _evaluate(tmp_path / "gen", "--images", tmp_path, "--models", eval_models, "-o", tmp_path / "o") == 1
    assert "1 ground-truth image(s) listed in" in capsys.readouterr().err
    assert _evaluate(ref / "mcld", "--gt", ref / "gt", "--models", tmp_path / "nope.yaml", "-o", tmp_path / "o",
                     "--resolutions", "256") == 1
    assert "nope.yaml: models file does not exist" in capsys.readouterr().err
    broken = tmp_path / "models.yaml"
    broken.write_text(eval_models.read_text().replace("alexnet-owt-7be5be79.pth", "missing.pth"))
    assert _evaluate(ref / "mcld", "--gt", ref / "gt", "--models", broken, "-o", tmp_path / "o",
                     "--resolutions", "256") == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mcld-data evaluate:")]
    assert len(err) == 1 and "alexnet file" in err[0] and "missing.pth not found" in err[0]


# ------------------------------------------------------------------ FID on statistics


def test_fid_is_zero_for_the_same_statistics_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(64, 8)).astype(np.float32)
    stats = FeatureStats.of(features)
    assert stats.mu.dtype == np.float32 and stats.sigma.dtype == np.float64  # as the reference keeps them
    assert abs(frechet_distance(stats, stats)) < 1e-9
    shifted = FeatureStats.of(features + np.float32(0.5))
    assert frechet_distance(stats, shifted) == pytest.approx(8 * 0.25, rel=1e-5)
    assert math.isnan(frechet_distance(stats, FeatureStats.of(features[:1])))  # one image: undefined
