"""``isobuild rebuild-check DISTRO``: is what this project built what its inputs make?

Every stage of the distro's ISO is built again from nothing -- a copy of the project's files in
another directory, a new empty work dir, no stage store, the same lock -- by isobuild itself in a
child process, and every file of every rebuilt artifact is compared by sha256 with the one this
project built (each stage's ``metadata.json`` aside: it records times and log paths).  The verdict
is "reproducible", or the first differing file with a diffoscope summary of how it differs.
A stage whose rebuilt key is not this project's (an input that depends on where the project is)
is a difference too.  The scratch directories go away afterwards unless asked to stay.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.distros.graph import DistroStages
from builder.infra import atomic, log, runner
from builder.infra.config import Project
from builder.infra.digests import sha256_file
from builder.infra.errors import UserError
from builder.stages.base import Stage
from builder.tools import stagestore

# what a copy of the project leaves out: outputs, caches, version control, virtualenvs
_SKIP_DIRS = {"iso", "logs", "__pycache__", "build"}
DIFFOSCOPE_LINES = 60


@dataclass
class Compared:
    label: str
    files: int = 0
    differing: list[str] = field(default_factory=list)  # relative paths
    missing: str | None = None  # why the rebuilt artifact is not there
    first: tuple[Path, Path] | None = None  # the first differing file: ours, the rebuild's


@dataclass
class Verdict:
    reproducible: bool
    seconds: float
    stages: list[Compared]
    first: tuple[str, Path, Path] | None  # (label/file, ours, rebuilt)
    summary: list[str]  # diffoscope's first lines
    scratch: Path | None  # kept when asked

    def as_dict(self) -> dict[str, Any]:
        return {"reproducible": self.reproducible, "seconds": round(self.seconds, 1),
                "stages": [{"stage": c.label, "files": c.files, "differing": c.differing, "missing": c.missing}
                           for c in self.stages],
                "first_difference": self.first[0] if self.first else None, "diffoscope": self.summary,
                "scratch": str(self.scratch) if self.scratch else None}


def chain(stages: DistroStages) -> list[Stage]:
    """The stages an ISO is made of, in build order."""
    out: list[Stage] = [stages.kernel, stages.kernel_package]
    if stages.glibc is not None:
        out.append(stages.glibc)
    out += [stages.rootfs, stages.iso]
    return out


def require_built(stages: DistroStages, distro: str) -> None:
    for stage in chain(stages):
        if stage.built() is None:
            raise UserError(f"rebuild-check {distro}: {stage.label} is not built for its current inputs",
                            hint=f"build it first: isobuild {distro} --no-smoke (then compare with rebuild-check)")


def copy_project(project: Project, dest: Path) -> Path:
    """The project's files (its inputs) in ``dest``: no outputs, work dir, logs, dot-directories."""
    root = project.root.resolve()
    skip = {project.work_dir.resolve(), project.logs_dir.resolve(), project.iso_dir.resolve()}

    def ignore(directory: str, names: list[str]) -> list[str]:
        here = Path(directory)
        return [n for n in names if n.startswith(".") or (n in _SKIP_DIRS and here == root)
                or (here / n).resolve() in skip]

    shutil.copytree(root, dest, symlinks=True, ignore=ignore)
    return dest / project.config_file.relative_to(root)


def files_of(artifact: Path) -> dict[str, Path]:
    """An artifact's files by relative path (an ISO stage's artifact is the ISO file itself)."""
    if artifact.is_file():
        return {artifact.name: artifact}
    return {p.relative_to(artifact).as_posix(): p for p in sorted(artifact.rglob("*"))
            if (p.is_file() or p.is_symlink()) and p.name != "metadata.json"}


def _same(a: Path, b: Path) -> bool:
    if a.is_symlink() or b.is_symlink():
        return a.is_symlink() and b.is_symlink() and os.readlink(a) == os.readlink(b)
    return a.stat().st_size == b.stat().st_size and sha256_file(a) == sha256_file(b)


def compare(ours: list[Stage], project: Project, copy_root: Path, work: Path) -> list[Compared]:
    """Every stage's artifact against its rebuilt twin: the same key's artifact under the new work dir
    (the ISO: in the copy's iso/)."""
    out = []
    for stage in ours:
        c = Compared(stage.label)
        mine = stage.artifact
        if stage.kind == "iso":
            twin = copy_root / mine.relative_to(project.root)
        else:
            twin = work / mine.relative_to(project.work_dir)
        if not twin.exists():
            c.missing = (f"the rebuild made no {stage.label} of key {stage.key[:12]}: its key differs in another "
                         "directory (an input depends on where the project or work dir is)")
            out.append(c)
            continue
        a, b = files_of(mine), files_of(twin)
        c.files = len(a)
        c.differing = sorted(n for n in set(a) | set(b) if n not in a or n not in b or not _same(a[n], b[n]))
        if c.differing:
            c.first = (a.get(c.differing[0], mine), b.get(c.differing[0], twin))
        out.append(c)
    return out


