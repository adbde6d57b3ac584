"""The read-amplification bench: JSON with per-shard-count figures that add up."""

from __future__ import annotations

import json

from train.bench_readers import main


def test_bench_reports_whole_and_shared_shard_reads(capsys):
    assert main(["--samples", "24", "--resolution", "64x64", "--clip-dim", "24", "--shards", "1,8",
                 "--processes", "2", "--workers", "2", "--batch-size", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    shared, plentiful = report["results"]
    assert report["readers"] == 4 and shared["shards"] == 1 and plentiful["shards"] == 8
    # One shard, 4 readers: every read is partial and the headers of earlier samples are read again.
    assert shared["partial_shard_reads"] == 4 and shared["whole_shard_reads"] == 0
    assert shared["read_amplification"] > 1.0
    # 8 shards of 3, runs of 6 samples: every shard streamed whole by one reader, each byte once.
    assert plentiful["whole_shard_reads"] == 8 and plentiful["partial_shard_reads"] == 0
    assert plentiful["bytes_read"] == plentiful["dataset_bytes"] and plentiful["read_amplification"] == 1.0
