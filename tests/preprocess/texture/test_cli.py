"""python -m preprocess.texture, called through main(argv)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from preprocess.texture import core
from preprocess.texture.__main__ import main
from preprocess.texture.synthetic import synthetic_image, synthetic_iuv


@pytest.fixture()
def files(tmp_path):
    image, iuv = synthetic_image(150, 100, seed=21), synthetic_iuv(150, 100, seed=21)
    cv2.imwrite(str(tmp_path / "person.png"), image)
    cv2.imwrite(str(tmp_path / "person_iuv.png"), iuv)
    return tmp_path, image, iuv


def _args(folder, image="person.png", iuv="person_iuv.png", out="t.png", *extra: str) -> list[str]:
    return ["--image", str(folder / image), "--iuv", str(folder / iuv), "--out", str(folder / out), *extra]


def test_writes_the_texture_and_the_atlas(files, capsys):
    folder, image, iuv = files
    out, atlas_out = folder / "out" / "tex.png", folder / "out" / "atlas.png"
    rc = main(_args(folder, "person.png", "person_iuv.png", "out/tex.png", "--atlas-out", str(atlas_out), "-v"))
    assert rc == 0
    said = capsys.readouterr().err.splitlines()  # -v: what was written; quiet without it
    assert said == [f"[preprocess.texture.cli] texture {out} (from {folder / 'person.png'} and "
                    f"{folder / 'person_iuv.png'})", f"[preprocess.texture.cli] atlas {atlas_out}"]
    assert main(_args(folder, "person.png", "person_iuv.png", "out/tex.png")) == 0
    assert capsys.readouterr().err == ""
    texture, atlas = core.map_texture(image, iuv)
    np.testing.assert_array_equal(cv2.imread(str(out), cv2.IMREAD_UNCHANGED), texture)
    np.testing.assert_array_equal(cv2.imread(str(atlas_out), cv2.IMREAD_UNCHANGED), atlas)


def test_with_the_reference_mask_image_it_writes_the_reference_file(fixture_dir, tmp_path):
    out = tmp_path / "tex.png"
    masks = str(fixture_dir / "reference_part_masks_200.png")
    rc = main(_args(fixture_dir, "b_image.png", "b_iuv.png", str(out), "--part-masks", masks))
    assert rc == 0
    np.testing.assert_array_equal(cv2.imread(str(out)), cv2.imread(str(fixture_dir / "b_texture.png")))


def test_a_missing_image_is_named(files, capsys):
    folder, _, _ = files
    rc = main(_args(folder, "nobody.png"))
    assert rc == 2
    assert f"image {folder / 'nobody.png'}: no such file" in capsys.readouterr().err
    assert not (folder / "t.png").exists()


def test_an_iuv_of_another_size_names_both_files(files, capsys):
    folder, _, iuv = files
    cv2.imwrite(str(folder / "small_iuv.png"), iuv[:75])
    rc = main(_args(folder, "person.png", "small_iuv.png"))
    assert rc == 2
    err = capsys.readouterr().err
    assert f"{folder / 'person.png'} with IUV {folder / 'small_iuv.png'}: bad_iuv: IUV is 75x100" in err


def test_a_16_bit_iuv_is_refused_not_converted(files, capsys):
    folder, _, iuv = files
    cv2.imwrite(str(folder / "iuv16.png"), iuv.astype(np.uint16) * 257)
    rc = main(_args(folder, "person.png", "iuv16.png"))
    assert rc == 2
    assert "bad_iuv: IUV must be an H x W x 3 uint8 array (I, U, V), got uint16" in capsys.readouterr().err


def test_undecodable_and_unwritable_files_are_named(files, capsys):
    folder, _, _ = files
    (folder / "broken.png").write_bytes(b"\x89PNG nothing")
    rc = main(_args(folder, "broken.png"))
    assert rc == 2 and f"image {folder / 'broken.png'}: OpenCV cannot decode" in capsys.readouterr().err
    rc = main(_args(folder, "person.png", "person_iuv.png", "t.unknownext"))
    err = capsys.readouterr().err
    assert rc == 2 and f"texture {folder / 't.unknownext'}: OpenCV has no writer for .unknownext" in err


def test_a_bad_part_mask_file_is_named(files, capsys):
    folder, _, _ = files
    rc = main(_args(folder, "person.png", "person_iuv.png", "t.png", "--part-masks", str(folder / "person.png")))
    assert rc == 2
    expected = f"part masks {folder / 'person.png'}: 150x100 (HxW); atlas_size=200 needs 1200x800"
    assert expected in capsys.readouterr().err
