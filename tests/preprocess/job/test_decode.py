import hashlib

import numpy as np
import pytest

from preprocess.job.decode import DecodeConfig, DecodeStage
from tests.preprocess.job.hostile import astronaut, write_hostile_folder


def run_decode(root, names, sizes, cached=None):
    """The stage on ``names`` with the listing's ``sizes`` (path -> bytes) and the cache's hashes (path -> sha256)."""
    cached = cached or {}
    batch = {
        "image_id": np.array([f"id{i}" for i in range(len(names))], dtype=object),
        "source_path": np.array(names, dtype=object),
        "listed_size": np.array([sizes.get(n, -1) for n in names], np.int64),
        "cached_hash": np.array([cached.get(n, "") for n in names], dtype=object),
        "status": np.array(["ok"] * len(names), dtype=object),
        "reject_stage": np.array([""] * len(names), dtype=object),
        "detail": np.array([""] * len(names), dtype=object),
    }
    return DecodeStage(config=DecodeConfig(images_root=str(root)))(batch)


def test_hostile_files_decode_or_are_rejected_with_their_reason(tmp_path):
    expected = write_hostile_folder(tmp_path)
    names = sorted(n for n in expected if n != "loop_a.jpg")
    sizes = {n: (tmp_path / n).stat().st_size for n in names}
    out = run_decode(tmp_path, names, sizes)
    for i, name in enumerate(names):
        reason = expected[name] or "ok"
        # the hash is of the bytes this read decoded: the one read of the file in the whole job
        assert out["content_hash"][i] == hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
        assert out["read_size"][i] == sizes[name]
        assert out["status"][i] == reason, (name, out["status"][i], out["detail"][i])
        if reason == "ok":
            image = out["image"][i]
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            assert out["reject_stage"][i] == ""
        else:
            assert out["reject_stage"][i] == "decode"
            assert name in out["detail"][i]  # the message names the file


def test_reject_details_are_the_same_text_every_time(tmp_path):
    """Details go into rejects.parquet, which must be byte-identical between runs: no object reprs."""
    expected = write_hostile_folder(tmp_path)
    names = sorted(n for n in expected if expected[n] not in ("", "unreadable"))
    sizes = {n: (tmp_path / n).stat().st_size for n in names}
    first = list(run_decode(tmp_path, names, sizes)["detail"])
    second = list(run_decode(tmp_path, names, sizes)["detail"])
    assert first == second
    for detail in first:
        assert detail and " at 0x" not in detail and "object" not in detail, detail
    assert any("not an image format PIL can identify" in detail for detail in first)


def test_conversions_are_right(tmp_path):
    write_hostile_folder(tmp_path)
    names = ["good.jpg", "rotated.jpg", "alpha.png", "sixteen bit.png", "cmyk.jpg"]
    out = run_decode(tmp_path, names, {})
    good, rotated, alpha, sixteen, cmyk = (out["image"][i].astype(int) for i in range(5))
    photo = astronaut().astype(int)
    assert rotated.shape == photo.shape  # EXIF orientation applied: upright again
    assert np.abs(rotated - photo).mean() < 6
    np.testing.assert_array_equal(alpha, photo)  # alpha dropped, colour kept
    np.testing.assert_array_equal(sixteen[..., 0], photo[..., 0])  # top 8 bits of the 16-bit values
    assert np.abs(cmyk - photo).mean() < 12
    assert np.abs(good - photo).mean() < 4


def test_a_file_that_changed_since_listing_is_refused(tmp_path):
    write_hostile_folder(tmp_path)
    out = run_decode(tmp_path, ["good.jpg"], {"good.jpg": 1})  # the listing said 1 byte
    assert out["status"][0] == "changed_during_run"
    assert "1 bytes listed" in out["detail"][0]


def test_a_file_whose_hash_is_in_the_cache_is_read_once_and_not_decoded(tmp_path):
    """A resumed run reads the file (its one read) and skips everything else where the cache has its bytes."""
    write_hostile_folder(tmp_path)
    digest = hashlib.sha256((tmp_path / "good.jpg").read_bytes()).hexdigest()
    out = run_decode(tmp_path, ["good.jpg", "rotated.jpg"], {}, cached={"good.jpg": digest, "rotated.jpg": "0" * 64})
    assert list(out["status"]) == ["cached", "ok"]
    assert out["image"][0].size == 0 and out["image"][1].size > 0
    assert out["content_hash"][0] == digest


def test_symlink_loop_is_unreadable(tmp_path):
    write_hostile_folder(tmp_path)
    out = run_decode(tmp_path, ["loop_a.jpg"], {})
    assert out["status"][0] == "unreadable" and out["reject_stage"][0] == "read"
    assert "loop_a.jpg" in out["detail"][0] and out["read_error"][0]


@pytest.mark.parametrize("limit", [1000, 10**9])
def test_pixel_limit(tmp_path, limit):
    write_hostile_folder(tmp_path)
    data = (tmp_path / "good.jpg").read_bytes()
    stage = DecodeStage(config=DecodeConfig(images_root=str(tmp_path), max_pixels=limit))
    out = stage({
        "image_id": np.array(["a"], dtype=object), "source_path": np.array(["good.jpg"], dtype=object),
        "listed_size": np.array([len(data)], np.int64), "cached_hash": np.array([""], dtype=object),
        "status": np.array(["ok"], dtype=object), "reject_stage": np.array([""], dtype=object),
        "detail": np.array([""], dtype=object),
    })
    assert out["status"][0] == ("too_large" if limit == 1000 else "ok")
