"""The shared stage store with the real kernel and glibc: what one work dir built, pushed into a store, is
pulled by a project in a new, empty work dir (another runner), which then builds nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.infra.digests import sha256_file
from builder.tools import stagestore
from tests.conftest import Events
from tests.real.conftest import copy_project, current, run

pytestmark = pytest.mark.real


def test_a_new_work_dir_pulls_the_kernel_and_glibc_and_builds_nothing(project: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert run(project, "kernel", "--profile", "ci") == 0, capsys.readouterr().err
    assert run(project, "glibc") == 0, capsys.readouterr().err
    store = tmp_path / "store"
    monkeypatch.setenv("ISOBUILD_CACHE_STORE", str(store))
    capsys.readouterr()
    assert run(project, "cache", "push") == 0
    assert "kernel-ci-x86_64" in capsys.readouterr().out
    kernel_key = current(project, "kernel-ci-x86_64").name
    glibc_key = current(project, "glibc-x86_64").name
    assert stagestore.Store(store).has("kernel", kernel_key) and stagestore.Store(store).has("glibc", glibc_key)

    other = copy_project(tmp_path / "runner2")
    work2 = tmp_path / "work2"
    monkeypatch.setenv("ISOBUILD_WORK_DIR", str(work2))
    monkeypatch.chdir(other)
    events = Events(other / "logs")
    assert run(other, "kernel", "--profile", "ci") == 0, capsys.readouterr().err
    assert run(other, "glibc") == 0, capsys.readouterr().err
    assert events.built() == set(), "nothing was built in the new work dir"
    pulls = {e["stage"] for e in events.new() if e["event"] == "cache.pull.finish"}
    assert pulls == {"kernel-ci-x86_64", "glibc-x86_64"}
    links = work2 / "projects"
    kernel = next(links.glob("*/current/kernel-ci-x86_64")).resolve()
    glibc = next(links.glob("*/current/glibc-x86_64")).resolve()
    assert (kernel.name, glibc.name) == (kernel_key, glibc_key), "the same keys from another directory"
    meta = json.loads((kernel / "metadata.json").read_text())
    for name, sha in meta["artifacts"].items():
        assert sha256_file(kernel / name) == sha
    assert {p.name for p in (glibc / "debs").glob("*.deb")} == \
        {p.name for p in (current(project, "glibc-x86_64") / "debs").glob("*.deb")}
