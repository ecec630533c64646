"""``isobuild pkg``: native builds of Debian source packages, one fresh VM per package.

``plan`` resolves every package before anything long starts: a name from the suite's signed
Sources index (builder.tools.aptrepo: InRelease signature -> Sources sha256 -> each file's
sha256), a local ``.dsc`` (its files checked against it) or an unpacked tree; our quilt series
for it (``pkg.patches/<source>/series``) vetted; the key (the source's files, our patches, the
build image's key, the arch) computed.  A package whose key was built already is skipped.

``run`` builds the rest, ``pkg.parallel`` at once (default: from the host's CPUs and memory).
Each build: the source unpacked on the host (``dpkg-source -x``) and our series pushed at fuzz 0
(the version gets ``pkg.suffix``); a VM from the arch's image (``isobuild image``) as an overlay
that is deleted afterwards; inside it ``apt-get build-dep`` from the suite's mirror through the
loopback apt proxy (builder.tools.aptproxy; the guest's network is otherwise restricted), then
``dpkg-buildpackage -b``; the ``.deb``s, ``.buildinfo``, ``.changes`` and the build log copied
out to ``<work>/pkgs/<arch>/<source>/<version>/`` through a temp name.  ``--distcc``: the
guest's compiles go to a distccd of the guest's suite on the host's loopback
(builder.tools.distcc).  One failure never stops the other builds; Ctrl-C stops every VM.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from builder.infra import atomic, digests, keys, log, paths, runner, state
from builder.infra.arch import ARCHES, Arch
from builder.infra.config import Project, size_bytes
from builder.infra.errors import CheckFailed, InfraError, IsobuildError, UserError
from builder.stages import glibc
from builder.stages.image import key_dir
from builder.tools import aptproxy, aptrepo, bootmedia, distcc, pkglist, qemu, quilt, relay, ssh
from builder.tools import sweep as sweeper
from builder.tools import vm as vmt
from builder.tools.pkglist import Entry

STAGE_VERSION = 1
RECORD = pkglist.RECORD
LAST = "last.json"
GUEST_BUILD = "/build"
VM_OVERHEAD_MIB = 512  # QEMU itself and its translation cache, beside the guest's memory
HOST_RESERVE_MIB = 2048


class Suite(Protocol):
    """What a build takes of the distro plugin (DebianPlugin satisfies it)."""

    suite: str
    release: aptrepo.Release

    def mirror(self) -> str: ...

    def keyring(self) -> Path: ...


@dataclass(frozen=True)
class Source:
    name: str
    version: str  # the distribution's
    origin: str  # "bookworm/main", or the local path
    identity: dict[str, Any]  # what the key takes of it
    archive: aptrepo.SourcePackage | None = None
    dsc: Path | None = None
    tree: Path | None = None


@dataclass
class Job:
    entry: Entry
    arch: str
    source: Source
    patches: list[quilt.Patch]
    version: str  # ours: the distribution's, plus pkg.suffix when our patches change it
    key: str
    out: Path  # <work>/pkgs/<arch>/<source>/<version>
    scratch: Path | None = None  # the unpacked, patched tree and its tarball (``prepare_all``)

    @property
    def label(self) -> str:
        return f"{self.source.name}/{self.arch}"


@dataclass
class Outcome:
    name: str
    arch: str
    version: str
    status: str  # built | skipped | failed | interrupted
    seconds: float = 0.0
    out: str = ""
    log: str = ""
    error: str = ""
    details: list[str] = field(default_factory=list)
    debs: list[str] = field(default_factory=list)
    distcc: dict[str, int] | None = None
    key: str = ""


@dataclass
class Plan:
    project: Project
    arch: Arch
    suite: Suite
    components: list[str]
    root_key: str  # the build VMs' root (the distro's VM variant: builder.stages.image)
    jobs: list[Job]
    skipped: list[Job]


def pkgs_dir(project: Project) -> Path:
    return project.work_dir / "pkgs"


def sweep(work_dir: Path) -> list[Path]:
    """What killed package builds left under <work>/pkgs (scratch trees of dead pids: no live run
    owns them, so no lock is needed)."""
    gone = atomic.stale_temps(work_dir / "pkgs", depth=3)
    for path in gone:
        sweeper.remove(path)
    return gone


def list_path(project: Project) -> Path:
    return project.path(project.settings.pkg.list)


# --- planning: every input checked before any VM starts -------------------------------------------------


def entries(project: Project, names: list[str]) -> list[Entry]:
    """``names`` from the command line, or the package list."""
    if names:
        out = [pkglist.parse_entry(n, "pkg build") for n in names]
        dup = {e.name for e in out if sum(x.name == e.name for x in out) > 1}
        if dup:
            raise UserError(f"pkg build: {', '.join(sorted(dup))} given twice")
        return out
    listed = pkglist.read(list_path(project))
    if not listed:
        raise UserError(f"pkg build: no packages named and {list_path(project)} lists none",
                        hint="name them (isobuild pkg build hello) or add them (isobuild pkg add hello)")
    return listed


def _dsc_fields(path: Path) -> dict[str, str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    if text.startswith("-----BEGIN PGP SIGNED MESSAGE-----"):
        body = text.split("\n\n", 1)[1] if "\n\n" in text else ""
        text = body.split("-----BEGIN PGP SIGNATURE-----", 1)[0]
    stanzas = aptrepo.parse_deb822(text)
    return stanzas[0] if stanzas else {}


def local_dsc(path: Path, where: str) -> Source:
    """A local source package: the .dsc's files beside it, each checked against its Checksums-Sha256."""
    if not path.is_file():
        raise UserError(f"{where}: {path}: no such .dsc file")
    fields = _dsc_fields(path)
    name, version = fields.get("Source", ""), fields.get("Version", "")
    files = aptrepo.checksums(fields.get("Checksums-Sha256", ""))
    if not pkglist.SOURCE_NAME.fullmatch(name) or not version or not files:
        raise UserError(f"{where}: {path} is not a source package description (Source, Version, Checksums-Sha256)")
    identity: dict[str, Any] = {"dsc": digests.sha256_file(path), "files": {}}
    for fname, (sha, size) in sorted(files.items()):
        if "/" in fname or fname.startswith("."):
            raise UserError(f"{path}: names a file {fname!r} outside its directory; refused")
        f = path.parent / fname
        if f.is_symlink() or not f.is_file():
            raise UserError(f"{path}: {fname} is {'a symlink' if f.is_symlink() else 'missing'} beside it",
                            hint="keep the .dsc's files as regular files in its directory")
        got = digests.sha256_file(f)
        if got != sha or f.stat().st_size != size:
            raise UserError(f"{path}: {fname} has sha256 {got}; the .dsc says {sha}", hint="the file changed after "
                            "the .dsc was made: rebuild the source package (dpkg-source -b)")
        identity["files"][fname] = sha
    return Source(name, version, str(path), identity, dsc=path)


