"""The reference fixture sets' locator: an override that names nothing usable fails; only a clone without
../shared (and no override) may skip."""

from __future__ import annotations

import pytest

from tests.conftest import SharedFixtures


def _cases(folder):
    return sorted(p.name for p in folder.glob("case_*"))


def test_an_override_set_but_empty_or_without_a_case_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("MCLD_X_FIXTURES", "")
    assert SharedFixtures.find("MCLD_X_FIXTURES", "x", _cases).problem() == (
        "fail", "MCLD_X_FIXTURES is set but empty: name the fixture folder, or unset it")
    monkeypatch.setenv("MCLD_X_FIXTURES", str(tmp_path))
    kind, reason = SharedFixtures.find("MCLD_X_FIXTURES", "x", _cases).problem()
    assert kind == "fail" and f"{tmp_path} holds no case" in reason
    monkeypatch.setenv("MCLD_X_FIXTURES", str(tmp_path / "nowhere"))
    kind, reason = SharedFixtures.find("MCLD_X_FIXTURES", "x", _cases).problem()
    assert kind == "fail" and "is not a folder" in reason
    (tmp_path / "case_q").mkdir()
    monkeypatch.setenv("MCLD_X_FIXTURES", str(tmp_path))
    found = SharedFixtures.find("MCLD_X_FIXTURES", "x", _cases)
    assert found.problem() is None and found.require() == tmp_path and found.cases == ("case_q",)
    (tmp_path / "e").mkdir()
    with pytest.raises(pytest.fail.Exception, match="holds no case"):
        SharedFixtures(env="MCLD_X_FIXTURES", folder=tmp_path / "e", cases=(), override=str(tmp_path / "e")).require()


def test_without_an_override_only_a_missing_shared_folder_skips(tmp_path):
    absent = SharedFixtures(env="MCLD_X_FIXTURES", folder=tmp_path / "missing", cases=(), override=None)
    kind, reason = absent.problem()
    assert kind == "skip" and "MCLD_X_FIXTURES" in reason and str(tmp_path / "missing") in reason
    with pytest.raises(pytest.skip.Exception):
        absent.require()
    empty = SharedFixtures(env="MCLD_X_FIXTURES", folder=tmp_path, cases=(), override=None)
    assert empty.problem()[0] == "fail"
