"""A small filesystem to fill up: a tmpfs mounted for one test (root can here; elsewhere the test
is skipped, saying why), and a filler file that takes the space left."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def small_disk(where: Path, size: str = "48m") -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path, leave: int = 0) -> Path:
    """Take all the space of `disk` but `leave` bytes; the filler file, to delete when space is back."""
    filler = disk / "filler"
    chunk = b"\xa5" * (1 << 20)
    with open(filler, "wb") as fh:
        while True:
            stat = os.statvfs(disk)
            room = stat.f_bavail * stat.f_frsize - leave
            if room <= 0:
                break
            try:
                fh.write(chunk[: min(len(chunk), room)])
                fh.flush()
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    return filler