_CHANGELOG = re.compile(r"(?P<source>[a-z0-9][a-z0-9+.-]+) \((?P<version>[^ ()]+)\) ")


def local_tree(path: Path, where: str) -> Source:
    """An unpacked source tree (debian/control and debian/changelog in it); its key is its content."""
    changelog = path / "debian" / "changelog"
    if not path.is_dir() or not changelog.is_file() or not (path / "debian" / "control").is_file():
        raise UserError(f"{where}: {path} is not an unpacked source package (no debian/changelog and debian/control)")
    head = _CHANGELOG.match(changelog.read_text(encoding="utf-8", errors="replace").split("\n", 1)[0])
    if head is None:
        raise UserError(f"{changelog}: the first line is not 'source (version) dist; urgency=...'")
    digest = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path)
        if rel.parts[0] in (".git", ".pc") or (p.is_dir() and not p.is_symlink()):
            continue
        digest.update(str(rel).encode() + b"\0")
        digest.update(os.readlink(p).encode() if p.is_symlink() else digests.sha256_file(p).encode())
    return Source(head["source"], head["version"], str(path), {"tree": digest.hexdigest()}, tree=path)


def archive_source(suite: Suite, components: list[str], entry: Entry, cache: Path) -> Source:
    """The suite's source package from the signed Sources index: the version asked, else the newest
    the index lists whose files the mirror serves (a mirror can lag behind its own index: an older
    version is taken with a warning naming what is missing)."""
    rel = suite.release
    versions: list[aptrepo.SourcePackage] = []
    for component in components:
        try:
            versions = [v for v in aptrepo.source_versions(rel, component, entry.name, cache)
                        if entry.version is None or v.version == entry.version]
        except UserError:
            continue
        if versions:
            break
    if not versions:
        what = f"{entry.name} {entry.version}" if entry.version else entry.name
        raise UserError(f"source package {what} not found in {suite.suite} ({'/'.join(components)}) on "
                        f"{suite.mirror()}", hint=f"check the name: the suite is {suite.suite} (apt-cache showsrc "
                        f"{entry.name} on a {suite.suite} system)")
    skipped: list[str] = []
    first: aptrepo.Missing | None = None
    for found in versions:
        try:
            fetch_all(rel, found, cache)
        except aptrepo.Missing as exc:
            first = first or exc
            skipped.append(found.version)
            continue
        if skipped:
            log.get().warning("pkg.source-missing", source=found.name, suite=suite.suite, missing=skipped,
                              using=found.version)
        identity = {"files": {f: sha for f, (sha, _) in sorted(found.files.items())}}
        return Source(found.name, found.version, f"{suite.suite} {found.directory}", identity, archive=found)
    assert first is not None
    raise first  # the newest version's missing file: none is served whole


