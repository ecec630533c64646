"""rebuild-check's parts without a build: what a copy of the project holds, and the comparison."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml

from builder.commands import rebuild
from builder.infra.config import load_project
from builder.stages.base import Stage


@dataclass
class FakeStage:
    kind: str
    label: str
    key: str
    artifact: Path


def _project(tmp_path: Path) -> Any:
    root = tmp_path / "project"
    for d in ("distros", "patches/kernel", "iso/debian", "logs", ".git", ".venv/bin", "hooks"):
        (root / d).mkdir(parents=True)
    (root / "isobuild.yaml").write_text(yaml.safe_dump({"work_dir": ".work"}))
    (root / "distros" / "debian.lock").write_text("# lock\n")
    (root / "hooks" / "stamp.sh").write_text("#!/bin/sh\n")
    (root / "iso" / "debian" / "x.iso").write_bytes(b"iso")
    (root / "logs" / "x.log").write_text("log")
    (root / ".work").mkdir()
    return load_project(root / "isobuild.yaml")


def test_the_copy_holds_the_inputs_and_the_lock_not_outputs_work_or_dot_dirs(tmp_path: Path) -> None:
    project = _project(tmp_path)
    config = rebuild.copy_project(project, tmp_path / "copy")
    assert config == tmp_path / "copy" / "isobuild.yaml"
    names = {p.relative_to(tmp_path / "copy").as_posix() for p in (tmp_path / "copy").rglob("*")}
    assert {"isobuild.yaml", "distros/debian.lock", "hooks/stamp.sh", "patches/kernel"} <= names
    assert not {n for n in names if n.split("/")[0] in ("iso", "logs", ".git", ".venv", ".work")}


def test_compare_names_differing_missing_and_identical_artifacts(tmp_path: Path) -> None:
    project = _project(tmp_path)
    work2, copy = tmp_path / "work2", tmp_path / "copy"

    def artifact(base: Path, key: str, files: dict[str, bytes]) -> Path:
        d = base / "kernel" / "artifacts" / key
        d.mkdir(parents=True)
        for name, data in files.items():
            (d / name).write_bytes(data)
        return d

    same = artifact(project.work_dir, "a" * 64, {"bzImage": b"k", "metadata.json": b"{1}"})
    artifact(work2, "a" * 64, {"bzImage": b"k", "metadata.json": b"{2}"})  # metadata aside: identical
    differs = artifact(project.work_dir, "b" * 64, {"x.deb": b"1", "y.deb": b"2"})
    artifact(work2, "b" * 64, {"x.deb": b"1", "y.deb": b"3"})
    gone = artifact(project.work_dir, "c" * 64, {"f": b"1"})  # its key came out different elsewhere
    (copy / "iso" / "debian").mkdir(parents=True)
    (copy / "iso" / "debian" / "x.iso").write_bytes(b"iso")
    stages = [FakeStage("kernel", "kernel-ci-x86_64", "a" * 64, same),
              FakeStage("kernel-package", "kernel-package-ci", "b" * 64, differs),
              FakeStage("glibc", "glibc-x86_64", "c" * 64, gone),
              FakeStage("iso", "iso-debian-x86_64", "d" * 64, project.root / "iso" / "debian" / "x.iso")]
    got = {c.label: c for c in rebuild.compare(cast(list[Stage], stages), project, copy, work2)}
    assert (got["kernel-ci-x86_64"].files, got["kernel-ci-x86_64"].differing) == (1, [])
    assert got["kernel-package-ci"].differing == ["y.deb"]
    assert got["glibc-x86_64"].missing is not None and "its key differs in another directory" in \
        got["glibc-x86_64"].missing
    assert (got["iso-debian-x86_64"].files, got["iso-debian-x86_64"].differing) == (1, [])
    verdict = rebuild.Verdict(False, 12.0, list(got.values()), ("kernel-package-ci/y.deb", Path("a"), Path("b")),
                              ["--- a", "+++ b"], None)
    text = rebuild.render(verdict)
    assert "1 of 2 files differ: y.deb" in text and "not reproducible: first difference kernel-package-ci/y.deb" in text
