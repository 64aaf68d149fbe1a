"""Atomic writes: a reader (or a crash) never sees a half-written file or folder."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _usual_mode(path: Path, folder: bool) -> None:
    """mkstemp/mkdtemp create 0600/0700 entries; give the result the mode any other new file or
    folder of the user would get (0666/0777 less the umask), so outputs stay readable to the group
    as usual."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


@contextmanager
def atomic_file(path: Path, mode: str = "wb"):
    """Yield a handle on a temporary file beside ``path``; on success it is flushed to disk and
    renamed into place, on failure removed, so a kill never leaves a half-written file where the
    last good one was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        _usual_mode(Path(tmp), folder=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_file(path, "w") as handle:
        handle.write(text)


def write_json_atomic(path: Path, payload: dict, sort_keys: bool = True) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=sort_keys) + "\n")


@contextmanager
def atomic_dir(target: Path):
    """Yield a fresh temporary folder beside ``target``; on success it replaces ``target`` whole,
    on failure it is removed and ``target`` is left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        _usual_mode(staging, folder=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # A fresh, unique name for the old folder: a fixed name (".X.old") would delete whatever a
    # user keeps there. mkdtemp reserves it; renaming a folder onto an empty one replaces it.
    backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    moved_aside = False
    try:
        if target.is_symlink():
            target.unlink()  # a link is replaced, never followed: its folder is not ours to remove
        elif target.exists():
            os.replace(target, backup)
            moved_aside = True
        os.replace(staging, target)
    except BaseException:
        # A failed swap leaves things as they were: the old folder back in place, no staging folder.
        if moved_aside and not target.exists():
            os.replace(backup, target)
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(backup, ignore_errors=True)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def digest(*paths: Path) -> str:
    """sha256 (16 hex digits) over the files at ``paths`` (folders: every file in them, by
    relative name); "" when none exists."""
    hasher = hashlib.sha256()
    found = False
    for path in map(Path, paths):
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
        for file in files:
            found = True
            hasher.update(file.relative_to(path.parent).as_posix().encode() + b"\0")
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    hasher.update(block)
    return hasher.hexdigest()[:16] if found else ""