def fetch_all(rel: aptrepo.Release, found: aptrepo.SourcePackage, cache: Path) -> None:
    """Every file of a source package fetched and checked now, before any VM starts."""
    aptrepo.fetch_dsc(rel, found, cache)
    for fname, (sha, size) in sorted(found.files.items()):
        if "/" in fname or fname.startswith("."):
            raise UserError(f"source package {found.name}: the index names a file {fname!r}; refused")
        aptrepo.fetch(f"{rel.mirror.rstrip('/')}/{found.directory}/{fname}", sha, size, cache / "pool",
                      what=f"source {found.name} {found.version}")


def resolve(project: Project, suite: Suite, components: list[str], entry: Entry, from_list: bool) -> Source:
    where = str(list_path(project)) if from_list else "pkg build"
    if entry.kind == "archive":
        return archive_source(suite, components, entry, project.work_dir / "cache" / "archive")
    assert entry.path is not None
    if from_list:  # the project's own file names only what is inside the project
        path = paths.project_input(project.root, entry.path, "package list entry", where,
                                   "file" if entry.kind == "dsc" else "dir")
    else:  # a path given on the command line: what the user pointed at
        path = (Path.cwd() / entry.path).resolve()
    source = local_dsc(path, where) if entry.kind == "dsc" else local_tree(path, where)
    if entry.kind == "dir" and source.name != entry.name:
        log.get().info("pkg.tree-name", path=str(path), source=source.name)
    return source


def series(project: Project, name: str) -> list[quilt.Patch]:
    """Our series for source package ``name`` (none when there is no directory for it)."""
    top = project.path(project.settings.pkg.patches)
    directory = top / name
    if not (directory / "series").is_file():
        return []
    directory = project.input_dir(str(Path(project.settings.pkg.patches) / name), "pkg.patches")
    patches = quilt.read_series(directory)
    quilt.vet(patches)  # no absolute or '..' paths (UserError naming patch and line)
    return patches


def plan(project: Project, suite: Suite, components: list[str], arch: str, root_key: str, wanted: list[Entry],
         from_list: bool, force: bool) -> Plan:
    """Every package resolved and keyed; the built ones set aside (unless ``force``)."""
    settings = project.settings.pkg
    jobs: list[Job] = []
    skipped: list[Job] = []
    with log.stage("pkg.plan", arch=arch, packages=len(wanted)):
        for entry in wanted:
            source = resolve(project, suite, components, entry, from_list)
            patches = series(project, source.name)
            version = source.version + (settings.suffix if patches else "")
            inputs = {"stage": "pkg", "stage_version": STAGE_VERSION, "arch": arch, "source": source.name,
                      "version": version, "files": source.identity, "patches": [p.identity() for p in patches],
                      "root": root_key}
            key = keys.compute(inputs)
            out = pkgs_dir(project) / arch / source.name / _safe_version(version)
            job = Job(entry, arch, source, patches, version, key, out)
            record = state.load(out / RECORD)
            (skipped if record and record.get("key") == key and not force else jobs).append(job)
    return Plan(project, ARCHES[arch], suite, components, root_key, jobs, skipped)


def _safe_version(version: str) -> str:
    """A version as a directory name (an epoch's colon written as %3a: '1:1.2' -> '1%3a1.2')."""
    return version.replace(":", "%3a")


# --- running ----------------------------------------------------------------------------------------------


