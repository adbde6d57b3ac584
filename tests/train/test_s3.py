"""The trainer streams its shards from an S3 API (moto's server on 127.0.0.1); checkpoints stay local."""

from __future__ import annotations

import json

import fsspec

from tests.train.conftest import train_in_process, write_config
from tests.train.test_run import QUIET


def test_trainer_streams_shards_from_s3_like_from_a_folder(s3_server, shards_dir, tmp_path):
    bucket = s3_server.new_bucket()
    fsspec.filesystem("s3").put(str(shards_dir), f"{bucket}/shards", recursive=True)
    config = write_config(tmp_path / "c.yaml", **QUIET, data={"num_workers": 2, "batch_size": 2, "shuffle_buffer": 4})
    common = ["--config", str(config), "--max-steps", "2"]
    assert train_in_process(["--shards", f"s3://{bucket}/shards", *common, "--output-dir", str(tmp_path / "s3")]) == 0
    assert train_in_process(["--shards", str(shards_dir), *common, "--output-dir", str(tmp_path / "local")]) == 0
    losses = [[json.loads(line)["loss"] for line in (tmp_path / name / "logs.jsonl").read_text().splitlines()]
              for name in ("s3", "local")]
    assert losses[0] == losses[1] and len(losses[0]) == 2  # the same batches, read from the store
    assert (tmp_path / "s3" / "checkpoint-2").is_dir()


def test_trainer_names_a_missing_bucket_in_one_line(s3_server, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", **QUIET)
    code = train_in_process(["--shards", "s3://no-such-bucket-mcld/shards", "--config", str(config), "--max-steps", "1",
                "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "s3://no-such-bucket-mcld/shards: bucket 'no-such-bucket-mcld' does not exist" in err[0], err
    assert not (tmp_path / "run").exists()