def diffoscope(a: Path, b: Path, log_path: Path) -> list[str]:
    """diffoscope's first lines on two differing files (its own words when it is not installed)."""
    if shutil.which("diffoscope") is None:
        return ["diffoscope is not installed (apt-get install diffoscope-minimal): no summary of the difference"]
    result = runner.run(["diffoscope", "--text", "-", "--no-progress", "--max-text-report-size", "200000",
                         str(a), str(b)], log_path=log_path, capture=True, check=False, timeout=900)
    lines = result.output.splitlines()
    return lines[:DIFFOSCOPE_LINES] + ([f"... ({len(lines) - DIFFOSCOPE_LINES} more lines in {log_path})"]
                                       if len(lines) > DIFFOSCOPE_LINES else [])


FROM = ("kernel", "rootfs")  # where a rebuild may start: every stage, or the root and ISO over our kernel and glibc


def run(project: Project, stages: DistroStages, distro: str, profile: str | None, arch: str, keep: bool,
        log_path: Path, start: str = "kernel") -> Verdict:
    """``start`` "rootfs": the kernel, its package and glibc are not rebuilt but handed to the rebuild
    through a stage store of its own (each file checked on the way) -- minutes instead of half an hour,
    for what the root and the ISO add."""
    require_built(stages, distro)
    ours = chain(stages)
    for stage in ours:
        stage.key  # noqa: B018 (keys computed now, from this project, before anything runs)
    top = atomic.temp_path(project.work_dir / "rebuild-check")
    shutil.rmtree(top, ignore_errors=True)
    top.mkdir(parents=True)
    started = time.monotonic()
    try:
        config = copy_project(project, top / "project")
        work = top / "work"
        env = {"ISOBUILD_WORK_DIR": str(work), "ISOBUILD_CACHE_STORE": "", "ISOBUILD_CACHE_PUSH": "0"}
        if start == "rootfs":
            handed = stagestore.Store(top / "store")
            for stage in ours:
                if stage.kind in ("kernel", "kernel-package", "glibc"):
                    handed.push(stage.kind, stage.key, stage.artifact)
            env["ISOBUILD_CACHE_STORE"] = str(handed.root)
            ours = [s for s in ours if s.kind not in ("kernel", "kernel-package", "glibc")]
        argv = [sys.executable, "-m", "builder", "-c", str(config), distro, "--no-smoke", "--arch", arch,
                *(["--profile", profile] if profile else [])]
        with log.stage("rebuild-check.build", distro=distro, arch=arch, scratch=str(top)):
            runner.run(argv, log_path=log_path, cwd=config.parent, env=env)
        with log.stage("rebuild-check.compare", distro=distro, arch=arch):
            compared = compare(ours, project, config.parent, work)
        first = next(((f"{c.label}/{c.differing[0]}", *c.first) for c in compared if c.first), None)
        summary: list[str] = []
        if first is not None and first[1].is_file() and first[2].is_file():
            with log.stage("rebuild-check.diffoscope", file=first[0]):
                summary = diffoscope(first[1], first[2], log_path)
        ok = all(c.missing is None and not c.differing for c in compared)
        return Verdict(ok, time.monotonic() - started, compared, first, summary, top if keep else None)
    finally:
        if not keep:
            shutil.rmtree(top, ignore_errors=True)


def render(v: Verdict) -> str:
    lines = []
    for c in v.stages:
        state = c.missing or (f"{len(c.differing)} of {c.files} files differ: {', '.join(c.differing[:5])}"
                              if c.differing else f"{c.files} file{'' if c.files == 1 else 's'} identical")
        lines.append(f"  {c.label:<40} {state}")
    if v.reproducible:
        lines.append(f"reproducible: every file of {len(v.stages)} stages rebuilt from nothing has the same sha256 "
                     f"({v.seconds:.0f} s)")
    else:
        where = v.first[0] if v.first else next(c.label for c in v.stages if c.missing)
        lines.append(f"not reproducible: first difference {where} ({v.seconds:.0f} s)")
        lines += [f"  {line}" for line in v.summary]
    if v.scratch:
        lines.append(f"the rebuild is kept in {v.scratch}")
    return "\n".join(lines)