def default_parallel(project: Project, meminfo: Path = Path("/proc/meminfo")) -> int:
    """VMs at once: pkg.parallel, else as many as the host's CPUs and available memory carry."""
    settings = project.settings.pkg
    if settings.parallel:
        return settings.parallel
    available = 0
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) // 1024
    except OSError:
        available = 0
    by_memory = max(1, (available - HOST_RESERVE_MIB) // (settings.memory + VM_OVERHEAD_MIB)) if available else 1
    return max(1, min(os.cpu_count() or 1, by_memory))


class BuildFailed(CheckFailed):
    """A package did not build: its log's tail and path say why (exit 4 at the end)."""


class Registry:
    """Every background process (QEMU, distccd) the builds started: Ctrl-C stops them all."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: set[runner.Spawned] = set()
        self.ports: set[int] = set()
        self.cancelled = threading.Event()

    def add(self, spawned: runner.Spawned) -> None:
        with self.lock:
            self.running.add(spawned)
        if self.cancelled.is_set():
            spawned.stop()

    def discard(self, spawned: runner.Spawned) -> None:
        with self.lock:
            self.running.discard(spawned)

    def stop_all(self) -> None:
        self.cancelled.set()
        with self.lock:
            running = list(self.running)
        for s in running:
            s.stop()

    def port(self, base: int) -> int:
        """A free localhost port for a build VM's SSH, held until ``free``."""
        with self.lock:
            port = vmt.pick_port(base, self.ports)
            self.ports.add(port)
            return port

    def free(self, port: int) -> None:
        with self.lock:
            self.ports.discard(port)


@dataclass
class Env:
    """What every build of one ``pkg build`` shares."""

    project: Project
    plan: Plan
    image: Path
    proxy: aptproxy.AptProxy
    registry: Registry
    tool_root: Path | None  # --distcc: the suite's distccd and compilers
    distcc_major: str | None


def _guest_script(env: Env, job: Job, use_distcc: bool) -> str:
    """The build in the guest: the suite from the proxy, build dependencies, dpkg-buildpackage -b."""
    plan = env.plan
    settings = env.project.settings.pkg
    jobs = settings.distcc_jobs or 2 * (os.cpu_count() or 1)
    parallel = jobs if use_distcc else settings.cpus
    lines = ["set -eu", "export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8",
             "say() { echo \"ISOBUILD-$*\"; }",
             "rm -f /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources",
             f"echo 'deb http://{relay.GUEST_HOST}/ {plan.suite.suite} {' '.join(plan.components)}' "
             "> /etc/apt/sources.list",
             "say STEP apt-update", "apt-get -q -o Acquire::Retries=3 update",
             f"cd {GUEST_BUILD} && tar -xf tree.tar && rm tree.tar && cd tree",
             "say STEP build-dep", "apt-get -q -y --no-install-recommends build-dep ./"]
    env_words = f"DEB_BUILD_OPTIONS='parallel={parallel}'"
    if use_distcc:
        lines += ["say STEP distcc", "apt-get -q -y --no-install-recommends install distcc",
                  "major=$(gcc -dumpversion | cut -d. -f1); say GCC $major",
                  f"[ \"$major\" = {env.distcc_major or 0} ] || exit 97  # distcc needs the same GCC release"]
        denv = distcc.guest_env(jobs)
        env_words += " PATH=/usr/lib/distcc:$PATH " + " ".join(f"{k}={v}" for k, v in sorted(denv.items()))
        lines.append(f"mkdir -p {denv['DISTCC_DIR']}")
    lines += ["say STEP build", f"env {env_words} dpkg-buildpackage -b -uc -us",
              f"mkdir -p {GUEST_BUILD}/out",
              f"cd {GUEST_BUILD} && for f in *.deb *.udeb *.ddeb *.buildinfo *.changes; do "
              f"[ -e \"$f\" ] && mv \"$f\" out/; done; true",
              "say DONE"]
    return "\n".join(lines) + "\n"


def prepare_all(plan: Plan, log_path: Path) -> None:
    """Every job's source unpacked and our series applied on the host, before any VM starts (a patch
    that does not apply is bad input: it stops the run here, naming patch, file and hunk)."""
    try:
        for job in plan.jobs:
            job.scratch = atomic.temp_path(job.out.parent, "build")
            if job.scratch.exists():
                shutil.rmtree(job.scratch)
            job.scratch.mkdir(parents=True)
            prepare(plan.project, plan.suite, job, job.scratch, log_path)
    except BaseException:
        discard(plan)
        raise


def discard(plan: Plan) -> None:
    """The scratch trees of jobs that will not run."""
    for job in plan.jobs:
        if job.scratch is not None:
            shutil.rmtree(job.scratch, ignore_errors=True)
            job.scratch = None


def prepare(project: Project, suite: Suite, job: Job, scratch: Path, log_path: Path) -> Path:
    """The source unpacked into ``scratch/tree`` with Debian's patches and ours applied; its tarball."""
    src = job.source
    files = scratch / "source"
    tree = scratch / "tree"
    cache = project.work_dir / "cache" / "archive"
    with log.stage("pkg.prepare", package=job.label):
        if src.archive is not None:
            dsc = aptrepo.fetch_source(suite.release, src.archive, cache, files)
        elif src.dsc is not None:
            files.mkdir(parents=True)
            for fname in [src.dsc.name, *src.identity["files"]]:
                atomic.copy_file(src.dsc.parent / fname, files / fname)
            dsc = files / src.dsc.name
        else:
            assert src.tree is not None
            shutil.copytree(src.tree, tree, symlinks=True, ignore=shutil.ignore_patterns(".git"))
            dsc = None
        if dsc is not None:
            runner.run(["dpkg-source", "--no-copy", "-x", dsc.name, str(tree)], cwd=files, log_path=log_path)
        if job.patches:
            apply_ours(job, tree, scratch / "patches", log_path)
        runner.run(["tar", "--numeric-owner", "-C", str(scratch), "-cf", str(scratch / "tree.tar"), "tree"],
                   log_path=log_path)
    return scratch / "tree.tar"


def apply_ours(job: Job, tree: Path, patch_copy: Path, log_path: Path) -> None:
    """Our series over the unpacked source at fuzz 0 (in a quilt state of its own, so a 3.0 (quilt)
    package's own .pc stays Debian's), then a changelog entry giving the packages our version."""
    debian_pc, ours_pc = tree / ".pc", tree / ".pc.isobuild"
    parked = tree / ".pc.debian-parked"
    if debian_pc.exists():
        debian_pc.rename(parked)
    try:
        quilt.stage_copy(job.patches, patch_copy)
        quilt.push(tree, patch_copy, log_path, rollback=False,
                   onto=f"{job.source.name} {job.source.version}")
    finally:
        if debian_pc.exists():
            debian_pc.rename(ours_pc)
        if parked.exists():
            parked.rename(debian_pc)
    glibc.changelog_entry(tree / "debian" / "changelog", job.version, job.patches,
                          heading=f"our series (pkg.patches/{job.source.name}) applied")


def _ssh_to(env: Env, m: vmt.Machine, record: vmt.Record) -> tuple[Path, Path, int]:
    return ssh.private_key(key_dir(env.project)), m.path(vmt.KNOWN_HOSTS), record.port


def boot(env: Env, job: Job, scratch: Path, forwards: tuple[str, ...], log_path: Path,
         held: list[int]) -> tuple[vmt.Machine, vmt.Record, runner.Spawned]:
    """A VM over a fresh overlay of the image, QEMU our child (it dies with isobuild); returns once
    SSH answers."""
    project, arch = env.project, env.plan.arch
    settings = project.settings
    m = vmt.Machine(scratch / "vm")
    m.directory.mkdir(parents=True)
    fw = vmt.firmware_for(arch, settings.vm.firmware)
    record = vmt.Record(f"pkg-{job.source.name}", arch.name, "debian", str(env.image), env.plan.root_key, 0, fw,
                        False, settings.pkg.cpus, settings.pkg.memory, size_bytes(settings.pkg.disk))
    record.tcg_cache, record.network = settings.vm.tcg_cache, "restricted"
    runner.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", env.image, m.path(vmt.OVERLAY),
                str(record.disk)], log_path=log_path)
    template = bootmedia.uefi_vars(arch) if fw == "uefi" else None
    if template is not None:
        atomic.copy_file(template, m.path(vmt.EFI_VARS))
    accel = qemu.accelerator(arch)
    for _ in range(8):
        record.port = env.registry.port(settings.vm.base_port)
        held.append(record.port)  # freed by the caller when the build ends (a port QEMU could not bind too)
        qemu_log = scratch / "qemu.log"
        spawned = runner.spawn(vmt.argv(arch, accel, m, record, daemonize=False, forwards=forwards),
                               log_path=qemu_log, cwd=m.directory)
        env.registry.add(spawned)
        time.sleep(1.0)
        if spawned.alive or "host forwarding rule" not in qemu_log.read_text(errors="replace"):
            break
        env.registry.discard(spawned)  # another process took the port between the check and QEMU's bind
    try:
        wait_for_ssh(env, job, m, record, spawned, scratch, log_path)
    except BaseException:  # an SSH that never answered, Ctrl-C: this QEMU goes now
        spawned.stop()
        env.registry.discard(spawned)
        raise
    return m, record, spawned


