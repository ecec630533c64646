"""What a verb builds, in dependency order, each stage only when its key changed.

kernel + glibc (Debian's; an EL distro's glibc-rpm) -> rootfs (per distro) -> ISO -> smoke.
``preflight`` checks every input of every stage a verb will run before any of them builds; the
stages come wired from builder.distros.graph and each is run by builder.stages.base.ensure
(adopt, or lock-log-build).  ``run_stages`` runs a verb's steps with --keep-going semantics.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from builder.distros.graph import DistroStages, Graph, wants_glibc
from builder.infra import log
from builder.infra.config import Project
from builder.infra.errors import IsobuildError
from builder.stages import glibc, iso
from builder.stages.base import Ensured, ensure, locked, stage_log
from builder.stages.glibcrpm import GlibcRpmStage
from builder.stages.image import ImageStage
from builder.stages.kernel import KernelStage
from builder.stages.kpackage import KernelPackageStage, Kind

__all__ = ["Ensured", "Outcome", "Preflight", "Step", "ensure", "ensure_distro", "ensure_glibc", "ensure_glibc_rpm",
           "ensure_image", "ensure_kernel", "locked", "preflight", "preflight_image", "run_stages", "stage_log",
           "wants_glibc"]


@dataclass
class Preflight:
    """What a verb will build, checked: per distro its wired stages, or the error that stops it."""

    graph: Graph
    stages: dict[str, DistroStages]
    failed: dict[str, IsobuildError]


def preflight(project: Project, names: list[str], profile: str | None, keep_going: bool = False,
              arch: str | None = None) -> Preflight:
    """Check every input of every stage the verb will run, in seconds, before any build: each
    distro's settings beyond the schema (overlay contents, mirror and its signed Release,
    repositories, host tools, kickstart sections) and its stages' ``check()``; the kernel's source,
    series, profile and fragments; glibc's when a distro takes it.  The first error is raised --
    with ``keep_going`` only the kernel's and glibc's are; a distro's stops that distro alone."""
    graph = Graph(project, profile, arch)
    stages: dict[str, DistroStages] = {}
    failed: dict[str, IsobuildError] = {}
    with log.stage("preflight", distros=names, arch=graph.arch):
        for name in names:
            try:
                plugin = graph.load(name)
                plugin.check()
                wired = graph.distro(plugin)
                if wired.glibc is not None and wired.glibc.kind != "glibc":
                    wired.glibc.check()  # an EL distro's own glibc stage (the shared one is below)
                wired.iso.check()
                if wired.guest_tests is not None:
                    wired.guest_tests.check()
                stages[name] = wired
            except IsobuildError as exc:
                if not keep_going:
                    raise
                failed[name] = exc
        graph.kernel().check()
        for wired in stages.values():
            if wired.glibc is not None and wired.glibc.kind == "glibc":
                wired.glibc.check()
    return Preflight(graph, stages, failed)


def ensure_kernel(project: Project, profile: str | None, arch: str | None = None,
                  force: bool = False) -> Ensured[KernelStage]:
    return ensure(KernelStage(project, profile, arch), force)


def ensure_kernel_packages(kernel: KernelStage, kinds: list[Kind]) -> list[Ensured[KernelPackageStage]]:
    """The kernel's packages of these kinds (each made once per kernel key, from its artifact)."""
    return [ensure(KernelPackageStage(kernel, kind)) for kind in kinds]


def ensure_glibc(stage: glibc.GlibcStage, force: bool = False,
                 tests: list[str] | None = None) -> Ensured[glibc.GlibcStage]:
    """A Debian glibc stage; then ``tests`` + glibc.tests in the kept build tree (after a native
    build, or when asked for)."""
    project = stage.project
    done = ensure(stage, force)
    wanted = list(dict.fromkeys([*stage.plan.settings.tests, *(tests or [])]))
    if wanted and (tests or (done.built_now and stage.plan.cross is None)):
        with locked(project):
            glibc.run_tests(stage.plan, wanted, stage_log(project, "glibc-tests"))
        done.meta = stage.built() or done.meta
    return done


