"""Stages in dependency order, each built only when its key changed.

kernel + glibc -> rootfs (per distro) -> ISO -> smoke.  Each ``ensure_*`` returns
the stage's plan and its (reused or fresh) result, taking the work-dir lock
only when something must be built.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from builder import distros, glibc, isostage, kernel, lock, log, rootfs
from builder.config import Project
from builder.distro import Plugin
from builder.errors import InfraError, IsobuildError


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
        with lock.held(project.work_dir):
            switched = kernel.adopt(p)
        log.get().info("kernel.up-to-date", profile=p.layout.profile, key=p.key[:12],
                       release=meta.get("kernel_release"), reused_earlier_build=switched)
        return p, meta, False
    with lock.held(project.work_dir):
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
    with lock.held(project.work_dir):
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


def wants_glibc(project: Project, plugin: Plugin) -> bool:
    """The patched glibc goes into this distro's root: enabled, and the plugin installs that format."""
    return project.settings.glibc.enabled and plugin.glibc_format == "deb"


def ensure_iso(project: Project, distro: str, profile: str | None) -> tuple[isostage.Plan, dict[str, Any]]:
    plugin = distros.load(project, distro)  # validate the distro file before any long work
    kp, _, _ = ensure_kernel(project, profile)
    gp = ensure_glibc(project)[0] if wants_glibc(project, plugin) else None
    rp = rootfs.plan(plugin, kp, gp)
    ip = isostage.plan(rp)
    if rootfs.built(rp) is None:
        with lock.held(project.work_dir):
            log_path = stage_log(project, f"rootfs-{distro}")
            with log.stage("rootfs", distro=distro, key=rp.key[:12], log=str(log_path)):
                rootfs.build(rp, log_path)
    else:
        log.get().info("rootfs.up-to-date", distro=distro, key=rp.key[:12])
    record = isostage.built(ip)
    if record is None:
        with lock.held(project.work_dir):
            log_path = stage_log(project, f"iso-{distro}")
            with log.stage("iso", distro=distro, key=ip.key[:12], log=str(log_path)):
                record = isostage.build(ip, log_path)
    else:
        log.get().info("iso.up-to-date", distro=distro, key=ip.key[:12], iso=str(ip.out))
    return ip, record


def iso_plan(project: Project, distro: str, profile: str | None,
             glibc_plan: glibc.Plan | None = None) -> isostage.Plan:
    """The plan of the distro's ISO as the inputs on disk say (builds nothing); pass
    ``glibc_plan`` when the caller has it already."""
    plugin = distros.load(project, distro)
    gp = (glibc_plan or glibc.plan(project)) if wants_glibc(project, plugin) else None
    return isostage.plan(rootfs.plan(plugin, kernel.plan(project, profile), gp))


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