class BootCrashed(InfraError):
    """The build VM's guest died while it booted (a kernel panic, PID 1 killed by a signal)."""


def wait_for_ssh(env: Env, job: Job, m: vmt.Machine, record: vmt.Record, spawned: runner.Spawned, scratch: Path,
                 log_path: Path) -> None:
    limit = env.project.settings.vm.ssh_timeout * env.plan.arch.tcg_slowdown
    key, known, port = _ssh_to(env, m, record)

    def answers() -> bool:
        return runner.run(ssh.ssh_argv(key, known, port, ["true"]), log_path=log_path, check=False, capture=True,
                          timeout=60).returncode == 0

    with log.stage("pkg.wait-ssh", package=job.label, port=record.port):
        booted = vmt.wait_for_ssh(m, answers, lambda: spawned.alive, limit, env.registry.cancelled.is_set)
    console = [*vmt.console_tail(m, 10), f"console: {m.path(vmt.CONSOLE)}"]
    if booted.outcome == "crashed":
        raise BootCrashed(f"{job.label}: the build VM crashed while it booted: {booted.line}", details=console)
    if booted.outcome == "exited":
        raise InfraError(f"{job.label}: QEMU exited while the build VM booted",
                         details=[*_tail(scratch / "qemu.log", 5), *console])
    if booted.outcome == "timeout":
        raise InfraError(f"{job.label}: the build VM's SSH did not answer within {limit:.0f} s", details=console)
    skew = ssh.sync_clock(key, known, port, log_path)
    if skew is not None and abs(skew) > ssh.CLOCK_SLACK:
        log.get().warning("pkg.clock-set", package=job.label, skew_seconds=skew)


