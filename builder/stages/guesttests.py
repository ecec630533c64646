"""The guest-tests stage: the project's own tests (``tests/guest/``), built for an image's arch
against what isobuild built, packed on a small drive the boot check runs them from.

One file is one test, named by its stem: ``NAME.c`` is compiled (``gcc -O2 -Wall -Werror``), ``NAME.sh``
is run by ``/bin/sh``; a test passes by exiting 0 (it may print TAP).  The C tests are compiled in a
build root of the image's own distribution and arch, which its plugin gives (``tests_root``): on Debian
the suite's buildd root (``mmdebstrap --variant=buildd``; another arch's compiler runs through
qemu-user-static) with the kernel's ``linux-libc-dev`` and our glibc's packages installed by dpkg; on
EL a dnf root of the release's gcc with the kernel's ``kernel-headers`` and our glibc RPMs winning over
the distribution's (builder.tools.dnf.BuildRoot).  The headers and libc a test sees are the built ones,
never the host's, so a header or ABI change in a series breaks the test's build, by name, before any
boot.

The artifact is ``tests.img`` -- a squashfs with ``manifest`` (one ``NAME KIND TIMEOUT`` line per test)
and the programs under ``tests/`` --, the same tree unpacked (``files/``) and ``metadata.json``.  The
ISO never carries it: the smoke stage attaches it as a second drive (``builder.tools.bootmedia``), so
an image is byte-identical with or without tests.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from builder.infra import atomic, keys, log, runner, state
from builder.infra.arch import ARCHES
from builder.infra.config import Project
from builder.infra.digests import sha256_file
from builder.infra.errors import InfraError, UserError
from builder.stages.base import PlannedStage, Stage, keyed_targets
from builder.stages.glibc import debs_for
from builder.stages.glibcrpm import rpms_for
from builder.stages.kpackage import KernelPackageStage
from builder.tools import buildroot
from builder.tools.chroot import Chroot
from builder.tools.rootdir import Root

STAGE_VERSION = 2  # 2: the build root is the plugin's (EL: dnf), its key in the inputs
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
KINDS = {".c": "c", ".sh": "sh"}
CFLAGS = ["-O2", "-Wall", "-Werror"]
SRC, OUT = "/build/guest-tests/src", "/build/guest-tests/out"
# our glibc's packages a test build needs (each installed only if the stage made it): Debian's, EL's
GLIBC_DEV = ("libc6", "libc6-dev", "libc-bin", "libc-dev-bin")
GLIBC_DEVEL = ("glibc", "glibc-common", "glibc-devel", "glibc-headers", "glibc-minimal-langpack")


@dataclass(frozen=True)
class GuestTest:
    name: str
    kind: str  # c | sh
    path: Path
    sha256: str


def discover(directory: Path, where: str) -> list[GuestTest]:
    """The tests in ``directory``, by name; other files (a README) are not tests.  A name used twice
    (``x.c`` and ``x.sh``), a bad name or a symlink is refused naming the file."""
    tests: dict[str, GuestTest] = {}
    for path in sorted(directory.iterdir()):
        kind = KINDS.get(path.suffix)
        if kind is None:
            continue
        if path.is_symlink() or not path.is_file():
            raise UserError(f"{where}/{path.name}: a guest test must be a regular file")
        if not NAME.fullmatch(path.stem):
            raise UserError(f"{where}/{path.name}: {path.stem!r} is not a test name (A-Z a-z 0-9 _ -, up to 64)")
        if path.stem in tests:
            raise UserError(f"{where}: two tests are named {path.stem!r} ({tests[path.stem].path.name}, {path.name})",
                            hint="one file per test: rename one")
        tests[path.stem] = GuestTest(path.stem, kind, path, sha256_file(path))
    return list(tests.values())


def choose(tests: list[GuestTest], wanted: list[str] | None) -> list[GuestTest]:
    """``--tests NAME,...``: those tests, in the given order; an unknown name is refused naming the known."""
    if wanted is None:
        return tests
    by_name = {t.name: t for t in tests}
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise UserError(f"--tests: no guest test named {', '.join(unknown)}",
                        hint=f"the tests: {', '.join(by_name) or 'none'}")
    return [by_name[n] for n in dict.fromkeys(wanted)]


class TestsRoot(Protocol):
    """Where the C tests compile: a root of the image's distribution with its compiler, made fresh for
    a build with the packages the build hands in (builder.tools.buildroot.CrossRoot,
    builder.tools.dnf.BuildRoot)."""

    @property
    def key(self) -> str: ...

    def check(self) -> None: ...

    def make(self, root: Path, packages: Sequence[Path], log_path: Path) -> Chroot: ...


class TestsDistro(Protocol):
    """What the stage takes of a distro plugin: the build root of its image's distribution."""

    name: str

    def tests_root(self) -> TestsRoot: ...


