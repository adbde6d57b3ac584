import numpy as np
import pytest

from shards.schema import (
    FIELDS,
    Geometry,
    SchemaError,
    decode_sample,
    encode_sample,
    pair_key,
    split_key,
    validate_sample,
)
from tests.shards.conftest import make_samples


def test_every_field_round_trips_exactly(geometry):
    sample = make_samples(geometry, 1)[0]
    assert sample["meta"]["face_ok"] is True or sample["face_emb"].any() == sample["meta"]["face_ok"]
    decoded = decode_sample(encode_sample(sample, geometry=geometry), geometry=geometry)
    for spec in FIELDS:
        if spec.name not in sample:
            continue
        if spec.encoding in ("npy", "png"):
            assert decoded[spec.name].dtype == sample[spec.name].dtype, spec.name
            np.testing.assert_array_equal(decoded[spec.name], sample[spec.name], err_msg=spec.name)
        elif spec.encoding == "jpg":  # lossy: close, same shape
            assert decoded[spec.name].shape == sample[spec.name].shape
            assert np.abs(decoded[spec.name].astype(int) - sample[spec.name]).mean() < 4
        else:
            assert decoded[spec.name] == sample[spec.name]
    assert {"src", "tgt"} <= set(decoded)


def test_shapes_follow_geometry(geometry):
    sample = make_samples(geometry, 1)[0]
    assert sample["tgt_latent"].shape == (8, geometry.height // 8, geometry.width // 8)
    assert sample["tgt_pose"].shape == (geometry.height, geometry.width, 3)


def test_pose_png_is_written_in_the_reference_layout():
    """A PIL (RGB) decode of tgt_pose must give channels (V, U, I), as the MCLD reference's files do."""
    import io

    from PIL import Image

    geometry = Geometry(height=256, width=176, clip_dim=16)
    sample = make_samples(geometry, 1)[0]
    members = encode_sample(sample, geometry=geometry)
    rgb = np.asarray(Image.open(io.BytesIO(members["tgt_pose.png"])).convert("RGB"))
    np.testing.assert_array_equal(rgb, sample["tgt_pose"][..., ::-1])


@pytest.mark.parametrize("field", ["tgt_latent", "src_clip", "face_emb", "tgt_pose", "meta"])
def test_missing_required_field_is_named(field):
    geometry = Geometry(height=256, width=176, clip_dim=16)
    sample = make_samples(geometry, 1)[0]
    del sample[field]
    with pytest.raises(SchemaError, match=rf"src-0__tgt_0: missing required field\(s\) \['{field}'\]"):
        validate_sample(sample, geometry=geometry)


def test_unknown_and_misshaped_fields_are_named():
    geometry = Geometry(height=256, width=176, clip_dim=16)
    sample = make_samples(geometry, 1)[0]
    with pytest.raises(SchemaError, match=r"src-0__tgt_0: unknown field\(s\) \['extra'\]"):
        validate_sample({**sample, "extra": np.zeros(3)}, geometry=geometry)
    bad = {**sample, "tgt_latent": np.zeros((8, 32, 32), np.float16)}
    with pytest.raises(SchemaError, match=r"src-0__tgt_0: field tgt_latent has shape \(8, 32, 32\), schema says \(8, 32, 22\)"):
        validate_sample(bad, geometry=geometry)
    bad = {**sample, "src_clip": sample["src_clip"].astype(np.float32)}
    with pytest.raises(SchemaError, match="field src_clip has dtype float32, schema says float16"):
        validate_sample(bad, geometry=geometry)
    bad = {**sample, "src_clip": np.full(16, np.nan, np.float16)}
    with pytest.raises(SchemaError, match="src_clip holds non-finite values"):
        validate_sample(bad, geometry=geometry)


def test_face_flag_must_agree_with_embedding():
    geometry = Geometry(height=256, width=176, clip_dim=16)
    sample = make_samples(geometry, 2)[1]
    assert sample["meta"]["face_ok"]
    sample["face_emb"] = np.zeros(512, np.float32)
    with pytest.raises(SchemaError, match="face_emb is all zeros but meta.face_ok is True"):
        validate_sample(sample, geometry=geometry)


@pytest.mark.parametrize("key", ["a.b__c", "a/b__c", "a__b__c", "ab", "_a__b", "a__b.", "a___b", ""])
def test_bad_keys_are_refused(key):
    with pytest.raises(SchemaError, match="sample key"):
        split_key(key)


def test_pair_key_round_trip_and_id_rules():
    assert split_key(pair_key("WOMEN_Dresses_id-1", "x_2")) == ("WOMEN_Dresses_id-1", "x_2")
    for bad in ("a.b", "a__b", "_a", "a/b"):
        with pytest.raises(SchemaError):
            pair_key(bad, "ok")


def test_geometry_refuses_sizes_the_vae_cannot_take():
    with pytest.raises(SchemaError, match="not divisible by 8"):
        Geometry(height=500, width=512, clip_dim=768)


def test_header_only_check_refuses_what_a_full_decode_refuses():
    """check_encoded (the pair join's check) skips pixel decoding but not the shape, format or pair checks."""
    import cv2

    from shards.schema import check_encoded
    from shards.synthetic import synthetic_sample

    geometry = Geometry(height=64, width=64, clip_dim=24)
    members = encode_sample(synthetic_sample(np.random.default_rng(0), geometry=geometry, source_id="a",
                                             target_id="b", face_ok=True, previews=True), geometry=geometry)
    assert check_encoded(members, geometry=geometry) == "a__b"
    wrong_size = {**members, "tgt_pose.png": cv2.imencode(".png", np.zeros((32, 64, 3), np.uint8))[1].tobytes()}
    with pytest.raises(SchemaError, match="tgt_pose has shape"):
        check_encoded(wrong_size, geometry=geometry)
    with pytest.raises(SchemaError, match="field tgt_pose cannot be decoded"):
        check_encoded({**members, "tgt_pose.png": members["src.jpg"]}, geometry=geometry)  # a JPEG, not a PNG
    with pytest.raises(SchemaError, match="field src cannot be decoded"):
        check_encoded({**members, "src.jpg": b"not an image"}, geometry=geometry)


def test_header_only_check_reads_npy_members_as_np_load_does():
    """check_encoded parses each distinct npy header once and views the data: the same arrays as np.load
    (Fortran order included), and a truncated member is still refused."""
    import io

    from shards.schema import _npy_view

    for array in (np.arange(24, dtype=np.float16).reshape(2, 3, 4), np.asfortranarray(np.arange(12.0).reshape(3, 4)),
                  np.zeros(5, np.float32)):
        buffer = io.BytesIO()
        np.save(buffer, array)
        data = buffer.getvalue()
        for _ in range(2):  # the header parsed, then the cached header
            view = _npy_view(data)
            assert view.dtype == array.dtype and view.shape == array.shape and np.array_equal(view, array)
        with pytest.raises(ValueError, match="EOF"):
            _npy_view(data[:-1])
