"""One run per work directory: an exclusive flock on ``<work_dir>/lock``."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from builder.infra import paths
from builder.infra.errors import InfraError


@contextmanager
def held(work_dir: Path, claim: bool = True) -> Iterator[None]:
    """The lock; ``claim`` marks ``work_dir`` as isobuild's (builder.infra.paths)."""
    if claim:
        paths.claim_work_dir(work_dir, paths.KNOWN_ENTRIES)
    else:
        work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise InfraError(f"{work_dir} is in use by another isobuild run (pid {holder})",
                             hint="wait for it to finish, or point ISOBUILD_WORK_DIR elsewhere") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
