"""The shared YAML reader: each broken file gives one line naming the file and the reason."""

from __future__ import annotations

import pytest

from shards.yamlfile import YamlFileError, check_keys, load_mapping


class ReaderError(ValueError):
    """Stands for a reader's own error class (ConfigError, ModelsError, ...)."""


def test_a_mapping_is_returned_and_an_empty_file_is_empty(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("solver:\n  max_steps: 3\nname: x\n")
    assert load_mapping(path) == {"solver": {"max_steps": 3}, "name": "x"}
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing but a comment\n")
    assert load_mapping(empty) == {}
    with pytest.raises(YamlFileError, match=r"^.*empty\.yaml: models file is empty$"):
        load_mapping(empty, what="models file", allow_empty=False)


def test_a_missing_file_names_it_with_the_hint(tmp_path):
    missing = tmp_path / "none.yaml"
    with pytest.raises(ReaderError) as caught:
        load_mapping(missing, label=f"--models {missing}", what="models file", hint=" (or use --models tiny)",
                     error=ReaderError)
    assert str(caught.value) == f"--models {missing}: models file does not exist (or use --models tiny)"
    with pytest.raises(YamlFileError, match=r"is a folder, not a config file$"):
        load_mapping(tmp_path, what="config file")


def test_a_syntax_error_is_one_line_with_line_and_column(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("a: 1\nsolver: [unclosed\n")
    with pytest.raises(YamlFileError) as caught:
        load_mapping(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: not valid YAML: line 3, column 1: ")
    tabs = tmp_path / "tabs.yaml"
    tabs.write_text("a:\n\tb: 1\n")
    with pytest.raises(YamlFileError, match=r"tabs\.yaml: not valid YAML: line 2, column 1: "):
        load_mapping(tabs)


def test_a_top_level_that_is_not_a_mapping_is_refused(tmp_path):
    for text, kind in (("- a\n- b\n", "list"), ("42\n", "int"), ("just words\n", "str")):
        path = tmp_path / "top.yaml"
        path.write_text(text)
        with pytest.raises(ReaderError, match=rf"top\.yaml: the top level must be a YAML mapping .*got {kind}$"):
            load_mapping(path, error=ReaderError)


def test_undecodable_bytes_and_unsafe_tags_are_refused(tmp_path):
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(YamlFileError, match=r"latin1\.yaml: cannot read config file: .*utf-8"):
        load_mapping(latin1, what="config file")
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("x: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(YamlFileError, match=r"unsafe\.yaml: not valid YAML: .*python/object/apply"):
        load_mapping(unsafe)


def test_unknown_keys_name_the_place_and_the_known_ones():
    check_keys({"a": 1, "b": 2}, {"a", "b", "c"}, where="f.yaml")
    with pytest.raises(ReaderError) as caught:
        check_keys({"a": 1, "zz": 2, "b": 3, 7: 4}, ("b", "a"), where="--models f.yaml", section="face",
                   error=ReaderError)
    assert str(caught.value) == "--models f.yaml: unknown key(s) [7, 'zz'] under face; known: ['a', 'b']"
    with pytest.raises(YamlFileError, match=r"^cfg\.solver: unknown key\(s\) \['learning_rat'\]; known: "):
        check_keys({"learning_rat": 1}, {"learning_rate"}, where="cfg.solver")


def test_a_key_given_twice_is_refused_but_a_merge_may_be_overridden(tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text("solver:\n  lr: 1.0e-5\n  max_steps: 3\n  lr: 1.0e-4\n")
    with pytest.raises(ReaderError) as caught:
        load_mapping(twice, error=ReaderError)
    assert str(caught.value) == (f"{twice}: not valid YAML: line 4, column 3: duplicate key 'lr' "
                                 f"(first at line 2)")
    merged = tmp_path / "merged.yaml"
    merged.write_text("base: &base\n  lr: 1\n  steps: 2\nrun:\n  <<: *base\n  lr: 3\n")
    assert load_mapping(merged)["run"] == {"lr": 3, "steps": 2}
