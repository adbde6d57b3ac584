"""The dump CLI: fixture layout, visualisation, and clear failures."""

import numpy as np
import pytest
from PIL import Image

from preprocess.densepose.__main__ import main
from preprocess.densepose.stage import DensePoseConfig, DensePoseStage
from tests.conftest import stage_batch

from .conftest import assert_iuv_close


def test_dump_writes_the_fixture_keys_and_a_visualisation(tiny, tmp_path, astronaut):
    image = tmp_path / "astronaut.jpg"
    Image.fromarray(astronaut).save(image, quality=95)
    gray = tmp_path / "gray.png"
    Image.fromarray(astronaut[:, :, 0]).save(gray)
    out = tmp_path / "out"
    assert main(["--config", str(tiny[0]), "--weights", str(tiny[1]), "--out", str(out), "--vis", "--batch", "2",
                 str(image), str(gray)]) == 0
    dump = np.load(out / "astronaut.npz")
    n = len(dump["scores"])
    assert n > 0
    expected = {"boxes_xyxy", "scores", "boxes_xywh", "iuv_top1"} | {f"labels_{i}" for i in range(n)} \
        | {f"uv_{i}" for i in range(n)}
    assert set(dump.files) == expected
    assert dump["boxes_xyxy"].dtype == np.float32 and dump["boxes_xyxy"].shape == (n, 4)
    np.testing.assert_allclose(dump["boxes_xywh"][:, 2:], dump["boxes_xyxy"][:, 2:] - dump["boxes_xyxy"][:, :2])
    assert dump["iuv_top1"].shape == (512, 512, 3) and dump["iuv_top1"].dtype == np.uint8
    x, y, w, h = (int(v) for v in dump["boxes_xywh"][0])
    assert dump["labels_0"].shape == (max(h, 1), max(w, 1)) and dump["uv_0"].shape == (2, max(h, 1), max(w, 1))
    # The oracle: the pipeline stage (its own person-only chart path) on the same pair decoded here with PIL,
    # in one batch as --batch 2 batches it.
    decoded = np.asarray(Image.open(image).convert("RGB"))
    stage = DensePoseStage(config=DensePoseConfig(config_path=tiny[0], weights_path=tiny[1], max_batch=2))
    images = [decoded, np.repeat(astronaut[:, :, :1], 3, axis=2)]
    expected = stage(stage_batch(2, image=images))
    assert_iuv_close(dump["iuv_top1"], expected["iuv"][0])
    assert dump["scores"][0] == expected["person_score"][0] and n == expected["person_count"][0]
    np.testing.assert_array_equal(dump["boxes_xyxy"][0], expected["person_box"][0])
    vis = Image.open(out / "astronaut_vis.png")
    assert vis.mode == "RGB" and vis.size == (512, 512)
    assert (out / "gray.npz").is_file() and (out / "gray_vis.png").is_file()


def test_unreadable_image_fails_that_image_only(tiny, tmp_path, capsys, astronaut):
    good = tmp_path / "good.png"
    Image.fromarray(astronaut[:64, :64]).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    out = tmp_path / "out"
    assert main(["--config", str(tiny[0]), "--weights", str(tiny[1]), "--out", str(out), str(bad), str(good)]) == 1
    console = capsys.readouterr()
    warning = f"skipped: decode_failed: {bad}: not an image format PIL can identify"
    assert warning in console.err  # shown without -v, and kept in the run log with the successful image
    log = (out / "densepose.log").read_text()
    assert f"WARNING preprocess.densepose.cli: {warning}" in log and f"INFO preprocess.densepose.cli: {good}: " in log
    assert console.out == f"{out}: 1 written (0 with no detection), 1 unreadable; log {out / 'densepose.log'}\n"
    assert (out / "good.npz").is_file() and not (out / "bad.npz").exists()


def test_no_detection_writes_empty_arrays(tiny, tmp_path, capsys, astronaut):
    config = tmp_path / "never.yaml"
    config.write_text(f'_BASE_: "{tiny[0]}"\nMODEL:\n  ROI_HEADS:\n    SCORE_THRESH_TEST: 1.0\n')
    image = tmp_path / "a.png"
    Image.fromarray(astronaut[:80, :60]).save(image)
    assert main(["--config", str(config), "--weights", str(tiny[1]), "--out", str(tmp_path), str(image)]) == 0
    dump = np.load(tmp_path / "a.npz")
    assert sorted(dump.files) == ["boxes_xywh", "boxes_xyxy", "iuv_top1", "scores"]
    assert dump["boxes_xyxy"].shape == (0, 4) and not dump["iuv_top1"].any() and dump["iuv_top1"].shape == (80, 60, 3)
    console = capsys.readouterr()
    assert f"{image}: no detection (empty arrays written)" in console.err
    assert f"{image}: no detection" in (tmp_path / "densepose.log").read_text()
    assert "1 written (1 with no detection), 0 unreadable" in console.out


def test_bad_config_weights_and_names(tiny, tmp_path, fixtures_root):
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    with pytest.raises(SystemExit, match="error: .*weights do not match"):
        main(["--config", str(fixtures_root / "r50" / "config.yaml"), "--weights", str(tiny[1]),
              "--out", str(tmp_path), str(image)])
    with pytest.raises(SystemExit, match="error: .*config file does not exist"):
        main(["--config", str(tmp_path / "none.yaml"), "--weights", str(tiny[1]), "--out", str(tmp_path), str(image)])
    other = tmp_path / "sub"
    other.mkdir()
    twin = other / "a.png"
    twin.write_bytes(image.read_bytes())
    with pytest.raises(SystemExit, match="would both write a.npz"):
        main(["--config", str(tiny[0]), "--weights", str(tiny[1]), "--out", str(tmp_path), str(image), str(twin)])


def test_module_entry_point(tiny, tmp_path, astronaut):
    """`python -m preprocess.densepose ...` as users type it."""
    import subprocess
    import sys

    image = tmp_path / "person.png"
    Image.fromarray(astronaut[::4, ::4]).save(image)
    done = subprocess.run([sys.executable, "-m", "preprocess.densepose", "--config", str(tiny[0]), "--weights",
                           str(tiny[1]), "--out", str(tmp_path / "out"), "--device", "cpu", str(image)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "person.npz").is_file()


def test_a_folder_given_as_image_is_reported(tiny, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    assert main(["--config", str(tiny[0]), "--weights", str(tiny[1]), "--out", str(tmp_path), str(folder)]) == 1
    console = capsys.readouterr()
    assert f"skipped: unreadable: {folder}" in console.err
    assert "0 written (0 with no detection), 1 unreadable" in console.out