# apt refusing a build dependency pinned to the distribution's glibc, where the image carries ours
_PINNED_TO_DEBIANS_GLIBC = re.compile(r"^ ?(?P<dep>\S+) : Depends: (?P<libc>libc6(?:-dev)?) "
                                      r"\(= (?P<theirs>[^)]+)\) but (?P<ours>\S+) is to be installed", re.M)


def diagnose(build_log: Path) -> str | None:
    """A known cause of a failed build, said plainly (None when the log shows none)."""
    try:
        text = build_log.read_text(errors="replace")
    except OSError:
        return None
    m = _PINNED_TO_DEBIANS_GLIBC.search(text)
    if m and m["ours"] != m["theirs"]:
        return (f"build dependency {m['dep']} needs Debian's {m['libc']} {m['theirs']}, the image has ours "
                f"({m['ours']}); our glibc build makes no such package (glibc.profiles: nobiarch), so this package "
                "cannot build in this image")
    return None


def _tail(path: Path, n: int) -> list[str]:
    try:
        return [line for line in path.read_text(errors="replace").splitlines() if line.strip()][-n:]
    except OSError:
        return []


def build_one(env: Env, job: Job, use_distcc: bool, log_path: Path) -> Outcome:
    """One package in one VM; the VM and the scratch tree are gone when it returns."""
    project, arch = env.project, env.plan.arch
    start = time.monotonic()
    outcome = Outcome(job.source.name, arch.name, job.version, "failed", log=str(log_path), key=job.key)
    assert job.scratch is not None, "prepare_all first"
    scratch = job.scratch
    spawned: list[runner.Spawned] = []
    ports: list[int] = []
    counts_log = scratch / "distccd.log"
    try:
        tarball = scratch / "tree.tar"
        forwards = [relay.guestfwd(80, env.proxy.port)]
        if use_distcc:
            assert env.tool_root is not None
            server, dport = distcc.serve(env.tool_root, project.settings.pkg.distcc_jobs or 2 * (os.cpu_count() or 1),
                                         counts_log)
            env.registry.add(server)
            spawned.append(server)
            forwards.append(relay.guestfwd(distcc.GUEST_PORT, dport))
        if env.registry.cancelled.is_set():
            raise KeyboardInterrupt
        try:
            m, record, qemu_proc = boot(env, job, scratch, tuple(forwards), log_path, ports)
        except BootCrashed as exc:  # once more on a fresh overlay: an emulated boot that crashed is not the package's
            log.get().warning("pkg.boot-crashed", package=job.label, crash=exc.message, retry=True)
            kept = scratch / "vm.crashed"
            shutil.rmtree(kept, ignore_errors=True)
            (scratch / "vm").rename(kept)
            m, record, qemu_proc = boot(env, job, scratch, tuple(forwards), log_path, ports)
            outcome.details.append(f"first boot crashed: {exc.message}")
        spawned.append(qemu_proc)
        key, known, port = _ssh_to(env, m, record)
        runner.run(ssh.ssh_argv(key, known, port, ["mkdir", "-p", GUEST_BUILD]), log_path=log_path)
        runner.run(ssh.scp_argv(key, known, port, str(tarball), ssh.remote(f"{GUEST_BUILD}/tree.tar")),
                   log_path=log_path)
        build_log = scratch / "build.log"
        gcc: list[str] = []

        def watch(line: str) -> None:
            if line.startswith("ISOBUILD-GCC "):
                gcc.append(line.split()[1])
            if line.startswith("ISOBUILD-STEP "):
                log.get().info("pkg.step", package=job.label, step=line.split()[1])

        limit = project.settings.pkg.timeout * arch.tcg_slowdown
        with log.stage("pkg.build", package=job.label, version=job.version, distcc=use_distcc):
            try:
                result = runner.run(ssh.ssh_argv(key, known, port, ["sh", "-c", _guest_script(env, job, use_distcc)]),
                                    log_path=build_log, check=False, timeout=limit, on_line=watch)
            except InfraError as exc:
                if exc.message.startswith("disk full"):
                    raise BuildFailed(f"{job.label}: the build VM's disk is full "
                                      f"(pkg.disk {project.settings.pkg.disk})",
                                      hint="raise pkg.disk in isobuild.yaml (the root grows into it at boot)",
                                      details=[*_tail(build_log, 8), f"log: {build_log}"]) from None
                raise
        if use_distcc and gcc and gcc[0] != env.distcc_major:
            raise UserError(f"{job.label}: the guest's gcc is {gcc[0]}, the distcc tool root's {env.distcc_major}; "
                            "nothing was built", hint="distcc needs the same GCC major on both sides (the tool root "
                            "comes from the image's suite: rebuild the image if the suite changed)")
        if result.timed_out or result.returncode != 0:
            why = f"timed out after {limit:.0f} s" if result.timed_out else f"exit {result.returncode}"
            cause = diagnose(build_log)
            raise BuildFailed(f"{job.label}: the build failed ({why})" + (f": {cause}" if cause else ""),
                              details=[*_tail(build_log, 15), f"log: {build_log}"])
        stage_out = scratch / "out"
        runner.run(ssh.scp_argv(key, known, port, ssh.remote(f"{GUEST_BUILD}/out"), str(stage_out)),
                   log_path=log_path)
        debs = sorted(p.name for p in stage_out.glob("*.deb"))
        if not debs:
            raise BuildFailed(f"{job.label}: the build made no .deb", details=[f"log: {build_log}"])
        stem = f"{job.source.name}_{job.version}_{arch.deb_arch}"
        shutil.copyfile(build_log, stage_out / f"{stem}.build")
        if use_distcc:  # the proof the compiles ran on the host: distccd's job summaries
            shutil.copyfile(counts_log, stage_out / f"{stem}.distccd.log")
        outcome.status, outcome.debs = "built", debs
        if use_distcc:
            c = distcc.counts(counts_log)
            outcome.distcc = {"host_compiles": c.ok, "host_failures": c.failed}
        outcome.seconds = round(time.monotonic() - start, 1)
        outcome.out = str(job.out)
        record_ = {**asdict(outcome), "source": job.source.origin, "distro_version": job.source.version,
                   "patches": [p.name for p in job.patches], "built": state.now(),
                   "sha256": {p.name: digests.sha256_file(p) for p in sorted(stage_out.iterdir()) if p.is_file()}}
        atomic.write_json(stage_out / RECORD, record_)
        publish(stage_out, job.out)
        return outcome
    except KeyboardInterrupt:
        outcome.status, outcome.error = "interrupted", "interrupted"
        return outcome
    except runner.CommandFailed as exc:
        outcome.error, outcome.details = f"{job.label}: {exc.message}", exc.details
        return outcome
    except IsobuildError as exc:
        outcome.error, outcome.details = exc.message, list(getattr(exc, "details", None) or [])
        return outcome
    finally:
        for s in spawned:
            s.stop()
            env.registry.discard(s)
        for port in ports:
            env.registry.free(port)
        if outcome.status != "built":
            keep = project.logs_dir / f"pkg-{arch.name}-{job.source.name}.build.log"
            if (scratch / "build.log").exists():
                atomic.copy_file(scratch / "build.log", keep)
                outcome.log = str(keep)
                outcome.details = [d.replace(str(scratch / "build.log"), str(keep)) for d in outcome.details]
        outcome.seconds = round(time.monotonic() - start, 1)
        atomic.write_json(job.out.parent / LAST, asdict(outcome))
        shutil.rmtree(scratch, ignore_errors=True)
        job.scratch = None


