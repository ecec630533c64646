"""Stages in dependency order, each built only when its key changed.

kernel -> rootfs (per distro) -> ISO -> smoke.  Each ``ensure_*`` returns
the stage's plan and its (reused or fresh) result, taking the work-dir lock
only when something must be built.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from builder import distros, isostage, kernel, lock, log, rootfs
from builder.config import Project
from builder.errors import InfraError


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


def ensure_iso(project: Project, distro: str, profile: str | None) -> tuple[isostage.Plan, dict[str, Any]]:
    plugin = distros.load(project, distro)  # validate the distro file before any long work
    kp, _, _ = ensure_kernel(project, profile)
    rp = rootfs.plan(plugin, kp)
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


def iso_plan(project: Project, distro: str, profile: str | None) -> isostage.Plan:
    """The plan of the distro's ISO as the inputs on disk say (builds nothing)."""
    return isostage.plan(rootfs.plan(distros.load(project, distro), kernel.plan(project, profile)))