def ensure_glibc_rpm(stage: GlibcRpmStage, force: bool = False) -> Ensured[GlibcRpmStage]:
    """An EL distro's glibc-rpm stage: its source RPM downloaded when there is none yet or with
    ``force`` (then the repositories' newest), rebuilt when its key changed or with ``force``."""
    project = stage.project
    with locked(project):
        stage.fetch(force, stage_log(project, f"{stage.label}-download"))
    return ensure(stage, force=force)


def ensure_distro(stages: DistroStages, force_glibc: bool = False) -> Ensured[iso.IsoStage]:
    """Build what changed up to the distro's ISO; ``force_glibc``: an EL distro's glibc RPM is
    rebuilt from the repositories' newest source RPM.  Returns the ISO stage's result."""
    ensure(stages.kernel)
    ensure(stages.kernel_package)
    if isinstance(stages.glibc, GlibcRpmStage):
        ensure_glibc_rpm(stages.glibc, force_glibc)
    elif stages.glibc is not None:
        ensure(stages.glibc)
    if stages.guest_tests is not None:
        ensure(stages.guest_tests.libc_dev)  # the kernel's uapi headers the tests compile against
        ensure(stages.guest_tests)  # a test that does not compile stops here, before the image boots
    ensure(stages.rootfs)
    return ensure(stages.iso)


def preflight_image(project: Project, name: str, profile: str | None,
                    arch: str | None = None) -> tuple[DistroStages, ImageStage]:
    """Every input of a distro's disk image and the stages under it, checked before any build."""
    graph = Graph(project, profile, arch)
    with log.stage("preflight", image=name, arch=graph.arch):
        stages, image = graph.image(graph.load(name))
        stages.plugin.check()
        graph.kernel().check()
        if stages.glibc is not None:
            stages.glibc.check()
        image.check()
    return stages, image


def ensure_image(stages: DistroStages, image: ImageStage) -> Ensured[ImageStage]:
    """Build what changed up to a distro's build-VM disk image (its own root: the VM variant)."""
    ensure(stages.kernel)
    ensure(stages.kernel_package)
    if stages.glibc is not None:
        ensure(stages.glibc)
    ensure(stages.rootfs)
    return ensure(image)


def iso_stage(project: Project, distro: str, profile: str | None, arch: str | None = None) -> iso.IsoStage:
    """The distro's ISO stage for ``arch`` as the inputs on disk say (builds nothing)."""
    return distro_stages(project, distro, profile, arch).iso


def distro_stages(project: Project, distro: str, profile: str | None, arch: str | None = None) -> DistroStages:
    """The distro's stages for ``arch``, wired (builds nothing)."""
    graph = Graph(project, profile, arch)
    return graph.distro(graph.load(distro))


@dataclass
class Step:
    name: str
    needs: list[str]
    run: Any  # () -> str: a one-line summary


@dataclass
class Outcome:
    name: str
    status: str  # ok | failed | skipped
    detail: str
    seconds: float = 0.0
    exit_code: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_stages(steps: list[Step], keep_going: bool) -> list[Outcome]:
    """Run steps in order.  A failure stops the run (its error propagates) unless ``keep_going``:
    then steps that need a failed or skipped one are skipped and the others still run."""
    outcomes: dict[str, Outcome] = {}
    for step in steps:
        blocked = [n for n in step.needs if n in outcomes and outcomes[n].status != "ok"]
        if blocked:
            outcomes[step.name] = Outcome(step.name, "skipped", f"needs {', '.join(blocked)}")
            continue
        start = time.monotonic()
        try:
            detail = step.run()
        except IsobuildError as exc:
            if not keep_going:
                raise
            log.get().error("stage.failed", stage=step.name, message=exc.message)
            outcomes[step.name] = Outcome(step.name, "failed", exc.message, round(time.monotonic() - start, 1),
                                          int(exc.exit_code))
            continue
        outcomes[step.name] = Outcome(step.name, "ok", detail, round(time.monotonic() - start, 1))
    return list(outcomes.values())

