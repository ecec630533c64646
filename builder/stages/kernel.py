"""The kernel stage: source + quilt series + config -> bzImage, modules, uapi headers, metadata.

Data flows forward: ``plan()`` resolves every input and computes the stage
key without touching the build tree (this is all a no-op run does);
``build()`` prepares the patched tree, configures, compiles out of tree,
collects what its packages are made from (builder.stages.kpackage makes them when asked) and
publishes the artifact under ``<work>/kernel/artifacts/<key>/`` through a temp directory and a rename.

One build tree per profile is kept so a changed patch costs an incremental
make, not a cold build, and an unchanged config costs nothing (``config_key``).  The
tree carries a marker (``tree.json``) naming the source, the applied series and the
kept config; the marker is removed before the tree is touched and written back only
once the tree is in a known state, so a run killed mid-patch is never mistaken for a
good tree.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.infra import arch as arch_mod
from builder.infra import atomic, hosttools, keys, log, runner, state
from builder.infra.arch import Arch
from builder.infra.config import Project
from builder.infra.digests import sha256_file
from builder.infra.errors import UserError
from builder.infra.progress import Progress
from builder.stages.base import PlannedStage, keyed_targets
from builder.tools import kconfig, quilt, rootdir, sources
from builder.tools.toolchain import gcc_version

# what a kernel build runs (its packages: builder.stages.kpackage)
KERNEL_TOOLS = ["make", "gcc", "bash", "perl", "flex", "bison", "bc", "quilt", "tar", "xz", "rsync"]
# 2: the artifact also holds the binrpm-pkg RPMs (rpms/); 3: no packages (stages/kpackage.py makes them on
# demand from the artifact), the uapi headers instead (uapi/); 4: without modules_install's build/source
# links into the work dir's tree
STAGE_VERSION = 4
CONFIG_VERSION = 1  # of what config_key covers
_WARNING = re.compile(r"\bwarning:")
_ERROR = re.compile(r"\berror:")


@dataclass(frozen=True)
class Layout:
    """Where the kernel stage keeps things under the work dir: one build tree per profile and
    arch (two arches never share one), artifacts by key."""

    root: Path
    profile: str
    arch: str = "x86_64"

    @property
    def tree(self) -> Path:
        return self.root / "trees" / f"{self.profile}-{self.arch}"

    @property
    def src(self) -> Path:
        return self.tree / "src"

    @property
    def build(self) -> Path:
        return self.tree / "build"

    @property
    def patch_copy(self) -> Path:
        return self.tree / "patches"

    @property
    def marker(self) -> Path:
        return self.tree / "tree.json"

    def artifact(self, key: str) -> Path:
        return self.root / "artifacts" / key


@dataclass
class Plan:
    project: Project
    layout: Layout
    arch: Arch
    source: sources.Source
    series: list[quilt.Patch]
    profile: kconfig.Profile
    toolchain: str
    inputs: dict[str, Any]
    key: str

    @property
    def artifact(self) -> Path:
        return self.layout.artifact(self.key)


def toolchain_version(arch: Arch) -> str:
    """The compiler the build uses for ``arch`` (the cross compiler on another host)."""
    return gcc_version(arch.cross_compile())


def required_tools(arch: Arch) -> None:
    """What building for ``arch`` needs on this host, the cross compiler with its package."""
    hosttools.require(KERNEL_TOOLS, "the kernel stage")
    if arch.cross_compile():
        hosttools.require([f"{arch.cross_compile()}gcc"], f"building the {arch.name} kernel")


def plan(project: Project, profile_name: str | None = None, arch_name: str | None = None) -> Plan:
    """Resolve every input and the stage key; reads files, changes nothing."""
    ks = project.settings.kernel
    name = profile_name or ks.profile
    arch = arch_mod.get(arch_name or project.settings.arch, "--arch")
    required_tools(arch)
    root = project.work_dir / "kernel"
    digests = project.digests()
    source = sources.resolve(project, ks.source, digests)
    digests.save()
    series = quilt.read_series(project.input_dir(ks.patches, "kernel.patches"))
    profile = kconfig.load_profile(project.root, name, ks.fragments, arch.name)
    toolchain = toolchain_version(arch)
    inputs: dict[str, Any] = {
        "stage": "kernel",
        "stage_version": STAGE_VERSION,
        "source": source.identity,
        "patches": [p.identity() for p in series],
        "config": profile.identity(),
        "localversion": ks.localversion,
        "arch": arch.name,
        "toolchain": toolchain,
        "source_date_epoch": os.environ.get("SOURCE_DATE_EPOCH"),
    }
    return Plan(project, Layout(root, name, arch.name), arch, source, series, profile, toolchain, inputs,
                keys.compute(inputs))


class KernelStage(PlannedStage):
    """The kernel of one profile and arch (builder.stages.base.Stage)."""

    kind = "kernel"
    work_entries = ("kernel",)

    def __init__(self, project: Project, profile: str | None = None, arch: str | None = None):
        super().__init__(project, profile or project.settings.kernel.profile, arch or project.settings.arch)

    def make_plan(self) -> Plan:
        return plan(self.project, self.instance, self.arch)

    @property
    def legacy_record(self) -> str | None:
        return f"kernel/state/{self.instance}.json" if self.arch == "x86_64" else None

    def build(self, log_path: Path) -> dict[str, Any]:
        return build(self.plan, log_path, self.last().get("steps_last_build"))

    def summary(self, meta: dict[str, Any]) -> tuple[int | None, str, str]:
        image = self.artifact / Path(self.plan.arch.image).name
        return (image.stat().st_size if image.exists() else None, str(meta.get("artifacts", {}).get(image.name, "")),
                f"{meta.get('kernel_release')} in {self.artifact}")

    @classmethod
    def clean_targets(cls, work_dir: Path, keep: set[str]) -> list[Path]:
        root = work_dir / "kernel"
        return keyed_targets(root, keep) + list((root / "boot").glob("*"))


# --- the build ---------------------------------------------------------------------------


def reproducible_env(src: Path, build: Path, make_arch: str, localversion: str, epoch: int,
                     cross_compile: str = "") -> dict[str, str]:
    """Variables that pin the kernel release and make the build reproducible:
    the same inputs give the same image from any directory."""
    stamp = time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime(epoch))
    return {
        "ARCH": make_arch,
        **({"CROSS_COMPILE": cross_compile} if cross_compile else {}),
        "LOCALVERSION": localversion,
        "KBUILD_BUILD_TIMESTAMP": stamp,
        "KBUILD_BUILD_USER": "isobuild",
        "KBUILD_BUILD_HOST": "isobuild",
        "KBUILD_BUILD_VERSION": "1",
        "KCFLAGS": f"-ffile-prefix-map={src}/= -ffile-prefix-map={build}/=",
        "SOURCE_DATE_EPOCH": str(epoch),
    }


def make_env(p: Plan, epoch: int) -> dict[str, str]:
    return reproducible_env(p.layout.src, p.layout.build, p.arch.make_arch,
                            p.project.settings.kernel.localversion, epoch, p.arch.cross_compile())


def _make(p: Plan, *targets: str) -> list[str]:
    return ["make", f"O={p.layout.build}", *targets]


def prepare_tree(p: Plan, log_path: Path) -> list[str]:
    """Bring the profile's source tree to 'source + this series'; return quilt notes.

    The marker is removed before the tree is touched and written only when the
    tree is in a known state, so a run killed mid-way leaves no marker and the
    next run starts from a fresh extract (and a clean build dir).
    """
    lay = p.layout
    want = [x.identity() for x in p.series]
    touched_by = quilt.vet(p.series)  # before anything is applied or unapplied
    touched = sorted({f for files in touched_by.values() for f in files})
    marker = state.load(lay.marker)
    touched_before: list[str] = []
    kept_config = None  # what configure keeps of the config (see config_key): valid across series
    if marker is None or marker.get("source") != p.source.identity or not lay.src.exists():
        lay.marker.unlink(missing_ok=True)
        shutil.rmtree(lay.src, ignore_errors=True)
        # Objects in build/ may come from another source or a series we no longer
        # know; a fresh tree's files are older than them, so make would keep them.
        shutil.rmtree(lay.build, ignore_errors=True)
        with log.stage("kernel.extract", tarball=str(p.source.tarball)):
            sources.extract(p.source, lay.src, log_path)
    elif marker.get("series") == want:
        return []
    else:
        touched_before = list(marker.get("touched", []))
        kept_config = marker.get("config")
        lay.marker.unlink()
        quilt.pop_all(lay.src, lay.patch_copy, log_path)
        if (lay.src / ".pc").exists():
            raise UserError(f"{lay.src}: quilt could not unapply the previous series",
                            hint="run 'isobuild clean' to drop the tree and rebuild it")
    quilt.stage_copy(p.series, lay.patch_copy)
    try:
        notes = quilt.push(lay.src, lay.patch_copy, log_path)
    except UserError:
        # push rolled the tree back to pristine; remember what may be stale in build/
        state.save(lay.marker, {"source": p.source.identity, "series": [],
                                "touched": sorted(set(touched_before) | set(touched)), "config": kept_config})
        raise
    # quilt restores unpatched files with their old mtimes; make would then keep
    # objects built from the patched versions.  Touch every file either series
    # touched so make rebuilds exactly those.
    now = time.time()
    tree = rootdir.Root(lay.src)
    for rel in set(touched) | set(touched_before):
        try:  # resolved inside the tree; a symlink itself gets the time, never what it points at
            path = tree.resolve(rel)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if path.exists() or path.is_symlink():
            os.utime(path, (now, now), follow_symlinks=False)
    state.save(lay.marker, {"source": p.source.identity, "series": want, "touched": touched, "config": kept_config})
    return notes


def config_key(p: Plan) -> str:
    """What the kept ``.config`` and kernel release were made from: the profile (base and fragments),
    the source, the arch, the compiler, the localversion, and the patched contents of every file the
    series touches that shapes the config (Kconfig files, the top Makefile...).  Unchanged: the
    kept ``.config`` stands and merge_config + olddefconfig are not run again."""
    marker = state.load(p.layout.marker) or {}
    tree = rootdir.Root(p.layout.src)
    shaped = {}
    for rel in sorted(str(f) for f in marker.get("touched", []) if kconfig.shapes_config(str(f))):
        try:
            path = tree.resolve(rel)
        except (FileNotFoundError, NotADirectoryError):
            path = None
        shaped[rel] = sha256_file(path) if path is not None and path.is_file() else "absent"
    return keys.compute({"config": CONFIG_VERSION, "profile": p.profile.identity(), "source": p.source.identity,
                         "arch": p.arch.name, "toolchain": p.toolchain,
                         "localversion": p.project.settings.kernel.localversion, "shaped_by_series": shaped})


def configure(p: Plan, env: dict[str, str], log_path: Path) -> tuple[dict[str, str], str, bool]:
    """The build dir's ``.config`` for this plan and the kernel release; True when the kept one was
    reused.  Either way every requested option is checked against it (kconfig.check)."""
    lay = p.layout
    lay.build.mkdir(parents=True, exist_ok=True)
    config = lay.build / ".config"
    want = config_key(p)
    marker = state.load(lay.marker) or {}
    kept = marker.get("config") or {}
    if kept.get("key") == want and config.is_file() and kept.get("sha256") == sha256_file(config):
        log.get().info("kernel.config-kept", key=want[:12])
        return (kconfig.check(p.profile, config, lay.src, p.arch.kconfig_dir, p.arch.name), str(kept["release"]),
                True)
    if lay.marker.exists():  # whatever happens next, the kept config is no longer known good
        state.save(lay.marker, {k: v for k, v in marker.items() if k != "config"})
    if p.profile.base in kconfig.BASE_TARGETS:
        runner.run(_make(p, p.profile.base), cwd=lay.src, env=env, log_path=log_path)
    else:
        shutil.copyfile(p.profile.base, config)
    frags = [str(f.path) for f in p.profile.fragments]
    runner.run([str(lay.src / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(lay.build), str(config), *frags],
               cwd=lay.src, env=env, log_path=log_path)
    runner.run(_make(p, "olddefconfig"), cwd=lay.src, env=env, log_path=log_path)
    effective = kconfig.check(p.profile, config, lay.src, p.arch.kconfig_dir, p.arch.name)
    release = runner.output(_make(p, "-s", "kernelrelease"), cwd=lay.src, env=env).strip().splitlines()[-1]
    if lay.marker.exists():
        marker = state.load(lay.marker) or {}
        state.save(lay.marker, {**marker, "config": {"key": want, "sha256": sha256_file(config), "release": release}})
    return effective, release, False


def compile_kernel(p: Plan, env: dict[str, str], log_path: Path, modules: bool, expected: int | None) -> int:
    progress = Progress("kernel.compile", expected)
    targets = [Path(p.arch.image).name] + (["modules"] if modules else [])
    try:
        runner.run(_make(p, f"-j{p.project.jobs}", *targets), cwd=p.layout.src, env=env,
                   log_path=log_path, on_line=progress.line)
    except runner.CommandFailed as exc:
        raise UserError(
            "kernel compile failed" + (f": {exc.error_lines[0].strip()}" if exc.error_lines else ""),
            hint=exc.hint, details=exc.details) from None
    finally:
        progress.finish()
    return progress.done


def build(p: Plan, log_path: Path, steps_last_build: int | None = None) -> dict[str, Any]:
    """Build the plan's kernel and publish it; return its metadata."""
    lay = p.layout
    phases = log.Phases("kernel")
    started = state.now()
    with phases.phase("patch"):
        notes = prepare_tree(p, log_path)
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH") or (lay.src / "Makefile").stat().st_mtime)
    env = make_env(p, epoch)
    with phases.phase("config"):
        effective, release, config_kept = configure(p, env, log_path)
    modules = kconfig.read_config(lay.build / ".config").get("CONFIG_MODULES") == "y"
    log_offset = log_path.stat().st_size
    with phases.phase("compile"):
        steps = compile_kernel(p, env, log_path, modules, steps_last_build)
    warnings, errors = log.count_since(log_path, log_offset, _WARNING, _ERROR)
    collect_start = time.monotonic()
    with log.stage("kernel.collect"), atomic.new_dir(p.artifact) as out:
        metadata = collect(p, out, env, log_path, modules)
        metadata.update({
            "kernel_release": release,
            "config": {"requested": {k: v for k, (v, _) in p.profile.requested().items()},
                       "effective": effective},
            "quilt_notes": notes,
            "config_kept": config_kept,
            "diagnostics": {"warnings": warnings, "errors": errors},
            "steps": steps,
            "started": started,
            "finished": state.now(),
            "log": str(log_path),
        })
        metadata["durations"] = dict(phases.seconds, collect=round(time.monotonic() - collect_start, 3))
        atomic.write_json(out / "metadata.json", metadata)
    return metadata