@dataclass
class Plan(state.KeyedPlan):
    project: Project
    tests: list[GuestTest]
    root: TestsRoot
    inputs: dict[str, Any]
    layout: state.KeyedLayout
    key: str


class GuestTestsStage(PlannedStage):
    """The guest tests of one distro's image and arch (builder.stages.base.Stage)."""

    kind = "guest-tests"
    work_entries = ("guest-tests",)

    def __init__(self, plugin: TestsDistro, libc_dev: KernelPackageStage, glibc: Stage | None):
        super().__init__(libc_dev.project, plugin.name, libc_dev.arch)
        self.plugin, self.libc_dev, self.glibc = plugin, libc_dev, glibc

    @property
    def where(self) -> str:
        return self.project.settings.smoke.guest_tests or "tests/guest"

    def make_plan(self) -> Plan:
        tests = discover(self.project.input_dir(self.where, "smoke.guest_tests"), self.where)
        root = self.plugin.tests_root()
        inputs = {"stage": "guest-tests", "stage_version": STAGE_VERSION, "arch": self.arch,
                  "tests": [{"name": t.name, "kind": t.kind, "sha256": t.sha256} for t in tests],
                  "libc_dev": self.libc_dev.key, "glibc": self.glibc.key if self.glibc else None,
                  "root": root.key, "cflags": CFLAGS, "timeout": self.project.settings.smoke.test_timeout}
        layout = state.KeyedLayout(self.project.work_dir / "guest-tests")
        return Plan(self.project, tests, root, inputs, layout, keys.compute(inputs))

    def check(self) -> None:
        """The tests on disk (names, kinds, no links) and what their build root needs: before any build."""
        if not self.plan.tests:
            raise UserError(f"{self.where}: no guest tests (NAME.c or NAME.sh)",
                            hint="add one, or set smoke.guest_tests: null in isobuild.yaml")
        if any(t.kind == "c" for t in self.plan.tests):
            self.plan.root.check()

    def upstream(self) -> dict[str, Stage]:
        return {"linux-libc-dev": self.libc_dev, **({"glibc": self.glibc} if self.glibc is not None else {})}

    def build(self, log_path: Path) -> dict[str, Any]:
        return build(self, log_path)

    def summary(self, meta: dict[str, Any]) -> tuple[int | None, str, str]:
        image = self.artifact / "tests.img"
        return (image.stat().st_size if image.exists() else None, str(meta.get("sha256", "")),
                f"{len(meta.get('tests', []))} guest tests")

    @classmethod
    def clean_targets(cls, work_dir: Path, keep: set[str]) -> list[Path]:
        return keyed_targets(work_dir / "guest-tests", keep)


def _packages(stage: GuestTestsStage) -> list[Path]:
    """The built packages the tests compile against: the kernel's uapi headers (linux-libc-dev or
    kernel-headers), our glibc's development set (Debian's or EL's names)."""
    packages = stage.libc_dev.files()
    if stage.glibc is not None:
        meta = stage.glibc.built()
        if meta is None:
            flag = "" if ARCHES[stage.arch].native() else f" --arch {stage.arch}"
            raise UserError(f"the glibc packages for {stage.instance} are missing or stale ({stage.glibc.artifact})",
                            hint=f"run: isobuild {stage.instance}{flag}")
        if stage.libc_dev.what == "rpm-headers":
            packages += rpms_for(meta, stage.glibc.artifact, set(GLIBC_DEVEL))
        else:
            packages += debs_for(meta, stage.glibc.artifact, set(GLIBC_DEV))
    return packages


