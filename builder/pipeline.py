"""Stages in dependency order, each built only when its key changed.

kernel + glibc (Debian's; an EL distro's glibc-rpm) -> rootfs (per distro) -> ISO -> smoke.  Each ``ensure_*`` returns
the stage's plan and its (reused or fresh) result, taking the work-dir lock
only when something must be built.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder import distros
from builder.commands import clean
from builder.distros.base import Plugin
from builder.infra import lock, log
from builder.infra.config import Project
from builder.infra.errors import InfraError, IsobuildError
from builder.stages import glibc, glibcrpm, iso, kernel, rootfs
from builder.tools import quilt

if TYPE_CHECKING:
    from builder.distros.el import ELPlugin


@contextmanager
def locked(project: Project) -> Iterator[None]:
    """The work dir's lock, and then what killed runs left there swept away."""
    with lock.held(project.work_dir):
        clean.sweep(project.work_dir, project.iso_dir)
        yield


def stage_log(project: Project, name: str) -> Path:
    """A new, empty log file for one stage run (never shared with another run)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    project.logs_dir.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        path = project.logs_dir / (f"{name}-{stamp}.log" if n == 1 else f"{name}-{stamp}-{n}.log")
        try:
            path.open("x").close()
            return path
        except FileExistsError:
            continue
    raise InfraError(f"{project.logs_dir}: cannot create a log file for {name}")


def ensure_kernel(project: Project, profile: str | None,
                  force: bool = False) -> tuple[kernel.Plan, dict[str, Any], bool]:
    """(plan, metadata, built_now)."""
    p = kernel.plan(project, profile)
    meta = None if force else kernel.built(p)
    if meta is not None:
        with locked(project):
            switched = kernel.adopt(p)
        log.get().info("kernel.up-to-date", profile=p.layout.profile, key=p.key[:12],
                       release=meta.get("kernel_release"), reused_earlier_build=switched)
        return p, meta, False
    with locked(project):
        log_path = stage_log(project, f"kernel-{p.layout.profile}")
        with log.stage("kernel", profile=p.layout.profile, key=p.key[:12], log=str(log_path)):
            meta = kernel.build(p, log_path)
    return p, meta, True


def ensure_glibc(project: Project, force: bool = False,
                 tests: list[str] | None = None) -> tuple[glibc.Plan, dict[str, Any], bool]:
    """(plan, metadata, built_now); then run ``tests`` + glibc.tests in the kept build tree."""
    p = glibc.plan(project)
    meta = None if force else glibc.built(p)
    fresh = meta is None
    with locked(project):
        if meta is not None:
            switched = glibc.adopt(p)
            log.get().info("glibc.up-to-date", key=p.key[:12], version=meta.get("version"),
                           reused_earlier_build=switched)
        else:
            log_path = stage_log(project, "glibc")
            with log.stage("glibc", key=p.key[:12], version=p.version, log=str(log_path)):
                meta = glibc.build(p, log_path)
        wanted = list(dict.fromkeys([*p.settings.tests, *(tests or [])]))
        if wanted and (tests or fresh):
            glibc.run_tests(p, wanted, stage_log(project, "glibc-tests"))
            meta = glibc.built(p) or meta
    return p, meta, fresh


def el_plugin(plugin: Plugin) -> ELPlugin:
    """The plugin as the EL plugin it is (only EL plugins install rpm glibc packages)."""
    from builder.distros.el import ELPlugin

    if not isinstance(plugin, ELPlugin):
        raise TypeError(f"{plugin.name}: glibc_format rpm is the EL plugin's")
    return plugin


def ensure_elglibc(project: Project, plugin: Plugin,
                   force: bool = False) -> tuple[glibcrpm.Plan, dict[str, Any], bool]:
    """An EL distro's glibc-rpm stage: (plan, metadata, built_now).  The source RPM is downloaded
    when there is none yet or ``force`` (then the repositories' newest), and rebuilt when its key
    changed or ``force``."""
    plugin = el_plugin(plugin)
    with locked(project):
        if plugin.settings.glibc.srpm.type == "repo" and (force or glibcrpm.cached_srpm(plugin) is None):
            log_path = stage_log(project, f"glibc-rpm-{plugin.name}")
            with log.stage("glibc-rpm.download", distro=plugin.name, log=str(log_path)):
                glibcrpm.download_srpm(plugin, log_path)
        p = glibcrpm.plan(plugin)
        meta = None if force else glibcrpm.built(p)
        if meta is not None:
            switched = glibcrpm.adopt(p)
            log.get().info("glibc-rpm.up-to-date", distro=plugin.name, key=p.key[:12], version=meta.get("version"),
                           reused_earlier_build=switched)
            return p, meta, False
        log_path = stage_log(project, f"glibc-rpm-{plugin.name}")
        with log.stage("glibc-rpm", distro=plugin.name, key=p.key[:12], version=p.version, log=str(log_path)):
            meta = glibcrpm.build(p, log_path)
    return p, meta, True


@dataclass
class Preflight:
    """What a verb will build, checked: the plugins that passed, and per distro the error that stops it."""

    plugins: dict[str, Plugin]
    failed: dict[str, IsobuildError]


def preflight(project: Project, names: list[str], profile: str | None, keep_going: bool = False) -> Preflight:
    """Check every input of every stage the verb will run, in seconds, before any build: the kernel's
    source, series (vetted), profile and fragments; glibc's when a distro takes it; each distro's
    settings beyond the schema (overlay contents, mirror and its signed Release, repositories,
    host tools, kickstart sections).  The first error is raised -- with ``keep_going`` only the
    kernel's and glibc's are; a distro's stops that distro alone (``failed``)."""
    with log.stage("preflight", distros=names):
        plugins: dict[str, Plugin] = {}
        failed: dict[str, IsobuildError] = {}
        for name in names:
            try:
                plugin = distros.load(project, name)
                plugin.check()
                iso.check_layout(plugin)
                plugins[name] = plugin
            except IsobuildError as exc:
                if not keep_going:
                    raise
                failed[name] = exc
        kp = kernel.plan(project, profile)
        quilt.vet(kp.series)
        if any(wants_glibc(project, p) and p.glibc_format == "deb" for p in plugins.values()):
            gp = glibc.plan(project)
            quilt.vet(gp.packaging + gp.series)
    return Preflight(plugins, failed)


def wants_glibc(project: Project, plugin: Plugin) -> bool:
    """The patched glibc goes into this distro's root: enabled (isobuild.yaml and the distro file),
    and the plugin installs a format a glibc stage makes (deb: the glibc stage; rpm: glibc-rpm)."""
    return project.settings.glibc.enabled and plugin.takes_glibc()


def ensure_iso(project: Project, distro: str, profile: str | None, force_glibc: bool = False,
               plugin: Plugin | None = None) -> tuple[iso.Plan, dict[str, Any]]:
    """Build what changed up to the distro's ISO; ``force_glibc``: an EL distro's glibc RPM is
    rebuilt from the repositories' newest source RPM.  ``plugin``: the one preflight checked."""
    if plugin is None:
        plugin = distros.load(project, distro)
        plugin.check()
    kp, _, _ = ensure_kernel(project, profile)
    gp: rootfs.GlibcArtifact | None = None
    if wants_glibc(project, plugin):
        gp = ensure_glibc(project)[0] if plugin.glibc_format == "deb" \
            else ensure_elglibc(project, plugin, force_glibc)[0]
    rp = rootfs.plan(plugin, kp, gp)
    ip = iso.plan(rp)
    if rootfs.built(rp) is None:
        with locked(project):
            log_path = stage_log(project, f"rootfs-{distro}")
            with log.stage("rootfs", distro=distro, key=rp.key[:12], log=str(log_path)):
                rootfs.build(rp, log_path)
    else:
        log.get().info("rootfs.up-to-date", distro=distro, key=rp.key[:12])
    record = iso.built(ip)
    if record is None:
        with locked(project):
            log_path = stage_log(project, f"iso-{distro}")
            with log.stage("iso", distro=distro, key=ip.key[:12], log=str(log_path)):
                record = iso.build(ip, log_path)
    else:
        log.get().info("iso.up-to-date", distro=distro, key=ip.key[:12], iso=str(ip.out))
    return ip, record


def iso_plan(project: Project, distro: str, profile: str | None,
             glibc_plan: glibc.Plan | None = None) -> iso.Plan:
    """The plan of the distro's ISO as the inputs on disk say (builds nothing); pass
    ``glibc_plan`` when the caller has it already."""
    plugin = distros.load(project, distro)
    gp: rootfs.GlibcArtifact | None = None
    if wants_glibc(project, plugin):
        gp = (glibc_plan or glibc.plan(project)) if plugin.glibc_format == "deb" else glibcrpm.plan(el_plugin(plugin))
    return iso.plan(rootfs.plan(plugin, kernel.plan(project, profile), gp))


@dataclass
class Stage:
    name: str
    needs: list[str]
    run: Callable[[], str]  # returns a one-line summary


@dataclass
class Outcome:
    name: str
    status: str  # ok | failed | skipped
    detail: str
    seconds: float = 0.0
    exit_code: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_stages(stages: list[Stage], keep_going: bool) -> list[Outcome]:
    """Run stages in order.  A failure stops the run (its error propagates) unless
    ``keep_going``: then stages that need a failed or skipped one are skipped and
    the others still run."""
    outcomes: dict[str, Outcome] = {}
    for stage in stages:
        blocked = [n for n in stage.needs if n in outcomes and outcomes[n].status != "ok"]
        if blocked:
            outcomes[stage.name] = Outcome(stage.name, "skipped", f"needs {', '.join(blocked)}")
            continue
        start = time.monotonic()
        try:
            detail = stage.run()
        except IsobuildError as exc:
            if not keep_going:
                raise
            log.get().error("stage.failed", stage=stage.name, message=exc.message)
            outcomes[stage.name] = Outcome(stage.name, "failed", exc.message, round(time.monotonic() - start, 1),
                                           int(exc.exit_code))
            continue
        outcomes[stage.name] = Outcome(stage.name, "ok", detail, round(time.monotonic() - start, 1))
    return list(outcomes.values())
