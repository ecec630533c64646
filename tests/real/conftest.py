"""Shared by the real tier: a copy of the repository's project files and one
work dir kept between runs, outside the clone ($ISOBUILD_TEST_WORK_DIR,
default ~/.cache/isobuild-tests), so a warm re-run rebuilds nothing."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from builder import cli
from tests.conftest import records

REPO = Path(__file__).resolve().parents[2]
WORK = Path(os.environ.get("ISOBUILD_TEST_WORK_DIR", Path.home() / ".cache" / "isobuild-tests"))


def copy_project(root: Path) -> Path:
    root.mkdir(parents=True)
    shutil.copy(REPO / "isobuild.yaml", root)
    for sub in ("profiles", "patches", "distros", "kickstart"):
        # no lock a build of the checkout wrote: each test project locks its roots on its first build
        shutil.copytree(REPO / sub, root / sub, ignore=shutil.ignore_patterns("*.lock"))
    return root


def current(root: Path, label: str) -> Path:
    """The project's last good artifact of a stage (label: kernel-ci-x86_64, glibc-x86_64,
    kernel-package-ci.deb-image-x86_64...), resolved."""
    return (records(root, WORK) / "current" / label).resolve()


def record(root: Path, label: str) -> dict[str, Any]:
    """The project's record of a stage or check (kernel-boot-ci-x86_64...)."""
    return json.loads((records(root, WORK) / f"{label}.json").read_text())  # type: ignore[no-any-return]


@contextlib.contextmanager
def inside(root: Path) -> Iterator[Path]:
    """The shared work dir and ``root`` as the current directory for a block (a module fixture's
    lifetime), both restored after it."""
    old, cwd = os.environ.get("ISOBUILD_WORK_DIR"), Path.cwd()
    os.environ["ISOBUILD_WORK_DIR"] = str(WORK)
    os.chdir(root)
    try:
        yield root
    finally:
        os.chdir(cwd)
        if old is None:
            os.environ.pop("ISOBUILD_WORK_DIR", None)
        else:
            os.environ["ISOBUILD_WORK_DIR"] = old


def run(root: Path, *args: str) -> int:
    return cli.main(["-c", str(root / "isobuild.yaml"), *args])


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = copy_project(tmp_path / "project")
    monkeypatch.setenv("ISOBUILD_WORK_DIR", str(WORK))
    monkeypatch.chdir(root)
    yield root
    os.chdir(REPO)