def compile_tests(stage: GuestTestsStage, p: Plan, log_path: Path, out: Path) -> None:
    """Every C test compiled in the root; a test that does not compile fails the stage naming it and
    showing the compiler's first error lines, before anything boots."""
    tree = p.tree / "root"
    buildroot.remove(tree)
    try:
        inside = p.root.make(tree, _packages(stage), log_path)
        r = Root(tree)
        r.mkdir("/build/guest-tests/out")
        for test in p.tests:
            r.copy_in(test.path, f"{SRC}/{test.path.name}")
            if test.kind != "c":
                continue
            with log.stage("guest-tests.compile", test=test.name):
                result = inside.run(["gcc", *CFLAGS, "-o", f"{OUT}/{test.name}", f"{SRC}/{test.path.name}"],
                                    capture=True, check=False)
            if result.returncode != 0:
                errors = [line for line in result.output.splitlines() if "error" in line] or \
                    result.output.strip().splitlines()
                raise UserError(f"guest test {test.name} does not compile against the built headers and glibc "
                                f"({stage.arch}): {errors[0].strip() if errors else 'gcc failed'}",
                                hint=f"fix {test.path}; see {log_path}", details=errors[:20])
            r.copy_out(f"{OUT}/{test.name}", out / "tests" / test.name)
    finally:
        buildroot.remove(tree)


def pack(p: Plan, staged: Path, image: Path, log_path: Path | None) -> None:
    """The drive the guest mounts: a squashfs (every image's kernel reads it: it is how the live root
    is carried) of ``manifest`` and ``tests/<name>``, owned by root, at a fixed time: the same tests
    give the same bytes."""
    for test in p.tests:
        if test.kind == "sh":
            shutil.copyfile(test.path, staged / "tests" / test.name)
    for program in (staged / "tests").iterdir():
        program.chmod(0o755)
    limit = p.project.settings.smoke.test_timeout
    (staged / "manifest").write_text("".join(f"{t.name} {t.kind} {limit}\n" for t in p.tests))
    squash(staged, image, log_path)


def squash(tree: Path, image: Path, log_path: Path | None) -> None:
    runner.run(["mksquashfs", str(tree), str(image), "-noappend", "-comp", "gzip", "-all-root", "-no-progress"],
               log_path=log_path, env={"SOURCE_DATE_EPOCH": "0"})


def build(stage: GuestTestsStage, log_path: Path) -> dict[str, Any]:
    p: Plan = stage.plan
    if not p.tests:
        raise UserError(f"{stage.where}: no guest tests (NAME.c or NAME.sh)",
                        hint="add one, or set smoke.guest_tests: null")
    with atomic.new_dir(p.artifact) as out:
        staged = p.tree / "staged"
        shutil.rmtree(staged, ignore_errors=True)
        (staged / "tests").mkdir(parents=True)
        try:
            if any(t.kind == "c" for t in p.tests):
                compile_tests(stage, p, log_path, staged)
            pack(p, staged, out / "tests.img", log_path)
            shutil.copytree(staged, out / "files")  # what a run of chosen tests (--tests) packs again
        finally:
            shutil.rmtree(p.tree, ignore_errors=True)
        if not (out / "tests.img").is_file():
            raise InfraError("the guest tests' drive image was not made", hint=f"see {log_path}")
        meta = {"stage": "guest-tests", "key": p.key, "inputs": p.inputs, "arch": stage.arch,
                "tests": [{"name": t.name, "kind": t.kind, "sha256": t.sha256} for t in p.tests],
                "sha256": sha256_file(out / "tests.img"), "finished": state.now(), "log": str(log_path)}
        atomic.write_json(out / "metadata.json", meta)
    return meta


@dataclass(frozen=True)
class Drive:
    """The drive a smoke run attaches: the built image (or a copy listing only the chosen tests)."""

    image: Path
    names: tuple[str, ...]


def drive(stage: GuestTestsStage, wanted: list[str] | None, scratch: Path) -> Drive:
    """The built tests' drive for a smoke run; with ``wanted`` (``--tests``) a copy in ``scratch``
    whose manifest lists only those (mtools rewrites it; the programs stay as built)."""
    meta = stage.built()
    if meta is None:
        raise UserError(f"the guest tests of {stage.instance} ({stage.arch}) are missing or stale",
                        hint=f"run: isobuild {stage.instance}" + ("" if ARCHES[stage.arch].native()
                                                                  else f" --arch {stage.arch}"))
    image = stage.artifact / "tests.img"
    chosen = choose(stage.plan.tests, wanted)
    if wanted is None:
        return Drive(image, tuple(t.name for t in chosen))
    tree = scratch / "files"
    shutil.copytree(stage.artifact / "files", tree)
    lines = {line.split(" ", 1)[0]: line for line in (tree / "manifest").read_text().splitlines()}
    (tree / "manifest").write_text("".join(f"{lines[t.name]}\n" for t in chosen))
    squash(tree, scratch / "tests.img", None)
    return Drive(scratch / "tests.img", tuple(t.name for t in chosen))