def publish(staged: Path, final: Path) -> None:
    """``staged`` renamed to ``final``; a previous build there goes only once the new one is in place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    old = atomic.temp_path(final, "old") if final.exists() else None
    if old is not None:
        os.replace(final, old)
    os.replace(staged, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def run(env: Env, parallel: int, use_distcc: bool, logs: Callable[[Job], Path],
        report: Callable[[Outcome], None]) -> list[Outcome]:
    """Every job of the plan, ``parallel`` at once; each outcome reported as it comes."""
    outcomes: list[Outcome] = []
    pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="pkg")
    futures: dict[Future[Outcome], Job] = {}
    try:
        for job in env.plan.jobs:
            futures[pool.submit(build_one, env, job, use_distcc, logs(job))] = job
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            for f in done:
                outcome = f.result()
                outcomes.append(outcome)
                report(outcome)
    except BaseException:
        env.registry.stop_all()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return outcomes


def skipped(plan: Plan) -> list[Outcome]:
    out = []
    for job in plan.skipped:
        record = state.load(job.out / RECORD) or {}
        out.append(Outcome(job.source.name, job.arch, job.version, "skipped", out=str(job.out),
                           log=str(record.get("log", "")), debs=list(record.get("debs", [])), key=job.key))
    return out


# --- reporting ---------------------------------------------------------------------------------------------


def table(outcomes: list[Outcome]) -> str:
    head = f"{'PACKAGE':<24} {'ARCH':<8} {'VERSION':<28} {'STATUS':<12} {'TIME':>8}  DETAIL"
    lines = [head]
    for o in sorted(outcomes, key=lambda o: (o.arch, o.name)):
        if o.status in ("built", "skipped"):
            detail = f"{len(o.debs)} .deb in {o.out}"
            if o.distcc is not None:
                detail += f"; distcc: {o.distcc['host_compiles']} compiles on the host"
        else:
            detail = f"{o.error} (log: {o.log})"
        lines.append(f"{o.name:<24} {o.arch:<8} {o.version:<28} {o.status:<12} {o.seconds:>7.1f}s  {detail}")
    return "\n".join(lines)


def junit(outcomes: list[Outcome]) -> str:
    suite = ET.Element("testsuite", name="isobuild.pkg", tests=str(len(outcomes)),
                       failures=str(sum(o.status == "failed" for o in outcomes)),
                       skipped=str(sum(o.status == "skipped" for o in outcomes)),
                       time=f"{sum(o.seconds for o in outcomes):.1f}")
    for o in outcomes:
        case = ET.SubElement(suite, "testcase", classname=f"pkg.{o.arch}", name=o.name, time=f"{o.seconds:.1f}")
        if o.status == "failed" or o.status == "interrupted":
            node = ET.SubElement(case, "failure", message=o.error[:500])
            node.text = "\n".join(o.details)
        elif o.status == "skipped":
            ET.SubElement(case, "skipped", message="built already with this key")
        ET.SubElement(case, "system-out").text = f"version {o.version}; log {o.log}; {', '.join(o.debs)}"
    return ET.tostring(suite, encoding="unicode") + "\n"


def write_results(project: Project, arch: str, outcomes: list[Outcome]) -> tuple[Path, Path]:
    json_path = project.logs_dir / f"pkg-{arch}.json"
    xml_path = project.logs_dir / f"pkg-{arch}.xml"
    atomic.write_json(json_path, [asdict(o) for o in outcomes])
    atomic.write_text(xml_path, junit(outcomes))
    return json_path, xml_path


def status_rows(project: Project) -> list[dict[str, Any]]:
    """Per listed package and arch with a build on record: the last outcome and the built versions."""
    listed = {e.name: e for e in pkglist.read(list_path(project))}
    rows = []
    top = pkgs_dir(project)
    names = sorted(set(listed) | {p.name for p in top.glob("*/*") if p.is_dir() and not p.name.startswith(".")})
    arches = sorted({p.name for p in top.glob("*") if p.is_dir() and not p.name.startswith(".")}) or \
        [project.settings.arch]
    for name in names:
        for arch in arches:
            d = top / arch / name
            last = state.load(d / LAST) or {}
            built = sorted(p.name.replace("%3a", ":") for p in d.glob("*") if (p / RECORD).is_file())
            if not last and not built and arch != project.settings.arch:
                continue
            rows.append({"package": name, "arch": arch, "listed": name in listed,
                         "last": last.get("status", "never built"), "version": last.get("version", ""),
                         "built": built, "log": last.get("log", ""), "error": last.get("error", "")})
    return rows


def render_status(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no packages listed or built (isobuild pkg add NAME)"
    lines = [f"{'PACKAGE':<24} {'ARCH':<8} {'LISTED':<7} {'LAST BUILD':<12} {'VERSION':<28} BUILT VERSIONS"]
    for r in rows:
        lines.append(f"{r['package']:<24} {r['arch']:<8} {'yes' if r['listed'] else 'no':<7} {r['last']:<12} "
                     f"{r['version']:<28} {', '.join(r['built']) or '-'}")
        if r["last"] == "failed":
            lines.append(f"    {r['error']} (log: {r['log']})")
    return "\n".join(lines)
