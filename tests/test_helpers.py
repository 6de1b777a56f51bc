"""The test suite's own helpers (conftest.py): what they remove is only what they wrote."""

import pytest

from conftest import built_once


def test_built_once_builds_once_and_redoes_only_its_own_failed_build(tmp_path_factory):
    calls = []

    def broken(directory):
        (directory / "half").write_text("written before the failure")
        raise RuntimeError("build failed")

    def build(directory):
        calls.append(directory)
        (directory / "result").write_text("done")

    name = "helper_test"
    with pytest.raises(RuntimeError):
        built_once(tmp_path_factory, name, broken)
    directory = built_once(tmp_path_factory, name, build)
    assert sorted(p.name for p in directory.iterdir()) == [".done", "result"]  # "half" is gone
    assert built_once(tmp_path_factory, name, build) == directory and len(calls) == 1
    # Where it builds: its own directory below this test run's temporary root, nothing else.
    root = directory.parent
    assert directory.name == f"built_once-{name}"
    assert root in tmp_path_factory.getbasetemp().parents or root == tmp_path_factory.getbasetemp()
