import pytest

from preprocess.job.inputs import InputError, PairRow, list_inputs, normalize_relative, read_pairs, referenced_paths


def test_read_pairs(tmp_path):
    csv = tmp_path / "pairs.csv"
    csv.write_text("from,to,extra\na.jpg, b.jpg ,x\nc d/ü.jpg,a.jpg,\n", encoding="utf-8")
    table = read_pairs(str(csv))
    assert table.rows() == [PairRow(line=2, source="a.jpg", target="b.jpg"), PairRow(line=3, source="c d/ü.jpg", target="a.jpg")]
    assert table.texts == ["a.jpg", "b.jpg", "c d/ü.jpg"]  # each distinct text once, however many rows name it
    assert referenced_paths(table) == ["a.jpg", "b.jpg", "c d/ü.jpg"]


@pytest.mark.parametrize("text,message", [
    ("source,target\na,b\n", "header row naming columns 'from' and 'to'"),
    ("", "header row"),
])
def test_bad_pairs_files(tmp_path, text, message):
    csv = tmp_path / "pairs.csv"
    csv.write_text(text)
    with pytest.raises(InputError, match=message):
        read_pairs(str(csv))
    with pytest.raises(InputError, match="no such file"):
        read_pairs(str(tmp_path / "missing.csv"))


def test_normalize_relative():
    assert normalize_relative("a/./b.jpg") == "a/b.jpg"
    assert normalize_relative("a\\b.jpg") == "a/b.jpg"
    for bad in ("", "/etc/passwd", "../x.jpg", "a/../../x.jpg", "s3://b/x.jpg", "."):
        assert normalize_relative(bad) is None


def test_every_row_and_path_gets_a_fate():
    rows = [
        PairRow(line=2, source="a.jpg", target="b.jpg"),
        PairRow(line=3, source="a.jpg", target="gone.jpg"),
        PairRow(line=4, source="gone.jpg", target="b.jpg"),
        PairRow(line=5, source="a.jpg", target="b.jpg"),  # duplicate
        PairRow(line=6, source="../x.jpg", target="b.jpg"),
        PairRow(line=7, source="a b.jpg", target="a_b.jpg"),  # colliding ids, distinct content
        PairRow(line=8, source="b.jpg", target="locked.jpg"),
    ]
    hashes = {
        "a.jpg": ("1" * 64, 10), "b.jpg": ("2" * 64, 10), "gone.jpg": FileNotFoundError(2, "No such file"),
        "a b.jpg": ("3" * 64, 10), "a_b.jpg": ("4" * 64, 10), "locked.jpg": PermissionError(13, "Permission denied"),
    }
    listed = list_inputs(rows=rows, hashes=hashes)
    assert listed.images_in == 6 and listed.pairs_in == 7
    assert [i.image_id for i in listed.images] == ["a_b_jpg_33333333", "a_b_jpg_44444444", "a_jpg", "b_jpg"]
    assert [i.content_hash for i in listed.images] == ["3" * 64, "4" * 64, "1" * 64, "2" * 64]
    assert {(r.reason, r.path) for r in listed.image_rejects} == {("missing_file", "gone.jpg"), ("unreadable", "locked.jpg")}
    assert [p.key for p in listed.pairs] == ["a_jpg__b_jpg", "a_b_jpg_33333333__a_b_jpg_44444444"]
    assert [p.line for p in listed.pairs] == [2, 7]
    # in CSV order, each with the row's own reason and id
    assert [(r.reason, r.id) for r in listed.pair_rejects] == [
        ("missing_target", "a_jpg__gone.jpg@3"), ("missing_source", "gone.jpg__b_jpg@4"),
        ("duplicate_pair", "a_jpg__b_jpg@5"), ("bad_path", "line-6"), ("unreadable_target", "b_jpg__locked.jpg@8")]
    assert len(listed.pairs) + len(listed.pair_rejects) == listed.pairs_in
    for reject in listed.pair_rejects:
        assert reject.detail.startswith("line ")


def test_listing_sorts_paths_into_files_and_reasons_without_reading_any(tmp_path, monkeypatch):
    """The driver lists folders; only paths whose ids collide are read (hashed) before the workers."""
    from preprocess.job import inputs
    from shards import storage

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"12345")
    (tmp_path / "a" / "sub").mkdir()
    (tmp_path / "a_x.jpg").write_bytes(b"other")  # its id, a_x_jpg, collides with a/x.jpg's
    (tmp_path / "b.jpg").write_bytes(b"b")
    opened = []
    real = storage.sha256_of
    monkeypatch.setattr(storage, "sha256_of", lambda location: opened.append(location) or real(location))
    paths = ["a/x.jpg", "a/sub", "a/missing.jpg", "a_x.jpg", "b.jpg", "nowhere/c.jpg", "b.jpg/d.jpg"]
    catalog = inputs.list_images(str(tmp_path), sorted(paths))
    sizes = {catalog.paths[i]: int(catalog.sizes[i]) for i in catalog.readable()}
    assert sizes == {"a/x.jpg": 5, "a_x.jpg": 5, "b.jpg": 1}
    assert {catalog.paths[i]: type(e) for i, e in catalog.errors.items()} == {
        "a/sub": IsADirectoryError, "a/missing.jpg": FileNotFoundError, "nowhere/c.jpg": FileNotFoundError,
        "b.jpg/d.jpg": NotADirectoryError}
    assert opened == []
    hashed = inputs.plan_ids(str(tmp_path), catalog)
    assert sorted(opened) == sorted(str(tmp_path / p) for p in ("a/x.jpg", "a_x.jpg"))
    assert sorted(catalog.paths[i] for i in hashed) == ["a/x.jpg", "a_x.jpg"] and len(catalog.errors) == 4
    ids = {catalog.paths[i]: catalog.ids[i] for i in catalog.readable()}
    assert ids["b.jpg"] == "b_jpg" and ids["a/x.jpg"] != ids["a_x.jpg"]
    # the ids are the ones list_inputs gives once every hash is known
    hashes = {catalog.paths[i]: (catalog.digests[i].decode(), 5) for i in hashed}
    hashes["b.jpg"] = storage.sha256_of(str(tmp_path / "b.jpg"))
    listed = inputs.list_inputs(rows=[PairRow(line=2, source="a/x.jpg", target="b.jpg"),
                                      PairRow(line=3, source="a_x.jpg", target="b.jpg")], hashes=hashes)
    assert {i.source_path: i.image_id for i in listed.images} == ids


def test_a_plan_whose_catalog_lacks_a_named_path_is_refused_naming_it():
    """The pair plan finds paths by binary search: a path the catalog does not hold is an error, never the
    neighbour the search lands on; rows that name only paths outside --images need no catalog at all."""
    with pytest.raises(ValueError, match="lacks a path the pairs name: 'b.jpg'"):
        list_inputs(rows=[PairRow(line=2, source="a.jpg", target="b.jpg")], hashes={"a.jpg": ("1" * 64, 1)})
    listed = list_inputs(rows=[PairRow(line=2, source="../a.jpg", target="/b.jpg")], hashes={})
    assert [r.reason for r in listed.pair_rejects] == ["bad_path"] and len(listed.pairs) == 0
