"""End to end: a 2-step tiny run, then sampling its checkpoint with 1 and 2 processes, reruns and edits."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from PIL import Image

from shards.reader import iter_samples
from tests.train.conftest import GEOMETRY, rewrite_shards
from train.sample import Donor, apply_edits, main as sample_main
from train.sampling import EVAL_SIZES, pair_noise

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--steps", "2", "--batch-size", "3"]


def _reset() -> None:
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def in_process(main, argv: list[str]) -> int:
    try:
        return main(argv)
    finally:
        _reset()


def _pngs(gen: Path) -> dict[str, bytes]:
    return {p.relative_to(gen).as_posix(): p.read_bytes() for p in sorted(gen.rglob("*.png"))}


def _launch(argv: list[str]) -> subprocess.CompletedProcess:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(port), "train/sample.py", *argv]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _pixels(gen: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(gen).as_posix(): np.asarray(Image.open(p)).astype(np.int16) for p in sorted(gen.rglob("*.png"))}


@pytest.mark.slow
def test_images_do_not_depend_on_processes_or_batching_and_reruns_skip(trained, tmp_path, capsys):
    shards, checkpoint = trained
    common = ["--shards", str(shards), "--weights", str(checkpoint), "--steps", "2"]
    one, two, batched = tmp_path / "one", tmp_path / "two", tmp_path / "batched"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the launched processes (OMP_NUM_THREADS=1): same kernels, same bits
    try:
        assert in_process(sample_main, [*common, "--batch-size", "1", "--output-dir", str(one)]) == 0
    finally:
        torch.set_num_threads(threads)
    keys = sorted(s["__key__"] for s in iter_samples(str(shards)))
    sizes = {f"{GEOMETRY.height}x{GEOMETRY.width}", *(f"{h}x{w}" for h, w in EVAL_SIZES)}
    assert set(_pngs(one)) == {f"{size}/{key}.png" for size in sizes for key in keys}
    for height, width in [(GEOMETRY.height, GEOMETRY.width), *EVAL_SIZES]:
        image = Image.open(one / f"{height}x{width}" / f"{keys[0]}.png")
        assert image.mode == "RGB" and image.size == (width, height)
    index = pq.read_table(one / "index.parquet").to_pylist()
    assert [row["key"] for row in index] == keys
    meta = {s["__key__"]: s["meta"] for s in iter_samples(str(shards))}
    for row in index:
        assert (row["source_id"], row["target_id"]) == (meta[row["key"]]["source_id"], meta[row["key"]]["target_id"])
        assert row["target_path"] == meta[row["key"]]["target_path"] and row["seed"] == 42
    settings = json.loads((one / "settings.json").read_text())
    assert settings["steps"] == 2 and settings["scheduler"] == "reference" and settings["resolution"] == [64, 64]

    launched = _launch([*common, "--batch-size", "1", "--output-dir", str(two)])
    assert launched.returncode == 0, launched.stderr[-3000:]
    ranks = [json.loads(line) for line in launched.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["rank"] for r in ranks) == [0, 1] and all(r["sampled"] > 0 for r in ranks)
    assert _pngs(two) == _pngs(one)  # same bytes whatever the process count and order
    assert pq.read_table(two / "index.parquet").equals(pq.read_table(one / "index.parquet"))
    # On the CPU the networks see one pair at a time: another batch size gives the same bytes.
    whole = tmp_path / "whole"
    torch.set_num_threads(1)
    try:
        assert in_process(sample_main, [*common, "--batch-size", "3", "--output-dir", str(batched)]) == 0
        assert in_process(sample_main, [*common, "--batch-size", "3", "--batch-invariant", "off",
                                        "--output-dir", str(whole)]) == 0
    finally:
        torch.set_num_threads(threads)
    assert _pngs(batched) == _pngs(one)
    # Whole batches (what a GPU runs by default) use other kernels: the same images up to float rounding.
    expected, found = _pixels(one), _pixels(whole)
    assert expected.keys() == found.keys()
    assert all(np.abs(expected[k] - found[k]).max() <= 1 for k in expected)
    assert json.loads((whole / "settings.json").read_text())["batch_invariant"] is False

    capsys.readouterr()
    assert in_process(sample_main, [*common, "--batch-size", "1", "--output-dir", str(one)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["sampled"] == 0 and summary["skipped"] == len(keys) and summary["pairs"] == len(keys)

    # A changed setting is refused (naming it), unless --overwrite.
    assert in_process(sample_main, [*common, "--output-dir", str(one), "--seed", "7"]) == 2
    assert "seed differ" in capsys.readouterr().err
    assert in_process(sample_main, [*common, "--output-dir", str(one), "--seed", "7", "--overwrite"]) == 0
    assert _pngs(one).keys() == _pngs(two).keys() and _pngs(one) != _pngs(two)


def test_pair_noise_depends_on_seed_and_key_only():
    first = pair_noise(42, ["a__b", "c__d"], (4, 2, 2))
    np.testing.assert_array_equal(first[1].numpy(), pair_noise(42, ["c__d"], (4, 2, 2))[0].numpy())
    assert not np.array_equal(first[0].numpy(), first[1].numpy())
    assert not np.array_equal(first[0].numpy(), pair_noise(43, ["a__b"], (4, 2, 2))[0].numpy())


def _generated(gen: Path) -> dict[str, bytes]:
    """The sampled PNGs of every size (not the edits' contact sheets)."""
    return {name: data for name, data in _pngs(gen).items() if not name.startswith("edits/")}


def _with_face(donor: dict):
    return lambda sample: dict(sample, face_emb=donor["face_emb"], meta=dict(sample["meta"], face_ok=donor["meta"]["face_ok"]))


def _with_appearance(donor: dict):
    return lambda sample: dict(sample, **{name: donor[name] for name in ("ref_latent", "src_clip", "tex_clip")})


def test_an_edit_is_plain_sampling_of_shards_that_carry_the_donors_features(trained, tmp_path):
    """--face-from K gives the bytes plain sampling gives where every pair's face features are K's;
    --appearance-from the same with the texture latent and CLIP tokens; each edit changes only its inputs."""
    shards, checkpoint = trained
    samples = {s["__key__"]: s for s in iter_samples(str(shards))}
    keys = sorted(samples)
    face_key = next(k for k in keys if samples[k]["meta"]["face_ok"])  # a donor with a face
    look_key = next(k for k in keys if k != face_key)
    face, look = samples[face_key], samples[look_key]
    # A face edit carries the donor's face and nothing else; an appearance edit the reverse.
    pair = samples[keys[-1]]
    face_only = apply_edits(pair, face=Donor(spec=face_key, key=face_key, sample=face), appearance=None)
    look_only = apply_edits(pair, face=None, appearance=Donor(spec=look_key, key=look_key, sample=look))
    for name in ("ref_latent", "src_clip", "tex_clip", "tgt_latent", "tgt_pose"):
        np.testing.assert_array_equal(face_only[name], pair[name], err_msg=name)
    np.testing.assert_array_equal(face_only["face_emb"], face["face_emb"])
    for name in ("face_emb", "tgt_latent", "tgt_pose"):
        np.testing.assert_array_equal(look_only[name], pair[name], err_msg=name)
    assert look_only["meta"]["face_ok"] == pair["meta"]["face_ok"]

    def sample(name: str, source: Path, *edits: str) -> dict[str, bytes]:
        assert in_process(sample_main, ["--shards", str(source), "--weights", str(checkpoint), *FAST,
                                        "--output-dir", str(tmp_path / name), *edits]) == 0
        return _generated(tmp_path / name)

    plain = sample("plain", shards)
    face_edit = sample("face", shards, "--face-from", face_key)
    look_edit = sample("look", shards, "--appearance-from", f"{shards}:{look_key}")
    assert face_edit == sample("face-copy", rewrite_shards(shards, tmp_path / "face-shards", _with_face(face)))
    assert look_edit == sample("look-copy", rewrite_shards(shards, tmp_path / "look-shards", _with_appearance(look)))
    own = f"{GEOMETRY.height}x{GEOMETRY.width}"
    for key in keys:  # each edit alone moves every pair but its own donor
        name = f"{own}/{key}.png"
        assert (face_edit[name] == plain[name]) == (key == face_key), key
        assert (look_edit[name] == plain[name]) == (key == look_key), key
    assert face_edit != look_edit


def test_both_edits_write_contact_sheets(trained, tmp_path):
    shards, checkpoint = trained
    keys = sorted(s["__key__"] for s in iter_samples(str(shards)))
    common = ["--shards", str(shards), "--weights", str(checkpoint), *FAST]
    edited = tmp_path / "edited"
    assert in_process(sample_main, [*common, "--output-dir", str(edited), "--face-from", keys[0],
                                    "--appearance-from", f"{shards}:{keys[1]}"]) == 0
    own = f"{GEOMETRY.height}x{GEOMETRY.width}"
    for key in keys:
        sheet = np.asarray(Image.open(edited / "edits" / f"{key}.png"))
        assert sheet.shape == (2 * GEOMETRY.height, 4 * GEOMETRY.width, 3)  # one row per edit
        result = np.asarray(Image.open(edited / own / f"{key}.png"))
        assert np.array_equal(sheet[:GEOMETRY.height, 3 * GEOMETRY.width:], result)
    settings = json.loads((edited / "settings.json").read_text())
    assert settings["edits"] == {"face_from": keys[0], "appearance_from": f"{shards}:{keys[1]}"}
    assert in_process(sample_main, [*common, "--output-dir", str(tmp_path / "x"), "--face-from", "no__such"]) == 2
