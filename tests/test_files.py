"""Atomic writes: failed swaps leave nothing behind, outputs get the user's usual file modes."""

import os
import stat
from unittest import mock

import pytest

from brainsynth.files import atomic_dir, atomic_file, write_text_atomic


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_outputs_get_the_usual_modes_not_mkstemp_private_ones(tmp_path, umask_022):
    write_text_atomic(tmp_path / "metrics.json", "{}")
    with atomic_dir(tmp_path / "models") as staging:
        (staging / "model.pt").write_bytes(b"x")
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "models").stat().st_mode) == 0o755


def test_a_failed_swap_keeps_the_old_folder_and_leaves_no_staging(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("keep me")
    real_replace = os.replace

    def failing(src, dst):
        if str(dst) == str(target) and not os.path.basename(src).startswith(".out.old"):  # moving staging in fails; moving back works
            raise OSError("simulated: cannot rename into place")
        return real_replace(src, dst)

    with mock.patch("brainsynth.files.os.replace", side_effect=failing), pytest.raises(OSError, match="simulated"):
        with atomic_dir(target) as staging:
            (staging / "new.txt").write_text("new")
    assert (target / "old.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging, no backup


def test_a_failed_write_leaves_the_last_good_file(tmp_path):
    path = tmp_path / "ck.bin"
    path.write_bytes(b"good")
    with pytest.raises(RuntimeError):
        with atomic_file(path) as handle:
            handle.write(b"half")
            raise RuntimeError("killed mid-write")
    assert path.read_bytes() == b"good" and sorted(p.name for p in tmp_path.iterdir()) == ["ck.bin"]


def test_atomic_dir_never_touches_a_folder_it_did_not_make(tmp_path):
    """replacing X used to delete a sibling '.X.old' (and a symlinked X's backup lingered)."""
    keep = tmp_path / ".out.old"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    for run in range(2):
        with atomic_dir(tmp_path / "out") as staging:
            (staging / "image.png").write_text(str(run))
    assert (keep / "notes.txt").read_text() == "mine" and (tmp_path / "out" / "image.png").read_text() == "1"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "data.txt").write_text("theirs")
    (tmp_path / "linked").symlink_to(elsewhere)
    with atomic_dir(tmp_path / "linked") as staging:
        (staging / "image.png").write_text("new")
    assert (elsewhere / "data.txt").read_text() == "theirs" and not (tmp_path / "linked").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.old", "elsewhere", "linked", "out"]
