"""The job on a real S3 API (moto's server on 127.0.0.1): inputs read from and shards written to s3://.

The S3 runs are separate processes (as a user runs them): they start their own Ray with the endpoint in
their environment, whatever this session's Ray was started with.
"""

from __future__ import annotations

import json
import random

import fsspec
import pytest

from preprocess.build_shards import main
from shards import storage
from shards.verify import verify_output
from tests.preprocess.job.conftest import shard_bytes
from tools.cli import main as cli

ARGS = ("--models", "tiny", "--no-progress", "--shard-size", "1.2MB", "--seed", "7", "--device", "cpu")
# What the S3 runs must equal byte for byte: the session's demo run on local folders (conftest.reference_run,
# the same settings as ARGS and test_job._job_command), not a run of this module's own.


@pytest.fixture(scope="module")
def s3_inputs(s3_server, demo_inputs):
    """The demo photos and pairs uploaded to a fresh bucket: (bucket, images URL, pairs URL)."""
    images, pairs = demo_inputs
    bucket = s3_server.new_bucket()
    fs = fsspec.filesystem("s3")
    fs.put(str(images), f"{bucket}/in/images", recursive=True)
    fs.put_file(str(pairs), f"{bucket}/in/pairs.csv")
    return bucket, f"s3://{bucket}/in/images", f"s3://{bucket}/in/pairs.csv"


def s3_command(images: str, pairs: str, out: str, *extra: str) -> list[str]:
    from tests.preprocess.job.test_job import _job_command

    return _job_command((images, pairs), out, *extra)


def s3_shards(out: str) -> dict[str, bytes]:
    return {name: storage.read_bytes(storage.join(out, name)) for name in storage.list_names(out) if name.endswith(".tar")}


def temporaries(s3_server, bucket: str) -> list[str]:
    return [key for key in s3_server.keys(bucket) if storage.is_temporary(key.rsplit("/", 1)[-1])]


def test_job_on_s3_equals_the_local_run_and_the_cli_reads_it(s3_server, s3_inputs, reference_run, tmp_path, capsys):
    from tests.preprocess.job.test_job import _run_detached

    bucket, images, pairs = s3_inputs
    out = f"s3://{bucket}/runs/clean"
    code, output = _run_detached(s3_command(images, pairs, out))
    assert code == 0, output
    assert s3_shards(out) == shard_bytes(reference_run)
    assert temporaries(s3_server, bucket) == [] and s3_server.open_uploads(bucket) == []
    manifest = json.loads(storage.read_bytes(storage.join(out, "manifest.json")))
    assert manifest["command"][1:5] == ["--images", images, "--pairs", pairs]
    assert verify_output(out, progress=False).ok
    capsys.readouterr()
    assert cli(["summary", out]) == 0 and "counts add up" in capsys.readouterr().out
    assert cli(["verify", out, "--quiet"]) == 0 and "OK" in capsys.readouterr().out
    sheet = tmp_path / "sheet.png"
    assert cli(["show", out, "--index", "0", "-o", str(sheet)]) == 0 and sheet.stat().st_size > 0


@pytest.mark.slow
def test_resume_after_sigkill_on_s3_gives_the_local_shards(s3_server, s3_inputs, reference_run):
    from tests.preprocess.job.test_job import _run_detached

    bucket, images, pairs = s3_inputs
    out = f"s3://{bucket}/runs/killed"
    delay = random.Random(13).uniform(8.0, 30.0)  # seeded: a failure names a delay that reproduces it
    first, output = _run_detached(s3_command(images, pairs, out), kill_after=delay)
    code, output = _run_detached(s3_command(images, pairs, out, "--resume"))
    assert code == 0, f"killed after {delay:.1f} s (exit {first}): {output}"
    assert s3_shards(out) == shard_bytes(reference_run), f"killed after {delay:.1f} s (exit {first})"
    assert temporaries(s3_server, bucket) == [], f"killed after {delay:.1f} s"
    assert verify_output(out, progress=False).ok


@pytest.mark.parametrize("case", ["missing_bucket", "unreachable", "no_credentials"])
def test_a_store_that_cannot_be_used_stops_the_job_before_any_work(case, s3_server, s3_inputs, tmp_path,
                                                                   monkeypatch, capsys):
    from tests.conftest import free_port

    bucket, images, pairs = s3_inputs
    out = f"s3://{bucket}/runs/never"
    if case == "missing_bucket":
        out = "s3://no-such-bucket-mcld/out"
        expected = "--out s3://no-such-bucket-mcld/out: bucket 'no-such-bucket-mcld' does not exist"
    elif case == "unreachable":
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
        expected = f"--images {images}: cannot use the store"
    else:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(name)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        expected = f"--images {images}: cannot use the store (endpoint {s3_server.endpoint}): no credentials found"
    code = main(["--images", images, "--pairs", pairs, "--out", out, *ARGS])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err == [f"build_shards.py: {err[0].removeprefix('build_shards.py: ')}"] and expected in err[0], err
    assert not any(key.startswith("runs/never") for key in s3_server.keys(bucket))