def collect(p: Plan, out: Path, env: dict[str, str], log_path: Path, modules: bool) -> dict[str, Any]:
    """What every package of this kernel is made from (builder.stages.kpackage): the image, System.map,
    config, the installed modules (stripped) and the uapi headers."""
    lay = p.layout
    shutil.copyfile(lay.build / p.arch.image, out / Path(p.arch.image).name)
    shutil.copyfile(lay.build / "System.map", out / "System.map")
    shutil.copyfile(lay.build / ".config", out / "config")
    if modules:
        runner.run(_make(p, "INSTALL_MOD_STRIP=1", f"INSTALL_MOD_PATH={out / 'modules'}", "modules_install"),
                   cwd=lay.src, env=env, log_path=log_path)
        # modules_install links build/ and source/ to this work dir's kernel tree: not part of the
        # artifact (no package ships them), and they made it differ by work dir and dangle elsewhere
        for link in (out / "modules" / "lib" / "modules").glob("*/*"):
            if link.name in ("build", "source") and link.is_symlink():
                link.unlink()
    runner.run(_make(p, f"INSTALL_HDR_PATH={out / 'uapi'}", "headers_install"), cwd=lay.src, env=env,
               log_path=log_path)
    files = sorted(f for f in out.iterdir() if f.is_file())
    return {
        "stage": "kernel",
        "key": p.key,
        "profile": lay.profile,
        "inputs": p.inputs,
        "source": {"label": p.source.label, **p.source.identity},
        "patches": [{"name": x.name, "strip": x.strip, "sha256": x.sha256} for x in p.series],
        "toolchain": p.toolchain,
        "cross_compile": p.arch.cross_compile(),
        "arch": p.arch.name,
        "make_env": env,
        "artifacts": {str(f.relative_to(out)): sha256_file(f) for f in files},
        "reproducer": {
            "isobuild": f"isobuild kernel --profile {lay.profile} --arch {p.arch.name}",
            "make": runner.reproducer(_make(p, f"-j{p.project.jobs}", Path(p.arch.image).name, "modules"),
                                      lay.src, env),
        },
    }
