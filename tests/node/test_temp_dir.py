"""A node starts where the system has no usable temporary directory (adx-mon's pods: a read-only
root file system, no /tmp): its temporary files go under --storage-dir instead."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.serve_cli import use_usable_temp_dir
from node.storage import StorageLayout
from node.transfer.certs import server_context


@pytest.fixture
def no_system_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every place Python looks for a temporary directory is read-only (as root, a file in its
    place: root may write anywhere a directory lets it)."""
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    monkeypatch.setattr(tempfile, "_candidate_tempdir_list", lambda: [str(blocked / "tmp")])
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setenv("TMPDIR", "")  # recorded as it was, so that the TMPDIR the node sets is undone too
    monkeypatch.delenv("TMPDIR")
    yield tmp_path / "storage"
    tempfile.tempdir = None  # the fixture's monkeypatch restores the rest


def test_without_a_temporary_directory_the_door_could_not_start(no_system_temp: Path) -> None:
    with pytest.raises(FileNotFoundError, match="No usable temporary directory"):
        server_context(None, None, ["ingestor-0"])


def test_temporary_files_go_under_the_storage_dir(no_system_temp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = StorageLayout(no_system_temp)
    layout.root.mkdir()
    (layout.tmp).mkdir()
    (layout.tmp / "left-by-a-crash").write_text("x")
    assert use_usable_temp_dir(layout) == layout.tmp
    assert os.environ["TMPDIR"] == str(layout.tmp)  # the receiver processes inherit it
    assert list(layout.tmp.iterdir()) == []  # what an earlier run left is gone
    ctx, self_signed = server_context(None, None, ["ingestor-0"])
    assert self_signed and ctx.minimum_version.name == "TLSv1_2"
    assert list(layout.tmp.iterdir()) == []  # the key was written there, and removed once loaded
    assert layout.tmp.name in layout.own_entries  # not taken for something adx-mon left


def test_a_usable_system_temporary_directory_is_kept(tmp_path: Path) -> None:
    layout = StorageLayout(tmp_path)
    assert use_usable_temp_dir(layout) is None
    assert not layout.tmp.exists()
