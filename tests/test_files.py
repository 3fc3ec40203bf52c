"""The shared helpers for files the suite keeps: atomic writes and the user cache's place."""

from __future__ import annotations

from pathlib import Path

import pytest

from methods.dp_depth.method import importance_cache_dir
from suite.cache import IMPORTANCE, TENSORRT, cache_root
from suite.files import atomic_write
from suite.measure.backends.tensorrt import timing_cache_path


def test_atomic_write_creates_the_folder_and_replaces_a_file(tmp_path):
    path = tmp_path / "new" / "entry.json"

    atomic_write(path, "first")
    atomic_write(path, b"second")

    assert path.read_bytes() == b"second"
    assert [p.name for p in path.parent.iterdir()] == ["entry.json"]  # no temporary left


def test_an_exclusive_write_keeps_the_existing_file(tmp_path):
    path = tmp_path / "cell.json"
    atomic_write(path, "stored", exclusive=True)

    with pytest.raises(FileExistsError):
        atomic_write(path, "other", exclusive=True)

    assert path.read_text() == "stored"
    assert [p.name for p in tmp_path.iterdir()] == ["cell.json"]


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    (tmp_path / "taken").mkdir()  # a folder where the file should go: the final rename fails

    with pytest.raises(OSError):
        atomic_write(tmp_path / "taken", "data")

    assert [p.name for p in tmp_path.iterdir()] == ["taken"]


def test_the_cache_root_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "depthbench"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "depthbench"


def test_every_user_cache_lies_under_the_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    no_run_folder = type("Context", (), {"cache_dir": None})()

    assert timing_cache_path({"device": "x"}).parent == tmp_path / "depthbench" / TENSORRT
    assert importance_cache_dir(no_run_folder) == tmp_path / "depthbench" / IMPORTANCE
    assert importance_cache_dir(type("Context", (), {"cache_dir": Path("/run")})()) == Path(
        "/run", IMPORTANCE
    )
