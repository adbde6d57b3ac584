"""The feature index (issue 21): one Arrow table for the cache's small columns, a row per content hash; the
rules the former dict of rows had (first file by name wins, a row saying the file changed under the run
yields, cache ids from the last file by name) hold."""

import numpy as np
import pyarrow as pa

from preprocess.job.features import CHANGED, FEATURE_SCHEMA, SMALL_NAMES, scan_features, write_feature_file


def _file(directory, rows):
    """A feature file with ``rows``: (content_hash, image_id, status, source_bytes); its name."""
    n = len(rows)
    data = {name: pa.nulls(n, FEATURE_SCHEMA.field(name).type) for name in FEATURE_SCHEMA.names}
    data["content_hash"] = pa.array([r[0] for r in rows], pa.string())
    data["image_id"] = pa.array([r[1] for r in rows], pa.string())
    data["status"] = pa.array([r[2] for r in rows], pa.string())
    data["reject_stage"] = pa.array([""] * n, pa.string())
    data["detail"] = pa.array([f"{r[1]} in a file" for r in rows], pa.string())
    data["source_bytes"] = pa.array([r[3] for r in rows], pa.int64())
    return write_feature_file(str(directory), pa.table(data, schema=FEATURE_SCHEMA))


def test_one_row_per_content_first_file_by_name_and_changed_rows_yield(tmp_path):
    a = _file(tmp_path, [("h1", "x", "ok", 1), ("h2", "y", CHANGED, 2), ("h3", "z", "ok", 3), ("h5", "v", "ok", 5)])
    b = _file(tmp_path, [("h1", "x2", "ok", 10), ("h2", "y", "ok", 20), ("h4", "w", "no_person", 40),
                         ("h6", "v", "ok", 6)])  # v's content changed between the two runs
    first, second = sorted([a, b])
    index = scan_features(str(tmp_path), with_ids=True)
    assert list(index) == ["h1", "h2", "h3", "h4", "h5", "h6"] and len(index) == 6
    h1 = index["h1"]
    assert h1.file == str(tmp_path / first) and h1.values["image_id"] == ("x" if first == a else "x2")
    h2 = index["h2"]  # the changed row yields to the stable one, whichever file comes first
    assert h2.values["status"] == "ok" and h2.values["source_bytes"] == 20 and h2.file == str(tmp_path / b) and h2.row == 1
    assert not index["h4"].ok and index["h4"].values["detail"] == "w in a file"
    assert set(index.rows_at([0])[0].values) == set(SMALL_NAMES)
    assert index.get("h9") is None and "h9" not in index
    assert list(index.positions(["h4", "h9", "h1"])) == [3, -1, 0]
    assert list(index.column("source_bytes", [2, 0])) == [3, 10 if first == b else 1]
    # cache ids: rows that can be hits; per id the last file by name
    ids = dict(zip(index.cache_ids.column("image_id").to_pylist(), index.cache_ids.column("content_hash").to_pylist()))
    assert ids == {"x": "h1", "x2": "h1", "y": "h2", "z": "h3", "w": "h4", "v": "h6" if second == b else "h5"}


def test_a_run_s_rows_join_the_cache_where_it_has_none_or_only_a_changed_row(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    _file(tmp_path / "old", [("h1", "x", "ok", 1), ("h2", "y", CHANGED, 2)])
    _file(tmp_path / "new", [("h1", "x", "ok", 100), ("h2", "y", "ok", 200), ("h3", "z", "ok", 300)])
    merged = scan_features(str(tmp_path / "old")).merged(scan_features(str(tmp_path / "new")))
    assert list(merged) == ["h1", "h2", "h3"]
    assert [merged[h].values["source_bytes"] for h in merged] == [1, 200, 300]
    assert merged["h1"].file.startswith(str(tmp_path / "old")) and merged["h3"].file.startswith(str(tmp_path / "new"))
    assert np.array_equal(merged.positions(["h3", "h1"]), [2, 0])


def test_an_absent_folder_is_an_empty_index(tmp_path):
    index = scan_features(str(tmp_path / "none"), with_ids=True)
    assert len(index) == 0 and list(index.positions(["h"])) == [-1] and index.cache_ids.num_rows == 0
